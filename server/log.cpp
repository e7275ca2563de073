#include "server/log.h"

#include <chrono>
#include <cstdio>
#include <ctime>
#include <iostream>

#include "server/request.h"

namespace cepe::server {

Logger::Logger(LogSink sink) : sink_(std::move(sink)) {}

void Logger::write(const std::string& line) {
  std::lock_guard<std::mutex> lock(mu_);
  if (sink_) {
    sink_(line);
  } else {
    std::fwrite(line.data(), 1, line.size(), stderr);
    std::fputc('\n', stderr);
    std::fflush(stderr);
  }
}

LogLine::LogLine(const char* level, const char* event) {
  const auto now = std::chrono::system_clock::now();
  const std::time_t t = std::chrono::system_clock::to_time_t(now);
  const auto ms =
      std::chrono::duration_cast<std::chrono::milliseconds>(now.time_since_epoch()).count() % 1000;
  std::tm tm{};
  gmtime_r(&t, &tm);
  char ts[80];
  std::snprintf(ts, sizeof ts, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900,
                tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, static_cast<int>(ms));
  out_ = "{\"ts\":\"";
  out_ += ts;
  out_ += "\",\"level\":\"";
  out_ += level;
  out_ += "\",\"event\":\"";
  out_ += event;
  out_ += '"';
}

LogLine& LogLine::str(const char* key, std::string_view value) {
  out_ += ",\"";
  out_ += key;
  out_ += "\":";
  out_ += json_quote(sanitize_utf8(value));
  return *this;
}

LogLine& LogLine::num(const char* key, int64_t value) {
  out_ += ",\"";
  out_ += key;
  out_ += "\":";
  out_ += std::to_string(value);
  return *this;
}

LogLine& LogLine::ms(const char* key, double value) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.2f", value);
  out_ += ",\"";
  out_ += key;
  out_ += "\":";
  out_ += buf;
  return *this;
}

LogLine& LogLine::flag(const char* key, bool value) {
  out_ += ",\"";
  out_ += key;
  out_ += "\":";
  out_ += value ? "true" : "false";
  return *this;
}

void LogLine::write(Logger* logger) {
  if (!logger) return;
  out_ += '}';
  logger->write(out_);
}

}  // namespace cepe::server
