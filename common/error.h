// Exceptions with context: every user-facing failure says what was wrong and where.
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>

namespace cepe {

/// Error raised for bad input or an unsupported configuration; what() is one line.
class Error : public std::runtime_error {
 public:
  /// Builds the error from a message and the source location that raised it.
  Error(const std::string& message, const char* file, int line);
  /// The message without the source location.
  const std::string& message() const { return message_; }

 private:
  std::string message_;
};

namespace detail {
[[noreturn]] void throw_error(const char* file, int line, const std::string& message);
}  // namespace detail

}  // namespace cepe

/// Throws cepe::Error with a streamed message and the current file and line.
#define CEPE_THROW(msg)                                                    \
  do {                                                                     \
    std::ostringstream cepe_throw_os_;                                     \
    cepe_throw_os_ << msg;                                                 \
    ::cepe::detail::throw_error(__FILE__, __LINE__, cepe_throw_os_.str()); \
  } while (0)

/// Throws cepe::Error with the message unless the condition holds.
#define CEPE_CHECK(cond, msg)     \
  do {                            \
    if (!(cond)) CEPE_THROW(msg); \
  } while (0)
