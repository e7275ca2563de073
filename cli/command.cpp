#include "cli/command.h"

#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <sstream>

#include "common/error.h"

namespace cepe::cli {

std::map<std::string, Command>& registry() {
  static std::map<std::string, Command> commands;
  return commands;
}

Registrar::Registrar(const std::string& name, const std::string& summary,
                     std::function<int(const std::vector<std::string>&)> run) {
  registry()[name] = Command{summary, std::move(run)};
}

}  // namespace cepe::cli
