#include "common/error.h"

#include <cstring>

namespace cepe {

namespace {
// Source paths are reported relative to the project root, not the build machine.
const char* project_relative(const char* file) {
  for (const char* root : {"/engine/", "/retriever/", "/index/", "/server/", "/config/", "/cli/"}) {
    if (const char* p = std::strstr(file, root)) return p + 1;
  }
  return file;
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
