// JSON for files and requests: one-line parse errors with the column, a nesting-depth limit (a
// deeply nested file is an error, never a stack overflow), and exact-length string helpers.
// Pulls in RapidJSON: include it from .cpp files only.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include <rapidjson/document.h>
#include <rapidjson/stringbuffer.h>
#include <rapidjson/writer.h>

#include "common/utf8.h"

namespace cepe {

/// Deepest nesting of arrays and objects parse_json accepts by default.
constexpr int kJsonMaxDepth = 64;

/// Deepest array/object nesting in `json` (strings and comments skipped), stopping early past
/// `limit`.
int json_nesting_depth(std::string_view json, int limit);
/// Whether `//` and `/* */` comments are accepted (config files document their fields that way).
enum class JsonComments { Rejected, Allowed };
/// Why and where a parse failed.
struct JsonError {
  std::string reason;  ///< what was wrong ("Invalid value."), one line, without the position
  size_t offset = 0;   ///< byte offset in the text where the input went wrong
};
/// Parses `text` as one JSON value with at most `max_depth` nested arrays/objects (checked
/// before parsing, and parsed iteratively, so the depth costs no stack); every string, escapes
/// included, must be valid UTF-8. On failure returns false and fills `error`.
bool parse_json(std::string_view text, rapidjson::Document* doc, JsonError* error,
                int max_depth = kJsonMaxDepth, JsonComments comments = JsonComments::Rejected);
/// parse_json with the error as one line: "invalid JSON: <reason> (at column N)", N the 1-based
/// byte offset.
bool parse_json(std::string_view text, rapidjson::Document* doc, std::string* error,
                int max_depth = kJsonMaxDepth, JsonComments comments = JsonComments::Rejected);
/// Parses `text` or throws cepe::Error "`origin`: <what> (at column N)".
void parse_json_or_throw(std::string_view text, rapidjson::Document* doc, const std::string& origin,
                         int max_depth = kJsonMaxDepth,
                         JsonComments comments = JsonComments::Rejected);
/// The string value of `v` (which must be a string), embedded NULs included.
inline std::string json_string(const rapidjson::Value& v) {
  return std::string(v.GetString(), v.GetStringLength());
}
/// Writes `s` as a JSON string, with its exact length so embedded NULs survive.
inline void write_json_string(rapidjson::Writer<rapidjson::StringBuffer>& w, std::string_view s) {
  w.String(s.data(), static_cast<rapidjson::SizeType>(s.size()));
}
/// Writes `s` as a JSON string after replacing invalid UTF-8 (common/utf8.h sanitize_utf8), so
/// text from clients or models always makes valid JSON.
inline void write_json_text(rapidjson::Writer<rapidjson::StringBuffer>& w, std::string_view s) {
  write_json_string(w, sanitize_utf8(s));
}

}  // namespace cepe
