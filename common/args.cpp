#include "common/args.h"

#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <optional>
#include <sstream>

#include "common/error.h"

namespace cepe {

Args& Args::option(const std::string& name, const std::string& help, std::string default_value) {
  specs_[name] = Spec{help, std::move(default_value), true, false};
  order_.push_back(name);
  return *this;
}

Args& Args::multi(const std::string& name, const std::string& help) {
  specs_[name] = Spec{help, "", true, true};
  order_.push_back(name);
  return *this;
}

Args& Args::flag(const std::string& name, const std::string& help) {
  specs_[name] = Spec{help, "", false, false};
  order_.push_back(name);
  return *this;
}

Args& Args::positional(const std::string& help) {
  positional_help_ = help;
  return *this;
}

void Args::parse(const std::vector<std::string>& argv) {
  for (size_t i = 0; i < argv.size(); ++i) {
    const std::string& a = argv[i];
    if (a == "--help" || a == "-h") {
      help_ = true;
      continue;
    }
    if (a.size() > 2 && a.rfind("--", 0) == 0) {
      std::string name = a.substr(2);
      std::optional<std::string> value;
      if (auto eq = name.find('='); eq != std::string::npos) {
        value = name.substr(eq + 1);
        name = name.substr(0, eq);
      }
      auto it = specs_.find(name);
      CEPE_CHECK(it != specs_.end(), "unknown flag --" << name << " (see --help)");
      if (!it->second.takes_value) {
        CEPE_CHECK(!value, "flag --" << name << " takes no value");
        values_[name].push_back("1");
        continue;
      }
      if (!value) {
        CEPE_CHECK(i + 1 < argv.size(), "flag --" << name << " needs a value");
        value = argv[++i];
      }
      auto& slot = values_[name];
      CEPE_CHECK(it->second.repeated || slot.empty(), "flag --" << name << " given twice");
      slot.push_back(*value);
    } else if (a == "-k" && specs_.count("k")) {  // `-k 10` is the customary short form
      CEPE_CHECK(i + 1 < argv.size(), "flag -k needs a value");
      values_["k"].push_back(argv[++i]);
    } else {
      positionals_.push_back(a);
    }
  }
}

bool Args::has(const std::string& name) const {
  if (values_.count(name)) return true;
  auto it = specs_.find(name);
  return it != specs_.end() && !it->second.default_value.empty();
}

std::string Args::get(const std::string& name) const {
  if (auto it = values_.find(name); it != values_.end()) return it->second.back();
  auto spec = specs_.find(name);
  CEPE_CHECK(spec != specs_.end(), "internal: undeclared flag --" << name);
  CEPE_CHECK(!spec->second.default_value.empty(), "missing required flag --" << name);
  return spec->second.default_value;
}

std::vector<std::string> Args::get_all(const std::string& name) const {
  auto it = values_.find(name);
  return it == values_.end() ? std::vector<std::string>{} : it->second;
}

bool Args::is_set(const std::string& name) const {
  return values_.count(name) != 0;
}

long long Args::get_int(const std::string& name, long long min, long long max) const {
  const std::string s = get(name);
  errno = 0;
  char* end = nullptr;
  long long v = std::strtoll(s.c_str(), &end, 10);
  CEPE_CHECK(!s.empty() && errno == 0 && end && *end == '\0',
             "flag --" << name << ": '" << s << "' is not an integer");
  CEPE_CHECK(v >= min && v <= max,
             "flag --" << name << ": " << v << " is out of range [" << min << ", " << max << "]");
  return v;
}

double Args::get_double(const std::string& name, double min, double max) const {
  const std::string s = get(name);
  errno = 0;
  char* end = nullptr;
  double v = std::strtod(s.c_str(), &end);
  CEPE_CHECK(!s.empty() && errno == 0 && end && *end == '\0' && std::isfinite(v),
             "flag --" << name << ": '" << s << "' is not a number");
  CEPE_CHECK(v >= min && v <= max,
             "flag --" << name << ": " << v << " is out of range [" << min << ", " << max << "]");
  return v;
}

std::string Args::usage(const std::string& usage_line) const {
  std::ostringstream os;
  os << "usage: " << usage_line << "\n";
  if (!positional_help_.empty()) os << "  " << positional_help_ << "\n";
  for (const auto& name : order_) {
    const Spec& s = specs_.at(name);
    os << "  --" << name << (s.takes_value ? " VALUE" : "") << "\n      " << s.help;
    if (!s.default_value.empty()) os << " (default: " << s.default_value << ")";
    if (s.repeated) os << " (repeatable)";
    os << "\n";
  }
  return os.str();
}

}  // namespace cepe
