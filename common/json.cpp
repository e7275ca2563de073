#include "common/json.h"

#include <rapidjson/error/en.h>

#include "common/error.h"

namespace cepe {

namespace {

// Byte offset where nesting first exceeds `max_depth`, or npos. Strings are skipped so that
// brackets inside them do not count; the text is not otherwise validated here.
size_t depth_violation(std::string_view text, int max_depth) {
  int depth = 0;
  bool in_string = false;
  for (size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    if (in_string) {
      if (c == '\\')
        ++i;
      else if (c == '"')
        in_string = false;
    } else if (c == '"') {
      in_string = true;
    } else if (c == '[' || c == '{') {
      if (++depth > max_depth) return i;
    } else if (c == ']' || c == '}') {
      --depth;
    }
  }
  return std::string_view::npos;
}

}  // namespace

bool parse_json(std::string_view text, rapidjson::Document* doc, std::string* error,
                int max_depth) {
  const size_t too_deep = depth_violation(text, max_depth);
  if (too_deep != std::string_view::npos) {
    *error = "invalid JSON: nested deeper than " + std::to_string(max_depth) +
             " levels (at column " + std::to_string(too_deep + 1) + ")";
    return false;
  }
  doc->Parse<rapidjson::kParseValidateEncodingFlag | rapidjson::kParseIterativeFlag>(text.data(),
                                                                                     text.size());
  if (!doc->HasParseError()) return true;
  *error =
      json_error_message(*doc) + " (at column " + std::to_string(doc->GetErrorOffset() + 1) + ")";
  return false;
}

void parse_json_or_throw(std::string_view text, rapidjson::Document* doc, const std::string& origin,
                         int max_depth) {
  std::string error;
  if (!parse_json(text, doc, &error, max_depth)) CEPE_THROW(origin << ": " << error);
}

std::string json_error_message(const rapidjson::Document& doc) {
  return std::string("invalid JSON: ") + rapidjson::GetParseError_En(doc.GetParseError());
}

}  // namespace cepe
