#include "tests/test_util.h"

#include <sys/wait.h>
#include <unistd.h>
#include <array>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <vector>

namespace cepe::test {

std::filesystem::path source_dir() {
  const char* s = std::getenv("CEPE_SOURCE_DIR");
  return s ? std::filesystem::path(s) : std::filesystem::current_path();
}

std::optional<std::filesystem::path> shared_dir() {
  const char* s = std::getenv("CEPE_SHARED_DIR");
  std::filesystem::path p = s ? std::filesystem::path(s) : source_dir() / ".." / "shared";
  if (!std::filesystem::is_directory(p)) return std::nullopt;
  return std::filesystem::canonical(p);
}

std::filesystem::path cepe_binary() {
  const char* s = std::getenv("CEPE_BINARY");
  return s ? std::filesystem::path(s) : std::filesystem::path("cepe");
}

namespace {
// Directories handed out by temp_dir(), removed when the test binary exits.
struct TempDirs {
  std::vector<std::filesystem::path> dirs;
  ~TempDirs() {
    std::error_code ec;
    for (const auto& d : dirs) std::filesystem::remove_all(d, ec);
  }
};
TempDirs& temp_dirs() {
  static TempDirs t;
  return t;
}
}  // namespace

std::filesystem::path temp_dir(const std::string& tag) {
  std::string tmpl =
      (std::filesystem::temp_directory_path() / ("cepe-" + tag + "-XXXXXX")).string();
  char* p = mkdtemp(tmpl.data());
  if (!p) throw std::runtime_error("mkdtemp failed");
  temp_dirs().dirs.emplace_back(p);
  return std::filesystem::path(p);
}

int run_command(const std::string& command, std::string* output) {
  std::string full = command + " 2>&1";
  FILE* pipe = popen(full.c_str(), "r");
  if (!pipe) return -1;
  std::array<char, 4096> buf;
  std::string out;
  size_t n;
  while ((n = fread(buf.data(), 1, buf.size(), pipe)) > 0) out.append(buf.data(), n);
  int status = pclose(pipe);
  if (output) *output = out;
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

std::string read_file(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

}  // namespace cepe::test
