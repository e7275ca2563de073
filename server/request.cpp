#include "server/request.h"

#include "common/json.h"

#include <rapidjson/document.h>
#include <rapidjson/error/en.h>
#include <rapidjson/stringbuffer.h>
#include <rapidjson/writer.h>

#include <cmath>
#include <limits>
#include <set>
#include <sstream>

namespace cepe::server {
namespace {

using rapidjson::Value;

[[noreturn]] void bad(const std::string& field, const std::string& what) {
  throw ApiError(400, "invalid_field", "'" + field + "' " + what);
}

std::string str(const Value& v) {
  return std::string(v.GetString(), v.GetStringLength());
}

int get_int(const Value& v, const std::string& field, long long lo, long long hi,
            const std::string& limit_note = "") {
  if (!v.IsInt64()) bad(field, "must be an integer");
  const long long x = v.GetInt64();
  if (x < lo) bad(field, "must be >= " + std::to_string(lo) + ", got " + std::to_string(x));
  if (x > hi) {
    throw ApiError(400, "limit_exceeded",
                   "'" + field + "' is " + std::to_string(x) + ", above the " + limit_note +
                       "maximum of " + std::to_string(hi));
  }
  return static_cast<int>(x);
}

float get_float(const Value& v, const std::string& field, double lo, double hi, bool lo_open) {
  if (!v.IsNumber()) bad(field, "must be a number");
  const double x = v.GetDouble();
  std::ostringstream range;
  range << (lo_open ? "(" : "[") << lo << ", " << hi << "]";
  if (!std::isfinite(x) || x < lo || (lo_open && x == lo) || x > hi)
    bad(field, "must be in " + range.str());
  return static_cast<float>(x);
}

std::string get_string(const Value& v, const std::string& field) {
  if (!v.IsString()) bad(field, "must be a string");
  return str(v);
}

qa::Passage get_passage(const Value& v, const std::string& field) {
  if (!v.IsObject()) bad(field, "must be an object with 'text' (and optional 'title', 'id')");
  qa::Passage p;
  bool has_text = false;
  std::set<std::string> seen;
  for (auto it = v.MemberBegin(); it != v.MemberEnd(); ++it) {
    const std::string name = str(it->name);
    const std::string sub = field + "." + name;
    if (!seen.insert(name).second) bad(sub, "appears twice");
    if (name == "title") {
      p.title = get_string(it->value, sub);
    } else if (name == "text") {
      p.text = get_string(it->value, sub);
      has_text = true;
    } else if (name == "id") {
      p.id = get_string(it->value, sub);
    } else {
      throw ApiError(400, "unknown_field", "unknown field '" + sub + "'");
    }
  }
  if (!has_text) throw ApiError(400, "missing_field", "'" + field + ".text' is required");
  return p;
}

}  // namespace

AskRequest parse_ask_request(std::string_view body, const AskLimits& limits) {
  // The depth is checked before parsing so no nesting, however deep, reaches the parser or the
  // (recursive) value destructors.
  if (json_nesting_depth(body, limits.max_json_depth) > limits.max_json_depth) {
    throw ApiError(
        400, "invalid_json",
        "the JSON nests deeper than " + std::to_string(limits.max_json_depth) + " levels");
  }
  rapidjson::Document doc;
  doc.Parse<rapidjson::kParseValidateEncodingFlag | rapidjson::kParseIterativeFlag>(body.data(),
                                                                                    body.size());
  if (doc.HasParseError()) {
    throw ApiError(400, "invalid_json",
                   "invalid JSON at byte " + std::to_string(doc.GetErrorOffset()) + ": " +
                       rapidjson::GetParseError_En(doc.GetParseError()));
  }
  if (!doc.IsObject()) throw ApiError(400, "invalid_json", "the body must be a JSON object");

  AskRequest r;
  r.k = limits.default_k;
  r.max_new_tokens = limits.default_max_new_tokens;
  r.stop = limits.default_stop;
  bool has_question = false, has_k = false;
  std::set<std::string> seen;
  for (auto it = doc.MemberBegin(); it != doc.MemberEnd(); ++it) {
    const std::string name = str(it->name);
    const Value& v = it->value;
    if (!seen.insert(name).second) bad(name, "appears twice");
    if (name == "question") {
      r.question = get_string(v, name);
      has_question = true;
    } else if (name == "k") {
      r.k = get_int(v, name, 0, limits.max_k);
      has_k = true;
    } else if (name == "decoder_passages") {
      r.decoder_passages = get_int(v, name, 0, limits.max_k);
    } else if (name == "max_new_tokens") {
      r.max_new_tokens = get_int(v, name, 0, limits.max_new_tokens);
    } else if (name == "temperature") {
      r.temperature = get_float(v, name, 0.0, 100.0, false);
    } else if (name == "top_p") {
      r.top_p = get_float(v, name, 0.0, 1.0, true);
    } else if (name == "top_k") {
      r.top_k = get_int(v, name, 0, std::numeric_limits<int>::max());
    } else if (name == "seed") {
      if (!v.IsUint64()) bad(name, "must be an integer in [0, 2^64)");
      r.seed = v.GetUint64();
    } else if (name == "stop") {
      if (v.IsString()) {
        r.stop = {str(v)};
      } else if (v.IsArray()) {
        r.stop.clear();
        for (rapidjson::SizeType i = 0; i < v.Size(); ++i)
          r.stop.push_back(get_string(v[i], "stop[" + std::to_string(i) + "]"));
      } else {
        bad(name, "must be a string or an array of strings");
      }
      if (static_cast<int>(r.stop.size()) > limits.max_stop) {
        throw ApiError(400, "limit_exceeded",
                       "'stop' has " + std::to_string(r.stop.size()) +
                           " strings, above the maximum of " + std::to_string(limits.max_stop));
      }
      for (size_t i = 0; i < r.stop.size(); ++i) {
        if (static_cast<int>(r.stop[i].size()) > limits.max_stop_chars) {
          throw ApiError(400, "limit_exceeded",
                         "'stop[" + std::to_string(i) + "]' is longer than " +
                             std::to_string(limits.max_stop_chars) + " bytes");
        }
      }
    } else if (name == "stream") {
      if (!v.IsBool()) bad(name, "must be true or false");
      r.stream = v.GetBool();
    } else if (name == "passages") {
      if (!v.IsArray()) bad(name, "must be an array of {title, text} objects");
      if (static_cast<int>(v.Size()) > limits.max_k) {
        throw ApiError(400, "limit_exceeded",
                       "'passages' has " + std::to_string(v.Size()) +
                           " entries, above the maximum of " + std::to_string(limits.max_k));
      }
      std::vector<qa::Passage> ps;
      for (rapidjson::SizeType i = 0; i < v.Size(); ++i)
        ps.push_back(get_passage(v[i], "passages[" + std::to_string(i) + "]"));
      r.passages = std::move(ps);
    } else {
      throw ApiError(400, "unknown_field", "unknown field '" + name + "'");
    }
  }
  if (!has_question) throw ApiError(400, "missing_field", "'question' is required");
  if (r.question.find_first_not_of(" \t\r\n") == std::string::npos) bad("question", "is empty");
  const size_t chars = utf8_length(r.question);
  if (chars > static_cast<size_t>(limits.max_question_chars)) {
    throw ApiError(400, "limit_exceeded",
                   "'question' has " + std::to_string(chars) +
                       " characters, above the maximum of " +
                       std::to_string(limits.max_question_chars));
  }
  // Caller passages fix how many passages there are; k only limits retrieval.
  if (r.passages && !has_k) r.k = static_cast<int>(r.passages->size());
  if (r.decoder_passages > r.k && !r.passages) {
    bad("decoder_passages",
        "(" + std::to_string(r.decoder_passages) + ") must be <= k (" + std::to_string(r.k) + ")");
  }
  return r;
}

std::string json_quote(std::string_view text) {
  rapidjson::StringBuffer sb;
  rapidjson::Writer<rapidjson::StringBuffer> w(sb);
  w.String(text.data(), static_cast<rapidjson::SizeType>(text.size()));
  return std::string(sb.GetString(), sb.GetSize());
}

std::string error_json(const std::string& code, const std::string& message) {
  return "{\"error\":{\"code\":" + json_quote(code) + ",\"message\":" + json_quote(message) + "}}";
}

}  // namespace cepe::server
