// `cepe`: one CLI for the engine, the index and the server. Each subcommand lives in its own
// cli/cmd_*.cpp file and registers itself.
#include <cstdio>
#include <exception>
#include <iostream>
#include <new>

#include "cli/command.h"
#include "common/error.h"

int main(int argc, char** argv) {
  auto& commands = cepe::cli::registry();
  auto print_help = [&]() {
    std::cout << "cepe — open-domain question answering with CEPE (parallel context encoding)\n\n"
                 "usage: cepe <command> [flags]   (cepe <command> --help for its flags)\n\n";
    for (const auto& [name, cmd] : commands)
      std::printf("  %-13s %s\n", name.c_str(), cmd.summary.c_str());
  };
  if (argc < 2) {
    print_help();
    return 2;
  }
  const std::string name = argv[1];
  if (name == "--help" || name == "-h" || name == "help") {
    print_help();
    return 0;
  }
  if (name == "--version") {
    std::cout << "cepe 0.1.0\n";
    return 0;
  }
  auto it = commands.find(name);
  if (it == commands.end()) {
    std::cerr << "cepe: error: unknown command '" << name << "' (see cepe --help)\n";
    return 2;
  }
  std::vector<std::string> args(argv + 2, argv + argc);
  try {
    return it->second.run(args);
  } catch (const cepe::Error& e) {
    std::cerr << "cepe " << name << ": error: " << e.what() << "\n";
  } catch (const std::bad_alloc&) {
    std::cerr << "cepe " << name << ": error: out of memory\n";
  } catch (const std::exception& e) {
    std::cerr << "cepe " << name << ": error: " << e.what() << "\n";
  }
  return 1;
}
