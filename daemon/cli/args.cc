#include "daemon/cli/args.h"

#include <cerrno>
#include <cmath>
#include <cstdlib>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace flashd::cli {

Args& Args::Flag(const std::string& name, const std::string& default_value,
                 const std::string& help) {
  specs_[name] = {default_value, help, false};
  order_.push_back(name);
  return *this;
}

Args& Args::Switch(const std::string& name, const std::string& help) {
  specs_[name] = {"", help, true};
  order_.push_back(name);
  return *this;
}

Args& Args::Positional(const std::string& name, const std::string& help) {
  positional_name_ = name;
  positional_help_ = help;
  return *this;
}

absl::Status Args::Parse(int argc, char** argv, int first) {
  for (int i = first; i < argc; ++i) {
    std::string a = argv[i];
    if (a.rfind("--", 0) != 0) {
      if (!positional_name_.empty() && !values_.count(positional_name_)) {
        values_[positional_name_] = a;
        continue;
      }
      return absl::InvalidArgumentError(
          absl::StrCat("unexpected argument '", a, "'"));
    }
    std::string name = a.substr(2), value;
    const size_t eq = name.find('=');
    bool has_inline = eq != std::string::npos;
    if (has_inline) {
      value = name.substr(eq + 1);
      name = name.substr(0, eq);
    }
    auto it = specs_.find(name);
    if (it == specs_.end()) {
      return absl::InvalidArgumentError(absl::StrCat("unknown flag --", name));
    }
    if (it->second.is_switch) {
      values_[name] = has_inline ? value : "true";
      continue;
    }
    if (!has_inline) {
      if (i + 1 >= argc) {
        return absl::InvalidArgumentError(
            absl::StrCat("flag --", name, " needs a value"));
      }
      value = argv[++i];
    }
    values_[name] = value;
  }
  return absl::OkStatus();
}

bool Args::Has(const std::string& name) const {
  if (values_.count(name)) return true;
  auto it = specs_.find(name);
  return it != specs_.end() && !it->second.default_value.empty();
}

std::string Args::Get(const std::string& name) const {
  if (auto it = values_.find(name); it != values_.end()) return it->second;
  if (auto it = specs_.find(name); it != specs_.end()) {
    return it->second.default_value;
  }
  return "";
}

absl::StatusOr<int64_t> Args::GetInt(const std::string& name, int64_t min,
                                     int64_t max) const {
  int64_t v = 0;
  const std::string s = Get(name);
  if (!absl::SimpleAtoi(s, &v)) {
    return absl::InvalidArgumentError(
        absl::StrCat("--", name, " must be an integer, got '", s, "'"));
  }
  if (v < min || v > max) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--", name, " = ", v, " is out of range [", min, ", ", max, "]"));
  }
  return v;
}

absl::StatusOr<double> Args::GetDouble(const std::string& name) const {
  double v = 0;
  const std::string s = Get(name);
  if (!absl::SimpleAtod(s, &v) || !std::isfinite(v)) {
    return absl::InvalidArgumentError(
        absl::StrCat("--", name, " must be a number, got '", s, "'"));
  }
  return v;
}

bool Args::GetSwitch(const std::string& name) const {
  auto it = values_.find(name);
  return it != values_.end() && it->second != "false" && it->second != "0";
}

std::string Args::Help() const {
  std::string out;
  if (!positional_name_.empty()) {
    absl::StrAppendFormat(&out, "  %-22s %s\n", positional_name_,
                          positional_help_);
  }
  for (const std::string& name : order_) {
    const Spec& s = specs_.at(name);
    std::string flag = "--" + name + (s.is_switch ? "" : " V");
    std::string def =
        s.default_value.empty() ? "" : " (default " + s.default_value + ")";
    absl::StrAppendFormat(&out, "  %-22s %s%s\n", flag, s.help, def);
  }
  return out;
}

}  // namespace flashd::cli
