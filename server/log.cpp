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

std::string sanitize_utf8(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  size_t i = 0;
  while (i < s.size()) {
    const unsigned char c = static_cast<unsigned char>(s[i]);
    size_t len = 0;
    uint32_t cp = 0;
    if (c < 0x80)
      len = 1, cp = c;
    else if ((c & 0xE0) == 0xC0)
      len = 2, cp = c & 0x1F;
    else if ((c & 0xF0) == 0xE0)
      len = 3, cp = c & 0x0F;
    else if ((c & 0xF8) == 0xF0)
      len = 4, cp = c & 0x07;
    bool ok = len > 0 && i + len <= s.size();
    for (size_t k = 1; ok && k < len; ++k) {
      const unsigned char cc = static_cast<unsigned char>(s[i + k]);
      ok = (cc & 0xC0) == 0x80;
      cp = (cp << 6) | (cc & 0x3F);
    }
    // Overlong forms, surrogates and values past U+10FFFF are invalid too.
    if (ok && ((len == 2 && cp < 0x80) || (len == 3 && cp < 0x800) || (len == 4 && cp < 0x10000) ||
               (cp >= 0xD800 && cp <= 0xDFFF) || cp > 0x10FFFF))
      ok = false;
    if (ok) {
      out.append(s.substr(i, len));
      i += len;
    } else {
      out += "\xEF\xBF\xBD";
      ++i;
    }
  }
  return out;
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
