#include "common/error.h"

#include <cstring>

namespace cepe {

namespace {
// Source paths are reported relative to the project root, not the build machine: from the last
// top-level folder of ours in the path (the last, as the checkout itself may sit under a folder
// called server/, and headers are reached through build/layers/<layer>/).
const char* project_relative(const char* file) {
  const char* best = nullptr;
  for (const char* root : {"/common/", "/engine/", "/retriever/", "/index/", "/qa/", "/config/",
                           "/server/", "/cli/", "/bench/", "/tests/"}) {
    for (const char* p = std::strstr(file, root); p; p = std::strstr(p + 1, root))
      if (!best || p > best) best = p;
  }
  return best ? best + 1 : file;
}
}  // namespace

Error::Error(const std::string& message, const char* file, int line)
    : std::runtime_error(message + " [" + project_relative(file) + ":" + std::to_string(line) +
                         "]"),
      message_(message) {}

namespace detail {
void throw_error(const char* file, int line, const std::string& message) {
  throw Error(message, file, line);
}
}  // namespace detail

}  // namespace cepe
