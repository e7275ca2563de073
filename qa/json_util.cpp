#include "qa/json_util.h"

#include <rapidjson/error/en.h>

namespace cepe::qa::detail {

std::optional<size_t> find_invalid_utf8(std::string_view text) {
  size_t i = 0;
  while (i < text.size()) {
    const auto b0 = static_cast<unsigned char>(text[i]);
    if (b0 < 0x80) {
      ++i;
      continue;
    }
    size_t len = 0;
    unsigned char lo = 0x80, hi = 0xBF;
    if (b0 >= 0xC2 && b0 <= 0xDF) {
      len = 2;
    } else if (b0 >= 0xE0 && b0 <= 0xEF) {
      len = 3;
      if (b0 == 0xE0) lo = 0xA0;
      if (b0 == 0xED) hi = 0x9F;
    } else if (b0 >= 0xF0 && b0 <= 0xF4) {
      len = 4;
      if (b0 == 0xF0) lo = 0x90;
      if (b0 == 0xF4) hi = 0x8F;
    } else {
      return i;
    }
    if (i + len > text.size()) return i;
    for (size_t k = 1; k < len; ++k) {
      const auto b = static_cast<unsigned char>(text[i + k]);
      if (k == 1 ? (b < lo || b > hi) : (b < 0x80 || b > 0xBF)) return i;
    }
    i += len;
  }
  return std::nullopt;
}

bool parse_json(std::string_view text, rapidjson::Document* doc, std::string* error) {
  doc->Parse<rapidjson::kParseValidateEncodingFlag>(text.data(), text.size());
  if (!doc->HasParseError()) return true;
  *error =
      json_error_message(*doc) + " (at column " + std::to_string(doc->GetErrorOffset() + 1) + ")";
  return false;
}

std::string json_error_message(const rapidjson::Document& doc) {
  return std::string("invalid JSON: ") + rapidjson::GetParseError_En(doc.GetParseError());
}

std::string_view trim_ascii(std::string_view s) {
  const char* ws = " \t\n\r\f\v";
  const size_t b = s.find_first_not_of(ws);
  if (b == std::string_view::npos) return {};
  const size_t e = s.find_last_not_of(ws);
  return s.substr(b, e - b + 1);
}

}  // namespace cepe::qa::detail
