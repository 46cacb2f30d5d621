// placeholder: being written
#include "absl/status/status.h"
#include "daemon/cli/commands.h"
namespace flashd::cli {
int CalibrateCommand(int, char**) {
  return Fail("calibrate", absl::UnimplementedError("not written yet"));
}
}  // namespace flashd::cli
