// Helpers shared by the tests: where the sources, ../shared and the CLI are.
#pragma once

#include <filesystem>
#include <optional>
#include <string>

namespace cepe::test {

/// Project root (CEPE_SOURCE_DIR).
std::filesystem::path source_dir();
/// ../shared beside the project, or nullopt when absent (tests then GTEST_SKIP with a message).
std::optional<std::filesystem::path> shared_dir();
/// Path of the built `cepe` binary (CEPE_BINARY).
std::filesystem::path cepe_binary();
/// A fresh temporary directory, removed at exit.
std::filesystem::path temp_dir(const std::string& tag);
/// Runs a shell command; returns its exit status and fills `output` with stdout+stderr.
int run_command(const std::string& command, std::string* output);
/// Reads a whole file.
std::string read_file(const std::filesystem::path& path);

}  // namespace cepe::test

/// Skips the test when ../shared (or a file under it) is missing.
#define CEPE_REQUIRE_SHARED(rel, var)                                                   \
  auto var##_dir = ::cepe::test::shared_dir();                                          \
  if (!var##_dir || !std::filesystem::exists(*var##_dir / (rel)))                       \
    GTEST_SKIP() << "../shared/" << (rel)                                               \
                 << " not found: skipping (tests that need the shared data run in CI)"; \
  const std::filesystem::path var = *var##_dir / (rel)
