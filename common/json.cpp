#include "common/json.h"

#include <rapidjson/error/en.h>

#include <algorithm>

#include "common/error.h"

namespace cepe {

int json_nesting_depth(std::string_view json, int limit) {
  int depth = 0, deepest = 0;
  bool in_string = false, escaped = false;
  for (char c : json) {
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
    } else if (c == '[' || c == '{') {
      deepest = std::max(deepest, ++depth);
      if (deepest > limit) return deepest;
    } else if ((c == ']' || c == '}') && depth > 0) {
      --depth;
    }
  }
  return deepest;
}

bool parse_json(std::string_view text, rapidjson::Document* doc, std::string* error, int max_depth,
                JsonComments comments) {
  if (json_nesting_depth(text, max_depth) > max_depth) {
    *error = "invalid JSON: nested deeper than " + std::to_string(max_depth) + " levels";
    return false;
  }
  constexpr unsigned kFlags =
      rapidjson::kParseValidateEncodingFlag | rapidjson::kParseIterativeFlag;
  if (comments == JsonComments::Allowed)
    doc->Parse<kFlags | rapidjson::kParseCommentsFlag>(text.data(), text.size());
  else
    doc->Parse<kFlags>(text.data(), text.size());
  if (!doc->HasParseError()) return true;
  *error =
      json_error_message(*doc) + " (at column " + std::to_string(doc->GetErrorOffset() + 1) + ")";
  return false;
}

void parse_json_or_throw(std::string_view text, rapidjson::Document* doc, const std::string& origin,
                         int max_depth, JsonComments comments) {
  std::string error;
  if (!parse_json(text, doc, &error, max_depth, comments)) CEPE_THROW(origin << ": " << error);
}

std::string json_error_message(const rapidjson::Document& doc) {
  return std::string("invalid JSON: ") + rapidjson::GetParseError_En(doc.GetParseError());
}

}  // namespace cepe
