// A small flag parser: `--name value`, `--name=value`, repeated flags, boolean switches and
// positional arguments, with usage text; unknown flags and bad values are errors that name the
// flag. Every `cepe` subcommand and every bench/ program parses its flags with it.
#pragma once

#include <map>
#include <string>
#include <vector>

namespace cepe {

/// Flags of one command: `--name value`, `--name=value`, repeated flags, boolean switches,
/// positional arguments. Unknown flags and missing values are errors that name the flag.
class Args {
 public:
  /// Declares a flag that takes a value; `help` is printed by usage().
  Args& option(const std::string& name, const std::string& help, std::string default_value = "");
  /// Declares a flag that may be given several times.
  Args& multi(const std::string& name, const std::string& help);
  /// Declares a boolean switch.
  Args& flag(const std::string& name, const std::string& help);
  /// Declares the positional arguments' description (for usage()).
  Args& positional(const std::string& help);

  /// Parses argv (without the subcommand name); throws cepe::Error on bad flags.
  void parse(const std::vector<std::string>& argv);

  /// True when the flag was given (or has a non-empty default).
  bool has(const std::string& name) const;
  /// Value of a flag; throws naming the flag when required and absent.
  std::string get(const std::string& name) const;
  /// All values of a repeated flag.
  std::vector<std::string> get_all(const std::string& name) const;
  /// True when the switch was given.
  bool is_set(const std::string& name) const;
  /// Integer value, range-checked; the error names the flag.
  long long get_int(const std::string& name, long long min, long long max) const;
  /// Float value, range-checked; the error names the flag.
  double get_double(const std::string& name, double min, double max) const;
  /// Positional arguments in order.
  const std::vector<std::string>& positionals() const { return positionals_; }
  /// Usage text for `usage_line`.
  std::string usage(const std::string& usage_line) const;
  /// True when --help was given.
  bool help_requested() const { return help_; }

 private:
  struct Spec {
    std::string help;
    std::string default_value;
    bool takes_value = true;
    bool repeated = false;
  };
  std::map<std::string, Spec> specs_;
  std::vector<std::string> order_;
  std::map<std::string, std::vector<std::string>> values_;
  std::vector<std::string> positionals_;
  std::string positional_help_;
  bool help_ = false;
};

}  // namespace cepe
