// Minimal "--flag value" parser for flashd's subcommands: every flag is
// declared with its help text and default, unknown flags are errors.
#ifndef FLASHD_DAEMON_CLI_ARGS_H_
#define FLASHD_DAEMON_CLI_ARGS_H_

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace flashd::cli {

class Args {
 public:
  // Declares a flag taking a value ("" default = unset unless given).
  Args& Flag(const std::string& name, const std::string& default_value,
             const std::string& help);
  // Declares a boolean switch (present = true).
  Args& Switch(const std::string& name, const std::string& help);
  // Accepts one positional argument (e.g. the model path of `convert`).
  Args& Positional(const std::string& name, const std::string& help);

  // Parses argv[first..argc). INVALID_ARGUMENT names the bad flag.
  absl::Status Parse(int argc, char** argv, int first);

  bool Has(const std::string& name) const;
  std::string Get(const std::string& name) const;
  absl::StatusOr<int64_t> GetInt(const std::string& name, int64_t min,
                                 int64_t max) const;
  absl::StatusOr<double> GetDouble(const std::string& name) const;
  bool GetSwitch(const std::string& name) const;
  // "Usage" lines for the declared flags.
  std::string Help() const;

 private:
  struct Spec {
    std::string default_value;
    std::string help;
    bool is_switch = false;
  };
  std::map<std::string, Spec> specs_;
  std::vector<std::string> order_;
  std::map<std::string, std::string> values_;
  std::string positional_name_;
  std::string positional_help_;
};

}  // namespace flashd::cli

#endif  // FLASHD_DAEMON_CLI_ARGS_H_
