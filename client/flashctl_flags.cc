#include "client/flashctl_flags.h"

#include <cmath>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"

namespace flashd::client {

std::string ParsedFlags::Value(const std::string& name) const {
  auto it = values.find(name);
  return it == values.end() || it->second.empty() ? "" : it->second.back();
}

std::vector<std::string> ParsedFlags::Values(const std::string& name) const {
  auto it = values.find(name);
  return it == values.end() ? std::vector<std::string>() : it->second;
}

absl::StatusOr<int64_t> ParsedFlags::Int(const std::string& name, int64_t min,
                                         int64_t max) const {
  const std::string v = Value(name);
  int64_t n = 0;
  if (!absl::SimpleAtoi(v, &n)) {
    return absl::InvalidArgumentError(
        absl::StrCat("--", name, ": expected an integer, got \"", v, "\""));
  }
  if (n < min || n > max) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--", name, ": ", n, " is outside [", min, ", ", max, "]"));
  }
  return n;
}

absl::StatusOr<double> ParsedFlags::Double(const std::string& name) const {
  const std::string v = Value(name);
  double d = 0;
  if (!absl::SimpleAtod(v, &d) || !std::isfinite(d)) {
    return absl::InvalidArgumentError(
        absl::StrCat("--", name, ": expected a number, got \"", v, "\""));
  }
  return d;
}

absl::StatusOr<ParsedFlags> ParseFlags(const std::vector<std::string>& args,
                                       size_t start, const FlagSpec& spec,
                                       bool stop_at_positional) {
  ParsedFlags out;
  out.consumed = args.size();
  bool flags_done = false;
  for (size_t i = start; i < args.size(); ++i) {
    const std::string& a = args[i];
    if (flags_done || !absl::StartsWith(a, "--") || a.size() == 2) {
      if (!flags_done && a == "--") {
        flags_done = true;
        continue;
      }
      if (stop_at_positional) {
        out.consumed = i;
        out.positional.push_back(a);
        return out;
      }
      out.positional.push_back(a);
      continue;
    }
    std::string name = a.substr(2);
    std::string value;
    bool has_inline = false;
    if (size_t eq = name.find('='); eq != std::string::npos) {
      value = name.substr(eq + 1);
      name = name.substr(0, eq);
      has_inline = true;
    }
    auto it = spec.find(name);
    if (it == spec.end()) {
      return absl::InvalidArgumentError(absl::StrCat("unknown flag --", name));
    }
    if (!it->second) {
      if (has_inline) {
        return absl::InvalidArgumentError(
            absl::StrCat("--", name, " takes no value"));
      }
      out.values[name].push_back("true");
      continue;
    }
    if (!has_inline) {
      if (i + 1 >= args.size()) {
        return absl::InvalidArgumentError(
            absl::StrCat("--", name, " needs a value"));
      }
      value = args[++i];
    }
    out.values[name].push_back(value);
  }
  return out;
}

}  // namespace flashd::client
