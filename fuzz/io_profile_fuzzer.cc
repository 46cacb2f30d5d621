// Feeds arbitrary bytes to the I/O profile JSON reader (IoProfileFromJson,
// the --io-profile file). Checks that a profile it accepts is usable by the
// planner's cost model (EstimateSeconds over sizes and depths inside and
// outside its table gives a non-negative time, never NaN) and that it survives
// a round trip through IoProfileToJson.
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <string>

#include "common/base/check.h"
#include "common/io/io_calibration.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace flashd::io;
  const std::string json(reinterpret_cast<const char*>(data), size);
  absl::StatusOr<IoProfile> p = IoProfileFromJson(json);
  if (!p.ok()) return 0;
  for (uint64_t bytes : {uint64_t{0}, uint64_t{1}, uint64_t{1} << 20, uint64_t{1} << 40}) {
    for (size_t read_size : {size_t{1}, size_t{4096}, size_t{1} << 30}) {
      for (int qd : {1, 3, 64, 4096}) {
        const double s = p->EstimateSeconds(bytes, read_size, qd);
        FLASHD_CHECK(!std::isnan(s) && s >= 0);
      }
    }
  }
  absl::StatusOr<IoProfile> again = IoProfileFromJson(IoProfileToJson(*p));
  FLASHD_CHECK(again.ok());
  FLASHD_CHECK(again->cells.size() == p->cells.size());
  return 0;
}
