// Structured logs: one JSON object per line, written whole under a lock so lines from different
// threads never interleave.
#pragma once

#include "common/utf8.h"  // sanitize_utf8, used with the log and JSON writers

#include <cstdint>
#include <functional>
#include <mutex>
#include <string>
#include <string_view>

namespace cepe::server {

/// Where log lines go; the default writes them to stderr.
using LogSink = std::function<void(const std::string& line)>;

/// A thread-safe JSON-lines logger.
class Logger {
 public:
  /// Logs to `sink` (null: stderr).
  explicit Logger(LogSink sink = nullptr);
  /// Writes one finished line (a JSON object without the trailing newline).
  void write(const std::string& line);

 private:
  LogSink sink_;
  std::mutex mu_;
};

/// Builds one log line: `{"ts": ..., "level": ..., "event": ..., fields...}`; write() emits it.
class LogLine {
 public:
  /// Starts a line with the current UTC time, a level ("info", "warn", "error") and an event name.
  LogLine(const char* level, const char* event);
  /// Adds a string field (escaped; invalid UTF-8 is replaced so the line stays valid JSON).
  LogLine& str(const char* key, std::string_view value);
  /// Adds an integer field.
  LogLine& num(const char* key, int64_t value);
  /// Adds a number field, rounded to 0.01.
  LogLine& ms(const char* key, double value);
  /// Adds a boolean field.
  LogLine& flag(const char* key, bool value);
  /// Closes the object and hands it to `logger` (no-op when null).
  void write(Logger* logger);

 private:
  std::string out_;
};

}  // namespace cepe::server
