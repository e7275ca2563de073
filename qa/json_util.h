// Internal helpers shared by the qa/ readers and writers: UTF-8 checks, one-line JSON parsing with
// readable errors, and JSON writing. Not part of the public API (pulls in RapidJSON).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include <rapidjson/document.h>
#include <rapidjson/stringbuffer.h>
#include <rapidjson/writer.h>

namespace cepe::qa::detail {

/// Byte offset of the first byte that is not part of valid UTF-8 (shortest form, no surrogates).
std::optional<size_t> find_invalid_utf8(std::string_view text);

/// Parses `text` as one JSON value, validating string encodings; on failure returns false and sets
/// `error` to a one-line description with the 1-based column.
bool parse_json(std::string_view text, rapidjson::Document* doc, std::string* error);

/// The string value of `v` (which must be a string), embedded NULs included.
inline std::string json_string(const rapidjson::Value& v) {
  return std::string(v.GetString(), v.GetStringLength());
}

/// Writes `s` as a JSON string, with its exact length so embedded NULs survive.
inline void write_string(rapidjson::Writer<rapidjson::StringBuffer>& w, std::string_view s) {
  w.String(s.data(), static_cast<rapidjson::SizeType>(s.size()));
}

/// "invalid JSON: <RapidJSON's description>" for a failed parse, without a position.
std::string json_error_message(const rapidjson::Document& doc);

/// Trims ASCII whitespace on both sides.
std::string_view trim_ascii(std::string_view s);

}  // namespace cepe::qa::detail
