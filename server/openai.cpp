#include "server/openai.h"

#include <rapidjson/document.h>
#include <rapidjson/stringbuffer.h>
#include <rapidjson/writer.h>

#include <algorithm>
#include <charconv>
#include <cmath>
#include <limits>
#include <set>

#include "common/json.h"
#include "common/utf8.h"
#include "server/log.h"
#include "server/request_fields.h"

namespace cepe::server {
namespace {

using rapidjson::Value;
using Writer = rapidjson::Writer<rapidjson::StringBuffer>;
using namespace fields;

[[noreturn]] void unsupported(const std::string& field, const std::string& what) {
  throw ApiError(400, "unsupported_value", "'" + field + "' " + what, field);
}

// The text of a message's content: a string, null, or an array of {"type":"text","text":...}
// parts (joined; other part types are refused rather than silently dropped).
std::string content_text(const Value& v, const std::string& field) {
  if (v.IsNull()) return "";
  if (v.IsString()) return str(v);
  if (!v.IsArray()) bad(field, "must be a string or an array of text parts");
  std::string text;
  for (rapidjson::SizeType i = 0; i < v.Size(); ++i) {
    const std::string part = field + "[" + std::to_string(i) + "]";
    const Value& p = v[i];
    if (!p.IsObject() || !p.HasMember("type") || !p["type"].IsString())
      bad(part, "must be an object with 'type'");
    if (str(p["type"]) != "text") unsupported(part + ".type", "must be \"text\"");
    if (!p.HasMember("text"))
      throw ApiError(400, "missing_field", "'" + part + ".text' is required", part + ".text");
    text += get_string(p["text"], part + ".text");
  }
  return text;
}

// The last user message of `messages`; every message is checked.
std::string last_user_message(const Value& v, const AskLimits& limits) {
  if (!v.IsArray()) bad("messages", "must be an array of {role, content} objects");
  if (v.Size() == 0) bad("messages", "must not be empty");
  // Messages beyond a few hundred are no conversation a QA model answers; bound the work.
  const rapidjson::SizeType max_messages = 256;
  if (v.Size() > max_messages) {
    throw ApiError(400, "limit_exceeded",
                   "'messages' has " + std::to_string(v.Size()) +
                       " entries, above the maximum of " + std::to_string(max_messages),
                   "messages");
  }
  (void)limits;
  std::optional<std::string> question;
  for (rapidjson::SizeType i = 0; i < v.Size(); ++i) {
    const std::string field = "messages[" + std::to_string(i) + "]";
    const Value& m = v[i];
    if (!m.IsObject()) bad(field, "must be an object with 'role' and 'content'");
    std::string role;
    bool has_role = false;
    std::string text;
    for (auto it = m.MemberBegin(); it != m.MemberEnd(); ++it) {
      const std::string name = str(it->name);
      const std::string sub = field + "." + name;
      if (name == "role") {
        role = get_string(it->value, sub);
        has_role = true;
      } else if (name == "content") {
        text = content_text(it->value, sub);
      } else if (name == "name") {
        get_string(it->value, sub);
      } else {
        unknown(sub);
      }
    }
    if (!has_role)
      throw ApiError(400, "missing_field", "'" + field + ".role' is required", field + ".role");
    static const std::set<std::string> kRoles = {"system", "developer", "user", "assistant",
                                                 "tool"};
    if (!kRoles.count(role))
      bad(field + ".role", "must be system, developer, user, assistant or tool");
    if (role == "user") question = text;
  }
  if (!question)
    throw ApiError(400, "missing_field", "'messages' has no user message (the question)",
                   "messages");
  return *question;
}

void put_head(Writer& w, const OpenAiIds& ids, bool chunk) {
  w.Key("id");
  write_json_text(w, ids.id);
  w.Key("object");
  if (ids.api == Api::Chat)
    w.String(chunk ? "chat.completion.chunk" : "chat.completion");
  else
    w.String("text_completion");
  w.Key("created");
  w.Int64(ids.created);
  w.Key("model");
  write_json_text(w, ids.model);
}

void put_usage(Writer& w, const OpenAiUsage& u) {
  w.Key("usage");
  w.StartObject();
  w.Key("prompt_tokens");
  w.Int64(u.prompt_tokens);
  w.Key("completion_tokens");
  w.Int64(u.completion_tokens);
  w.Key("total_tokens");
  w.Int64(u.prompt_tokens + u.completion_tokens);
  w.Key("encoder_tokens");
  w.Int64(u.encoder_tokens);
  w.EndObject();
}

void put_raw(Writer& w, const char* key, const std::string& json) {
  if (json.empty()) return;
  w.Key(key);
  w.RawValue(json.data(), json.size(), rapidjson::kArrayType);
}

std::string done(rapidjson::StringBuffer& sb) {
  return std::string(sb.GetString(), sb.GetSize());
}

void put_logprobs(Writer& w, const std::string& json) {
  w.Key("logprobs");
  if (json.empty())
    w.Null();
  else
    w.RawValue(json.data(), json.size(), rapidjson::kObjectType);
}

// A log-probability as the shortest decimal that reads back as the same float (the widened
// double would print nine spurious digits). -inf (a token the model rules out) is written as
// OpenAI writes it, -9999.0; NaN, which a sane model never yields, as null.
void put_logprob(Writer& w, float x) {
  if (std::isnan(x)) {
    w.Null();
    return;
  }
  if (!std::isfinite(x)) x = -9999.0f;
  char buf[32];
  const auto r = std::to_chars(buf, buf + sizeof buf, x);
  w.RawValue(buf, static_cast<size_t>(r.ptr - buf), rapidjson::kNumberType);
}

void put_token(Writer& w, const std::string& bytes, float logprob) {
  w.Key("token");
  write_json_text(w, bytes);
  w.Key("logprob");
  put_logprob(w, logprob);
  w.Key("bytes");
  w.StartArray();
  for (unsigned char c : bytes) w.Uint(c);
  w.EndArray();
}

}  // namespace

OpenAiRequest parse_openai_request(Api api, std::string_view body, const AskLimits& limits) {
  rapidjson::Document doc;
  parse_object(body, limits.max_json_depth, doc);
  const bool chat = api == Api::Chat;
  OpenAiRequest out;
  AskRequest& r = out.ask;
  r.k = limits.default_k;
  r.max_new_tokens = limits.default_max_new_tokens;
  r.stop = limits.default_stop;
  bool has_question = false, has_k = false, has_stream_options = false, chat_logprobs = false;
  int top_logprobs = -1;
  const char* question_field = chat ? "messages" : "prompt";
  for_each_field(doc, [&](const std::string& name, const Value& v) {
    if (chat && name == "messages") {
      r.question = last_user_message(v, limits);
      has_question = true;
    } else if (!chat && name == "prompt") {
      if (v.IsArray()) {
        if (v.Size() != 1) unsupported(name, "must be one string (batched prompts are not served)");
        r.question = get_string(v[0], "prompt[0]");
      } else {
        r.question = get_string(v, name);
      }
      has_question = true;
    } else if (name == "model") {
      get_string(v, name);  // any name: one model is served, and it answers
    } else if (name == "max_tokens" || (chat && name == "max_completion_tokens")) {
      if (!v.IsNull()) r.max_new_tokens = get_int(v, name, 0, limits.max_new_tokens);
    } else if (name == "temperature") {
      if (!v.IsNull()) r.temperature = get_float(v, name, 0.0, 2.0, false);
    } else if (name == "top_p") {
      if (!v.IsNull()) r.top_p = get_float(v, name, 0.0, 1.0, true);
    } else if (name == "stop") {
      if (!v.IsNull()) r.stop = get_stop(v, name, limits);
    } else if (name == "stream") {
      if (!v.IsNull() && !v.IsBool()) bad(name, "must be true or false");
      r.stream = v.IsBool() && v.GetBool();
    } else if (name == "stream_options") {
      if (v.IsNull()) return;
      if (!v.IsObject()) bad(name, "must be an object");
      has_stream_options = true;
      for (auto o = v.MemberBegin(); o != v.MemberEnd(); ++o) {
        const std::string sub = name + "." + str(o->name);
        if (str(o->name) != "include_usage") unknown(sub);
        if (!o->value.IsBool()) bad(sub, "must be true or false");
        out.include_usage = o->value.GetBool();
      }
    } else if (name == "seed") {
      if (v.IsNull()) return;
      if (!v.IsUint64()) bad(name, "must be an integer in [0, 2^64)");
      r.seed = v.GetUint64();
    } else if (name == "n" || (!chat && name == "best_of")) {
      if (!v.IsNull() && !(v.IsInt64() && v.GetInt64() == 1))
        unsupported(name, "must be 1 (one answer per request)");
    } else if (name == "presence_penalty" || name == "frequency_penalty") {
      if (!v.IsNull() && !(v.IsNumber() && v.GetDouble() == 0.0))
        unsupported(name, "must be 0 (penalties are not implemented)");
    } else if (chat && name == "logprobs") {
      if (!v.IsNull() && !v.IsBool()) bad(name, "must be true or false");
      chat_logprobs = v.IsBool() && v.GetBool();
    } else if (chat && name == "top_logprobs") {
      if (!v.IsNull()) top_logprobs = get_int(v, name, 0, limits.max_logprobs);
    } else if (name == "logprobs") {
      // Completions: the number of most likely tokens to list (false, as null: none).
      if (!v.IsNull() && !(v.IsBool() && !v.GetBool()))
        r.logprobs = get_int(v, name, 0, limits.max_logprobs);
    } else if (!chat && name == "echo") {
      if (!v.IsNull() && !(v.IsBool() && !v.GetBool())) unsupported(name, "must be false");
    } else if (!chat && name == "suffix") {
      if (!v.IsNull()) unsupported(name, "is not available");
    } else if (name == "user") {
      if (!v.IsNull()) get_string(v, name);
    } else if (name == "k") {
      r.k = get_int(v, name, 0, limits.max_k);
      has_k = true;
    } else if (name == "decoder_passages") {
      r.decoder_passages = get_int(v, name, 0, limits.max_k);
    } else if (name == "top_k") {
      r.top_k = get_int(v, name, 0, std::numeric_limits<int>::max());
    } else if (name == "passages") {
      r.passages = get_passages(v, name, limits);
    } else if (get_retrieval_field(name, v, r)) {
    } else {
      unknown(name);
    }
  });
  if (!has_question) {
    throw ApiError(400, "missing_field", std::string("'") + question_field + "' is required",
                   question_field);
  }
  if (has_stream_options && !r.stream) bad("stream_options", "is only allowed with stream: true");
  if (top_logprobs >= 0 && !chat_logprobs) bad("top_logprobs", "requires 'logprobs': true");
  if (chat_logprobs) r.logprobs = std::max(top_logprobs, 0);
  check_question(r, has_k, question_field, limits);
  return out;
}

std::string openai_error_json(int status, const std::string& code, const std::string& message,
                              const std::string& param) {
  const char* type = status == 401   ? "authentication_error"
                     : status == 429 ? "rate_limit_error"
                     : status >= 500 ? "server_error"
                                     : "invalid_request_error";
  rapidjson::StringBuffer sb;
  Writer w(sb);
  w.StartObject();
  w.Key("error");
  w.StartObject();
  w.Key("message");
  write_json_text(w, message);
  w.Key("type");
  w.String(type);
  w.Key("param");
  if (param.empty())
    w.Null();
  else
    write_json_text(w, param);
  w.Key("code");
  write_json_text(w, code);
  w.EndObject();
  w.EndObject();
  return done(sb);
}

std::string openai_finish_reason(const std::string& ours) {
  if (ours == "eos" || ours == "stop") return "stop";
  return ours;
}

std::string passages_json(const std::vector<retriever::Hit>& hits) {
  rapidjson::StringBuffer sb;
  Writer w(sb);
  w.StartArray();
  for (const auto& h : hits) {
    w.StartObject();
    w.Key("id");
    write_json_text(w, h.id);
    w.Key("title");
    write_json_text(w, h.title);
    w.Key("text");
    write_json_text(w, h.text);
    w.Key("score");
    if (std::isfinite(h.score))
      w.Double(h.score);
    else
      w.Null();
    w.Key("rank");
    w.Int(h.rank);
    w.EndObject();
  }
  w.EndArray();
  return done(sb);
}

std::string logprob_content_json(const std::vector<TokenLogprob>& logprobs,
                                 const Tokenizer& tokenizer) {
  rapidjson::StringBuffer sb;
  Writer w(sb);
  w.StartArray();
  for (const auto& lp : logprobs) {
    w.StartObject();
    put_token(w, tokenizer.token_bytes(lp.id), lp.logprob);
    w.Key("top_logprobs");
    w.StartArray();
    for (const auto& [id, logprob] : lp.top) {
      w.StartObject();
      put_token(w, tokenizer.token_bytes(id), logprob);
      w.EndObject();
    }
    w.EndArray();
    w.EndObject();
  }
  w.EndArray();
  return done(sb);
}

std::string openai_logprobs_json(Api api, const std::vector<TokenLogprob>& logprobs,
                                 const Tokenizer& tokenizer, int64_t& text_offset) {
  if (api != Api::Completion) {
    const std::string content = logprob_content_json(logprobs, tokenizer);
    return "{\"content\":" + content + ",\"refusal\":null}";
  }
  std::vector<std::string> chosen;  // each chosen token's bytes, looked up once
  chosen.reserve(logprobs.size());
  for (const auto& lp : logprobs) chosen.push_back(tokenizer.token_bytes(lp.id));
  rapidjson::StringBuffer sb;
  Writer w(sb);
  w.StartObject();
  w.Key("tokens");
  w.StartArray();
  for (const std::string& bytes : chosen) write_json_text(w, bytes);
  w.EndArray();
  w.Key("token_logprobs");
  w.StartArray();
  for (const auto& lp : logprobs) put_logprob(w, lp.logprob);
  w.EndArray();
  w.Key("top_logprobs");
  w.StartArray();
  for (const auto& lp : logprobs) {
    // The most likely tokens, then the chosen one if it is not among them (as OpenAI lists up
    // to logprobs + 1). Tokens that render alike (lone bytes as U+FFFD) keep the first, so the
    // object has no duplicate keys.
    std::vector<std::pair<int32_t, float>> entries = lp.top;
    if (std::none_of(entries.begin(), entries.end(),
                     [&](const auto& e) { return e.first == lp.id; }))
      entries.emplace_back(lp.id, lp.logprob);
    std::set<std::string> keys;
    w.StartObject();
    for (const auto& [id, logprob] : entries) {
      const std::string key = sanitize_utf8(tokenizer.token_bytes(id));
      if (!keys.insert(key).second) continue;
      write_json_string(w, key);
      put_logprob(w, logprob);
    }
    w.EndObject();
  }
  w.EndArray();
  w.Key("text_offset");
  w.StartArray();
  for (const std::string& bytes : chosen) {
    w.Int64(text_offset);
    text_offset += static_cast<int64_t>(bytes.size());
  }
  w.EndArray();
  w.EndObject();
  return done(sb);
}

std::string openai_response_json(const OpenAiIds& ids, const std::string& text,
                                 const std::string& finish_reason, const OpenAiUsage& usage,
                                 const std::string& passages, const std::string& logprobs) {
  rapidjson::StringBuffer sb;
  Writer w(sb);
  w.StartObject();
  put_head(w, ids, false);
  w.Key("choices");
  w.StartArray();
  w.StartObject();
  w.Key("index");
  w.Int(0);
  if (ids.api == Api::Chat) {
    w.Key("message");
    w.StartObject();
    w.Key("role");
    w.String("assistant");
    w.Key("content");
    write_json_text(w, text);
    w.EndObject();
  } else {
    w.Key("text");
    write_json_text(w, text);
  }
  put_logprobs(w, logprobs);
  w.Key("finish_reason");
  write_json_text(w, openai_finish_reason(finish_reason));
  w.EndObject();
  w.EndArray();
  put_usage(w, usage);
  put_raw(w, "passages", passages);
  w.EndObject();
  return done(sb);
}

std::string openai_chunk_json(const OpenAiIds& ids, const std::string& text, bool first,
                              const std::optional<std::string>& finish_reason,
                              const std::string& passages, const std::string& logprobs) {
  rapidjson::StringBuffer sb;
  Writer w(sb);
  w.StartObject();
  put_head(w, ids, true);
  w.Key("choices");
  w.StartArray();
  w.StartObject();
  w.Key("index");
  w.Int(0);
  if (ids.api == Api::Chat) {
    w.Key("delta");
    w.StartObject();
    if (first) {
      w.Key("role");
      w.String("assistant");
    }
    if (!finish_reason) {
      w.Key("content");
      write_json_text(w, text);
    }
    w.EndObject();
  } else {
    w.Key("text");
    write_json_text(w, text);
  }
  put_logprobs(w, logprobs);
  w.Key("finish_reason");
  if (finish_reason)
    write_json_text(w, openai_finish_reason(*finish_reason));
  else
    w.Null();
  w.EndObject();
  w.EndArray();
  if (first) put_raw(w, "passages", passages);
  w.EndObject();
  return done(sb);
}

std::string openai_usage_chunk_json(const OpenAiIds& ids, const OpenAiUsage& usage) {
  rapidjson::StringBuffer sb;
  Writer w(sb);
  w.StartObject();
  put_head(w, ids, true);
  w.Key("choices");
  w.StartArray();
  w.EndArray();
  put_usage(w, usage);
  w.EndObject();
  return done(sb);
}

std::string openai_models_json(const std::string& model, int64_t created) {
  rapidjson::StringBuffer sb;
  Writer w(sb);
  w.StartObject();
  w.Key("object");
  w.String("list");
  w.Key("data");
  w.StartArray();
  w.StartObject();
  w.Key("id");
  write_json_text(w, model);
  w.Key("object");
  w.String("model");
  w.Key("created");
  w.Int64(created);
  w.Key("owned_by");
  w.String("cepe-qa");
  w.EndObject();
  w.EndArray();
  w.EndObject();
  return done(sb);
}

}  // namespace cepe::server
