// placeholder: being written
#include "absl/status/status.h"
#include "daemon/cli/commands.h"
namespace flashd::cli {
int ConvertCommand(int, char**) {
  return Fail("convert", absl::UnimplementedError("not written yet"));
}
}  // namespace flashd::cli
