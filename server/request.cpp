#include "server/request.h"

#include "common/json.h"

#include <rapidjson/document.h>
#include <rapidjson/stringbuffer.h>
#include <rapidjson/writer.h>

#include <cmath>
#include <limits>
#include <set>
#include <sstream>

#include "server/log.h"
#include "server/request_fields.h"

namespace cepe::server {
namespace fields {

using rapidjson::Value;

[[noreturn]] void bad(const std::string& field, const std::string& what) {
  throw ApiError(400, "invalid_field", quoted_input(field) + " " + what, field);
}

[[noreturn]] void unknown(const std::string& field) {
  throw ApiError(400, "unknown_field", "unknown field " + quoted_input(field), field);
}

std::string str(const Value& v) {
  return std::string(v.GetString(), v.GetStringLength());
}

int get_int(const Value& v, const std::string& field, long long lo, long long hi,
            const std::string& limit_note) {
  if (!v.IsInt64()) bad(field, "must be an integer");
  const long long x = v.GetInt64();
  if (x < lo) bad(field, "must be >= " + std::to_string(lo) + ", got " + std::to_string(x));
  if (x > hi) {
    throw ApiError(400, "limit_exceeded",
                   "'" + field + "' is " + std::to_string(x) + ", above the " + limit_note +
                       "maximum of " + std::to_string(hi),
                   field);
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
  // The sampler works in float: a value it would round to 0 (or to a subnormal, where its
  // divisions lose all precision) is a different setting from the one asked for.
  const float f = static_cast<float>(x);
  if (x != 0.0 && !(std::fabs(f) >= std::numeric_limits<float>::min())) {
    std::ostringstream min;
    min << std::numeric_limits<float>::min();
    bad(field, "is too small to represent (nonzero values must be >= " + min.str() + ")");
  }
  return f;
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
      unknown(sub);
    }
  }
  if (!has_text)
    throw ApiError(400, "missing_field", "'" + field + ".text' is required", field + ".text");
  return p;
}

void parse_object(std::string_view body, int max_depth, rapidjson::Document& doc) {
  // The one JSON reader (common/json.h): the depth is checked before parsing, so no nesting,
  // however deep, reaches the parser or the (recursive) value destructors, and every string it
  // returns is valid UTF-8.
  JsonError error;
  if (!parse_json(body, &doc, &error, max_depth)) {
    throw ApiError(400, "invalid_json",
                   "invalid JSON at byte " + std::to_string(error.offset) + ": " + error.reason);
  }
  if (!doc.IsObject()) throw ApiError(400, "invalid_json", "the body must be a JSON object");
}

void for_each_field(const rapidjson::Document& doc,
                    const std::function<void(const std::string&, const Value&)>& field) {
  std::set<std::string> seen;
  for (auto it = doc.MemberBegin(); it != doc.MemberEnd(); ++it) {
    const std::string name = str(it->name);
    if (!seen.insert(name).second) bad(name, "appears twice");
    field(name, it->value);
  }
}

std::vector<std::string> get_stop(const Value& v, const std::string& name,
                                  const AskLimits& limits) {
  std::vector<std::string> stop;
  if (v.IsString()) {
    stop = {str(v)};
  } else if (v.IsArray()) {
    for (rapidjson::SizeType i = 0; i < v.Size(); ++i)
      stop.push_back(get_string(v[i], name + "[" + std::to_string(i) + "]"));
  } else {
    bad(name, "must be a string or an array of strings");
  }
  if (static_cast<int>(stop.size()) > limits.max_stop) {
    throw ApiError(400, "limit_exceeded",
                   "'" + name + "' has " + std::to_string(stop.size()) +
                       " strings, above the maximum of " + std::to_string(limits.max_stop),
                   name);
  }
  for (size_t i = 0; i < stop.size(); ++i) {
    if (static_cast<int>(stop[i].size()) > limits.max_stop_chars) {
      throw ApiError(400, "limit_exceeded",
                     "'" + name + "[" + std::to_string(i) + "]' is longer than " +
                         std::to_string(limits.max_stop_chars) + " bytes",
                     name);
    }
  }
  return stop;
}

std::vector<qa::Passage> get_passages(const Value& v, const std::string& name,
                                      const AskLimits& limits) {
  if (!v.IsArray()) bad(name, "must be an array of {title, text} objects");
  if (static_cast<int>(v.Size()) > limits.max_k) {
    throw ApiError(400, "limit_exceeded",
                   "'" + name + "' has " + std::to_string(v.Size()) +
                       " entries, above the maximum of " + std::to_string(limits.max_k),
                   name);
  }
  std::vector<qa::Passage> ps;
  for (rapidjson::SizeType i = 0; i < v.Size(); ++i)
    ps.push_back(get_passage(v[i], name + "[" + std::to_string(i) + "]"));
  return ps;
}

void check_question(AskRequest& r, bool has_k, const std::string& name, const AskLimits& limits) {
  if (r.question.find_first_not_of(" \t\r\n") == std::string::npos) bad(name, "is empty");
  const size_t chars = utf8_length(r.question);
  if (chars > static_cast<size_t>(limits.max_question_chars)) {
    throw ApiError(400, "limit_exceeded",
                   "'" + name + "' has " + std::to_string(chars) +
                       " characters, above the maximum of " +
                       std::to_string(limits.max_question_chars),
                   name);
  }
  if (r.bm25_weight == 0 && r.dense_weight == 0)
    bad("dense_weight", "and bm25_weight cannot both be 0");
  // Caller passages fix how many passages there are; k only limits retrieval.
  if (r.passages && !has_k) r.k = static_cast<int>(r.passages->size());
  if (r.decoder_passages > r.k && !r.passages) {
    // Built piecewise: GCC 12 misreads `"(" + std::to_string(...)` here as an overlapping copy.
    std::string what = "(";
    what += std::to_string(r.decoder_passages);
    what += ") must be <= k (";
    what += std::to_string(r.k);
    what += ")";
    bad("decoder_passages", what);
  }
}

bool get_retrieval_field(const std::string& name, const rapidjson::Value& v, AskRequest& r) {
  if (name == "nprobe") {
    r.nprobe = get_int(v, name, 0, 1 << 16);
  } else if (name == "ef_search") {
    r.ef_search = get_int(v, name, 0, 1 << 16);
  } else if (name == "bm25_weight") {
    r.bm25_weight = get_float(v, name, 0.0, 1e6, false);
  } else if (name == "dense_weight") {
    r.dense_weight = get_float(v, name, 0.0, 1e6, false);
  } else if (name == "rrf_k") {
    r.rrf_k = get_int(v, name, 0, 1 << 20);
  } else {
    return false;
  }
  return true;
}

}  // namespace fields

