#include "common/json.h"

#include <rapidjson/error/en.h>

#include <algorithm>

#include "common/error.h"

namespace cepe {

namespace {

// When a comment starts at json[i] (outside strings), the offset of its last byte (the end of the
// text for one left open); otherwise i. Comments may hold quotes and brackets that are neither
// strings nor nesting.
size_t comment_end(std::string_view json, size_t i) {
  if (json[i] != '/' || i + 1 >= json.size()) return i;
  if (json[i + 1] == '/') return std::min(json.find('\n', i), json.size() - 1);
  if (json[i + 1] == '*') {
    const size_t close = json.find("*/", i + 2);
    return close == std::string_view::npos ? json.size() - 1 : close + 1;
  }
  return i;
}

// Deepest array/object nesting in `json` (strings and comments skipped), stopping at the bracket
// that opens level `limit + 1`, whose offset goes to `*exceeded_at` (npos when the nesting stays
// within).
int scan_nesting(std::string_view json, int limit, size_t* exceeded_at) {
  *exceeded_at = std::string_view::npos;
  int depth = 0, deepest = 0;
  bool in_string = false, escaped = false;
  for (size_t i = 0; i < json.size(); ++i) {
    const char c = json[i];
    if (in_string) {
      if (escaped)
        escaped = false;
      else if (c == '\\')
        escaped = true;
      else if (c == '"')
        in_string = false;
      continue;
    }
    if (c == '"') {
      in_string = true;
    } else if (const size_t end = comment_end(json, i); end != i) {
      i = end;
    } else if (c == '[' || c == '{') {
      deepest = std::max(deepest, ++depth);
      if (deepest > limit) {
        *exceeded_at = i;
        break;
      }
    } else if ((c == ']' || c == '}') && depth > 0) {
      --depth;
    }
  }
  return deepest;
}

int hex_digit(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

// Offset of the first \uDC00-\uDFFF escape that does not follow a \uD800-\uDBFF one, or npos.
// RapidJSON 1.1.0 rejects a lone high surrogate but turns a lone low one into the three bytes of
// its code point, which are not UTF-8: strings from clients and files would then hold invalid
// UTF-8 that kParseValidateEncodingFlag (which checks the raw bytes only) let through. Only
// called on text that parsed, so every escape and comment is well formed.
size_t lone_low_surrogate(std::string_view json) {
  bool in_string = false, after_high = false;
  for (size_t i = 0; i < json.size(); ++i) {
    const char c = json[i];
    if (!in_string) {
      if (const size_t end = comment_end(json, i); end != i)
        i = end;
      else
        in_string = c == '"';
      continue;
    }
    if (c == '"') {
      in_string = after_high = false;
    } else if (c == '\\' && i + 1 < json.size()) {
      if (json[i + 1] != 'u' || i + 5 >= json.size()) {
        after_high = false;
        ++i;
        continue;
      }
      unsigned unit = 0;
      for (size_t k = i + 2; k < i + 6; ++k)
        unit = unit * 16 + static_cast<unsigned>(hex_digit(json[k]));
      if (unit >= 0xDC00 && unit <= 0xDFFF && !after_high) return i;
      after_high = unit >= 0xD800 && unit <= 0xDBFF;
      i += 5;
    } else {
      after_high = false;
    }
  }
  return std::string_view::npos;
}

}  // namespace

int json_nesting_depth(std::string_view json, int limit) {
  size_t exceeded_at;
  return scan_nesting(json, limit, &exceeded_at);
}

bool parse_json(std::string_view text, rapidjson::Document* doc, JsonError* error, int max_depth,
                JsonComments comments) {
  // RapidJSON reads a NUL byte as the end of the text, so `{"a": 1}<NUL>anything` would parse;
  // no JSON text holds one (in a string it must be escaped as \u0000).
  if (const size_t at = text.find('\0'); at != std::string_view::npos) {
    *error = {"a NUL byte", at};
    return false;
  }
  if (size_t at; scan_nesting(text, max_depth, &at) > max_depth) {
    *error = {"nests deeper than " + std::to_string(max_depth) + " levels", at};
    return false;
  }
  constexpr unsigned kFlags =
      rapidjson::kParseValidateEncodingFlag | rapidjson::kParseIterativeFlag;
  if (comments == JsonComments::Allowed)
    doc->Parse<kFlags | rapidjson::kParseCommentsFlag>(text.data(), text.size());
  else
    doc->Parse<kFlags>(text.data(), text.size());
  if (doc->HasParseError()) {
    *error = {rapidjson::GetParseError_En(doc->GetParseError()),
              std::min(doc->GetErrorOffset(), text.size())};
    return false;
  }
  if (const size_t at = lone_low_surrogate(text); at != std::string_view::npos) {
    *error = {"the escape " + std::string(text.substr(at, 6)) +
                  " is the second half of a UTF-16 surrogate pair without its first",
              at};
    return false;
  }
  return true;
}

bool parse_json(std::string_view text, rapidjson::Document* doc, std::string* error, int max_depth,
                JsonComments comments) {
  JsonError e;
  if (parse_json(text, doc, &e, max_depth, comments)) return true;
  *error = "invalid JSON: " + e.reason + " (at column " + std::to_string(e.offset + 1) + ")";
  return false;
}

void parse_json_or_throw(std::string_view text, rapidjson::Document* doc, const std::string& origin,
                         int max_depth, JsonComments comments) {
  std::string error;
  if (!parse_json(text, doc, &error, max_depth, comments)) CEPE_THROW(origin << ": " << error);
}

}  // namespace cepe
