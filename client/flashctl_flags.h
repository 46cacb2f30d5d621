// The small flag parser of flashctl: "--name value", "--name=value",
// boolean "--name", "--" ending the flags; a flag may repeat (--stop).
#ifndef FLASHD_CLIENT_FLASHCTL_FLAGS_H_
#define FLASHD_CLIENT_FLASHCTL_FLAGS_H_

#include <cstddef>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace flashd::client {

// Flag name (without "--") -> whether it takes a value.
using FlagSpec = std::map<std::string, bool>;

// What ParseFlags found.
struct ParsedFlags {
  std::map<std::string, std::vector<std::string>> values;
  std::vector<std::string> positional;
  // With stop_at_positional: the index in args of positional[0].
  size_t consumed = 0;

  bool Has(const std::string& name) const { return values.count(name) > 0; }
  // The last value given, or "" when absent.
  std::string Value(const std::string& name) const;
  // Every value given, in order.
  std::vector<std::string> Values(const std::string& name) const;
  // The value as an integer in [min, max]; the error names the flag.
  absl::StatusOr<int64_t> Int(const std::string& name, int64_t min,
                              int64_t max) const;
  // The value as a finite number; the error names the flag.
  absl::StatusOr<double> Double(const std::string& name) const;
};

// Parses args[start…]. Unknown flags and missing values are
// INVALID_ARGUMENT naming the flag. With stop_at_positional, parsing stops
// at the first positional argument (a subcommand).
absl::StatusOr<ParsedFlags> ParseFlags(const std::vector<std::string>& args,
                                       size_t start, const FlagSpec& spec,
                                       bool stop_at_positional);

}  // namespace flashd::client

#endif  // FLASHD_CLIENT_FLASHCTL_FLAGS_H_
