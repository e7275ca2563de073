// Subcommand registry; every `cepe` subcommand parses its flags with common/args.h (as bench/ does).
#pragma once

#include <functional>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "common/args.h"

namespace cepe::cli {

/// A subcommand: its one-line summary and its entry point (argv[0] is the subcommand name).
struct Command {
  std::string summary;                                      ///< shown by `cepe --help`
  std::function<int(const std::vector<std::string>&)> run;  ///< returns the exit status
};

/// All registered subcommands by name.
std::map<std::string, Command>& registry();

/// Registers a subcommand at static-initialisation time.
struct Registrar {
  Registrar(const std::string& name, const std::string& summary,
            std::function<int(const std::vector<std::string>&)> run);
};

/// The flag parser (common/args.h).
using cepe::Args;

}  // namespace cepe::cli

#define CEPE_CLI_CONCAT2(a, b) a##b
#define CEPE_CLI_CONCAT(a, b) CEPE_CLI_CONCAT2(a, b)
/// Registers `fn` as the subcommand `name`.
#define CEPE_REGISTER_COMMAND(name, summary, fn) \
  static ::cepe::cli::Registrar CEPE_CLI_CONCAT(cepe_registrar_, __LINE__)(name, summary, fn)