using namespace fields;

AskRequest parse_ask_request(std::string_view body, const AskLimits& limits) {
  rapidjson::Document doc;
  parse_object(body, limits.max_json_depth, doc);

  AskRequest r;
  r.k = limits.default_k;
  r.max_new_tokens = limits.default_max_new_tokens;
  r.stop = limits.default_stop;
  bool has_question = false, has_k = false;
  for_each_field(doc, [&](const std::string& name, const Value& v) {
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
      r.stop = get_stop(v, name, limits);
    } else if (name == "stream") {
      if (!v.IsBool()) bad(name, "must be true or false");
      r.stream = v.GetBool();
    } else if (name == "passages") {
      r.passages = get_passages(v, name, limits);
    } else if (name == "logprobs") {
      if (!v.IsNull()) r.logprobs = get_int(v, name, 0, limits.max_logprobs);
    } else if (!get_retrieval_field(name, v, r)) {
      unknown(name);
    }
  });
  if (!has_question) throw ApiError(400, "missing_field", "'question' is required", "question");
  check_question(r, has_k, "question", limits);
  return r;
}

AskRequest parse_search_request(std::string_view body, const AskLimits& limits) {
  rapidjson::Document doc;
  parse_object(body, limits.max_json_depth, doc);
  AskRequest r;
  r.k = limits.default_k;
  r.decoder_passages = 0;
  bool has_question = false;
  for_each_field(doc, [&](const std::string& name, const Value& v) {
    if (name == "question") {
      r.question = get_string(v, name);
      has_question = true;
    } else if (name == "k") {
      r.k = get_int(v, name, 1, limits.max_k);
    } else if (!get_retrieval_field(name, v, r)) {
      unknown(name);
    }
  });
  if (!has_question) throw ApiError(400, "missing_field", "'question' is required", "question");
  check_question(r, /*has_k=*/true, "question", limits);
  return r;
}

std::string json_quote(std::string_view text) {
  rapidjson::StringBuffer sb;
  rapidjson::Writer<rapidjson::StringBuffer> w(sb);
  w.String(text.data(), static_cast<rapidjson::SizeType>(text.size()));
  return std::string(sb.GetString(), sb.GetSize());
}

std::string error_json(const std::string& code, const std::string& message) {
  // Messages quote what the client sent (a path, a field name), which need not be UTF-8.
  return "{\"error\":{\"code\":" + json_quote(sanitize_utf8(code)) +
         ",\"message\":" + json_quote(sanitize_utf8(message)) + "}}";
}

}  // namespace cepe::server
