#include "config/server_config.h"

#include <rapidjson/document.h>
#include <rapidjson/prettywriter.h>
#include <rapidjson/stringbuffer.h>

#include <fstream>
#include <limits>
#include <set>

#include "common/error.h"
#include "common/fileio.h"
#include "common/json.h"
#include "engine/models/cepe_llama.h"
#include "engine/quant.h"

namespace cepe::config {
namespace {

constexpr long long kIntMax = std::numeric_limits<int>::max();

// Where a field lives in the struct: one accessor per kind keeps the table declarative.
struct FieldRef {
  FieldInfo info;
  int* (*int_ptr)(ServerConfig&) = nullptr;
  int64_t* (*i64_ptr)(ServerConfig&) = nullptr;
  bool* (*bool_ptr)(ServerConfig&) = nullptr;
  std::string* (*str_ptr)(ServerConfig&) = nullptr;
  std::vector<std::string>* (*list_ptr)(ServerConfig&) = nullptr;
};

#define CEPE_INT(name, lo, hi, help)                                               \
  FieldRef {                                                                       \
    {#name, FieldKind::Int, lo, hi, help}, [](ServerConfig& c) { return &c.name; } \
  }
#define CEPE_I64(name, lo, hi, help)                                                          \
  FieldRef {                                                                                  \
    {#name, FieldKind::Int64, lo, hi, help}, nullptr, [](ServerConfig& c) { return &c.name; } \
  }
#define CEPE_BOOL(name, help)                               \
  FieldRef {                                                \
    {#name, FieldKind::Bool, 0, 1, help}, nullptr, nullptr, \
        [](ServerConfig& c) { return &c.name; }             \
  }
#define CEPE_STR_AT(key, member, help)                               \
  FieldRef {                                                         \
    {key, FieldKind::String, 0, 0, help}, nullptr, nullptr, nullptr, \
        [](ServerConfig& c) { return &c.member; }                    \
  }
#define CEPE_STR(name, help) CEPE_STR_AT(#name, name, help)
#define CEPE_LIST(name, help)                                                       \
  FieldRef {                                                                        \
    {#name, FieldKind::StringList, 0, 0, help}, nullptr, nullptr, nullptr, nullptr, \
        [](ServerConfig& c) { return &c.name; }                                     \
  }

const std::vector<FieldRef>& field_refs() {
  static const std::vector<FieldRef> refs = {
      CEPE_STR(host, "address to listen on"),
      CEPE_INT(port, 0, 65535, "TCP port (0: any free port)"),
      CEPE_INT(io_threads, 1, 256, "HTTP IO threads"),
      CEPE_INT(retrieval_threads, 1, 256, "retrieval and tokenisation threads"),
      CEPE_INT(max_connections, 1, 1000000, "open connections beyond this are closed"),
      CEPE_INT(max_connections_per_client, 1, 1000000,
               "open connections from one client address beyond this are closed"),
      CEPE_STR(model, "model directory"),
      CEPE_STR(model_name, "model name in responses (default: the directory name)"),
      CEPE_STR(device, "cpu or cuda"),
      CEPE_INT(threads, 0, 1024, "CPU compute threads (0: all cores)"),
      CEPE_STR(weights, "load-time weight format: stored, f32, bf16, f16, q8_0 or q4_0 (cpu)"),
      CEPE_STR(cross_attention, "cached, absorbed or auto (absorbed on cpu, cached on cuda)"),
      CEPE_STR(kv_cache,
               "KV cache type: f32, f16 (cpu) or auto (f16 on cpu with 16/8/4-bit "
               "weights, else f32)"),
      CEPE_STR(stored_weights,
               "stored matrices on cpu: auto (copied while memory allows) or mapped (read in "
               "place, shared by every process on the checkpoint)"),
      CEPE_STR(index, "index directory (empty: requests must carry passages)"),
      CEPE_INT(nprobe, 0, 1 << 20, "FAISS IVF lists to visit (0: index default)"),
      CEPE_INT(ef_search, 0, 1 << 20, "FAISS HNSW search depth (0: index default)"),
      CEPE_LIST(bm25_shards,
                "BM25 shards (paths or tcp:HOST:PORT) searched instead of the index's database"),
      CEPE_STR(encoder_store, "precomputed passage states: auto, off or a .ces file"),
      CEPE_INT(encoder_cache_mb, 0, 1 << 20,
               "LRU cache of encoded passages when no store is used, MiB (0: off)"),
      CEPE_INT(max_batch, 1, 4096, "sequences generated together"),
      CEPE_INT(max_queue, 1, 1000000, "requests waiting for a batch slot before 429"),
      CEPE_BOOL(batching, "continuous batching (off: one request at a time)"),
      CEPE_INT(encode_tokens_per_step, 0, 1 << 24,
               "encoder tokens encoded between two decode steps (0: a request whole)"),
      CEPE_INT(retry_after_s, 0, 3600, "Retry-After seconds on 429"),
      CEPE_I64(max_body_bytes, 1, 1LL << 32, "largest request body (413 above)"),
      // Beast stores one header field in at most 65,533 bytes and throws past that; the cap keeps
      // every field a parse can produce below it.
      CEPE_INT(max_header_bytes, 1024, 61440, "largest request header or trailer (431 above)"),
      CEPE_INT(max_k, 0, 1000, "largest k"),
      CEPE_INT(default_k, 0, 1000, "k when the request has none"),
      CEPE_INT(max_new_tokens, 0, 1 << 20, "largest max_new_tokens"),
      CEPE_INT(default_max_new_tokens, 0, 1 << 20, "max_new_tokens when the request has none"),
      CEPE_INT(max_question_chars, 1, 1 << 24, "longest question in code points"),
      CEPE_INT(max_stop, 0, 64, "most stop strings per request"),
      CEPE_INT(max_stop_chars, 1, 4096, "longest stop string in bytes"),
      CEPE_INT(max_json_depth, 2, 256, "deepest JSON nesting in a request"),
      CEPE_INT(max_logprobs, 0, 1000, "most likely tokens listed per generated token"),
      CEPE_INT(chunk_tokens, 1, 1 << 16, "tokens per encoder chunk"),
      CEPE_INT(max_prompt_tokens, 1, 1 << 20, "decoder prompt cap in tokens"),
      CEPE_LIST(default_stop, "stop strings when the request has none"),
      CEPE_STR_AT("prompt.question_template", prompt.question_template,
                  "whole prompt: {passages} {instruction} {question}"),
      CEPE_STR_AT("prompt.passage_template", prompt.passage_template,
                  "one decoder passage: {title} {text} {id} {idx}"),
      CEPE_STR_AT("prompt.untitled_passage_template", prompt.untitled_passage_template,
                  "one decoder passage without a title"),
      CEPE_STR_AT("prompt.passage_separator", prompt.passage_separator,
                  "text between decoder passages"),
      CEPE_STR_AT("prompt.instruction", prompt.instruction, "text for {instruction}"),
      CEPE_INT(request_timeout_ms, 1, kIntMax, "deadline of one /ask (504 past it)"),
      CEPE_INT(header_timeout_ms, 1, kIntMax, "time to receive a header (and keep-alive idle)"),
      CEPE_INT(body_timeout_ms, 1, kIntMax, "time to receive a body"),
      CEPE_INT(write_timeout_ms, 1, kIntMax, "time to send a response or one event"),
      CEPE_INT(shutdown_grace_ms, 0, kIntMax, "time in-flight requests get on SIGTERM"),
      CEPE_INT(ready_stall_ms, 1, kIntMax, "/readyz fails after the engine stalls this long"),
      CEPE_LIST(api_keys, "accepted API keys (none: no authentication)"),
      CEPE_STR(api_key_file, "file of API keys, one a line (re-read on SIGHUP)"),
      CEPE_LIST(cors_origins, "allowed CORS origins (\"*\": any)"),
      CEPE_BOOL(log_requests, "one JSON log line per request"),
  };
  return refs;
}

#undef CEPE_INT
#undef CEPE_I64
#undef CEPE_BOOL
#undef CEPE_STR_AT
#undef CEPE_STR
#undef CEPE_LIST

const FieldRef* find_field(const std::string& name) {
  for (const auto& f : field_refs())
    if (name == f.info.name) return &f;
  return nullptr;
}

std::string kind_name(FieldKind k) {
  switch (k) {
    case FieldKind::Int:
    case FieldKind::Int64:
      return "an integer";
    case FieldKind::Bool:
      return "true or false";
    case FieldKind::String:
      return "a string";
    case FieldKind::StringList:
      return "an array of strings";
  }
  return "?";
}

void set_integer(const FieldRef& f, ServerConfig& c, long long v, const std::string& where) {
  CEPE_CHECK(v >= f.info.min && v <= f.info.max,
             where << ": " << v << " is out of range [" << f.info.min << ", " << f.info.max << "]");
  if (f.info.kind == FieldKind::Int)
    *f.int_ptr(c) = static_cast<int>(v);
  else
    *f.i64_ptr(c) = v;
}

void set_from_json(const FieldRef& f, ServerConfig& c, const rapidjson::Value& v,
                   const std::string& where) {
  auto expect = [&](bool ok) { CEPE_CHECK(ok, where << ": expected " << kind_name(f.info.kind)); };
  switch (f.info.kind) {
    case FieldKind::Int:
    case FieldKind::Int64:
      expect(v.IsInt64());
      set_integer(f, c, v.GetInt64(), where);
      break;
    case FieldKind::Bool:
      expect(v.IsBool());
      *f.bool_ptr(c) = v.GetBool();
      break;
    case FieldKind::String:
      expect(v.IsString());
      *f.str_ptr(c) = std::string(v.GetString(), v.GetStringLength());
      break;
    case FieldKind::StringList: {
      expect(v.IsArray());
      std::vector<std::string> out;
      for (rapidjson::SizeType i = 0; i < v.Size(); ++i) {
        CEPE_CHECK(v[i].IsString(), where << "[" << i << "]: expected a string");
        out.emplace_back(v[i].GetString(), v[i].GetStringLength());
      }
      *f.list_ptr(c) = std::move(out);
      break;
    }
  }
}

}  // namespace

const std::vector<FieldInfo>& server_config_fields() {
  static const std::vector<FieldInfo> infos = [] {
    std::vector<FieldInfo> out;
    for (const auto& f : field_refs()) out.push_back(f.info);
    return out;
  }();
  return infos;
}

void apply_config_json(ServerConfig& config, const std::string& json, const std::string& origin) {
  rapidjson::Document doc;
  parse_json_or_throw(json, &doc, origin, kJsonMaxDepth, JsonComments::Allowed);
  CEPE_CHECK(doc.IsObject(), origin << ": expected a JSON object");
  std::set<std::string> seen;
  for (auto it = doc.MemberBegin(); it != doc.MemberEnd(); ++it) {
    const std::string name(it->name.GetString(), it->name.GetStringLength());
    CEPE_CHECK(seen.insert(name).second,
               origin << ": field " << quoted_input(name) << " appears twice");
    if (name == "prompt") {
      CEPE_CHECK(it->value.IsObject(), origin << ": field 'prompt': expected an object");
      for (auto p = it->value.MemberBegin(); p != it->value.MemberEnd(); ++p) {
        const std::string sub =
            "prompt." + std::string(p->name.GetString(), p->name.GetStringLength());
        const FieldRef* f = find_field(sub);
        CEPE_CHECK(f, origin << ": unknown field " << quoted_input(sub));
        set_from_json(*f, config, p->value, origin + ": field '" + sub + "'");
      }
      continue;
    }
    const FieldRef* f = find_field(name);
    CEPE_CHECK(f && std::string(f->info.name).find('.') == std::string::npos,
               origin << ": unknown field " << quoted_input(name));
    set_from_json(*f, config, it->value, origin + ": field '" + name + "'");
  }
}

ServerConfig load_server_config(const std::filesystem::path& file) {
  ServerConfig config;
  apply_config_json(config, read_whole_file(file, "config file"), file.string());
  return config;
}

void set_config_field(ServerConfig& config, const std::string& name, const std::string& value,
                      const std::string& origin) {
  const FieldRef* f = find_field(name);
  CEPE_CHECK(f, origin << ": unknown config field '" << name << "'");
  switch (f->info.kind) {
    case FieldKind::Int:
    case FieldKind::Int64: {
      size_t used = 0;
      long long v = 0;
      try {
        v = std::stoll(value, &used);
      } catch (const std::exception&) {
        used = 0;
      }
      CEPE_CHECK(used == value.size() && !value.empty(),
                 origin << ": expected an integer, got " << quoted_input(value));
      set_integer(*f, config, v, origin);
      break;
    }
    case FieldKind::Bool:
      if (value == "true" || value == "on" || value == "1" || value == "yes") {
        *f->bool_ptr(config) = true;
      } else if (value == "false" || value == "off" || value == "0" || value == "no") {
        *f->bool_ptr(config) = false;
      } else {
        CEPE_THROW(origin << ": expected on or off, got " << quoted_input(value));
      }
      break;
    case FieldKind::String:
      *f->str_ptr(config) = value;
      break;
    case FieldKind::StringList:
      f->list_ptr(config)->push_back(value);
      break;
  }
}

void validate_server_config(const ServerConfig& c) {
  CEPE_CHECK(!c.model.empty(), "config: 'model' (--model) is required");
  CEPE_CHECK(!c.host.empty(), "config: 'host' is empty");
  CEPE_CHECK(c.default_k <= c.max_k,
             "config: 'default_k' (" << c.default_k << ") is above 'max_k' (" << c.max_k << ")");
  CEPE_CHECK(c.default_max_new_tokens <= c.max_new_tokens, "config: 'default_max_new_tokens' ("
                                                               << c.default_max_new_tokens
                                                               << ") is above 'max_new_tokens' ("
                                                               << c.max_new_tokens << ")");
  CEPE_CHECK(c.device == "cpu" || c.device == "cuda",
             "config: 'device' must be cpu or cuda, got " << quoted_input(c.device));
  parse_cross_attention_mode(c.cross_attention, parse_device(c.device),
                             "config: 'cross_attention'");
  parse_kv_cache_type(c.kv_cache, parse_device(c.device),
                      parse_weight_kind(c.weights, "config: 'weights'"), "config: 'kv_cache'");
  parse_stored_weights(c.stored_weights, parse_device(c.device),
                       parse_weight_kind(c.weights, "config: 'weights'"),
                       "config: 'stored_weights'");
  CEPE_CHECK(
      parse_weight_kind(c.weights, "config: 'weights'") == WeightKind::Stored || c.device == "cpu",
      "config: 'weights' '" << c.weights << "' needs device cpu (got '" << c.device
                            << "'); use stored on cuda");
  for (const auto& k : c.api_keys) CEPE_CHECK(!k.empty(), "config: 'api_keys' holds an empty key");
  for (const auto& o : c.cors_origins)
    CEPE_CHECK(!o.empty(), "config: 'cors_origins' holds an empty origin");
  for (const auto& s : c.bm25_shards)
    CEPE_CHECK(!s.empty(), "config: 'bm25_shards' holds an empty entry");
  CEPE_CHECK(c.bm25_shards.empty() || !c.index.empty(),
             "config: 'bm25_shards' needs 'index' (the passages come from the index's store)");
  // The prompt builder checks the templates; building one here reports them at startup.
  try {
    qa::PromptBuilder check(c.prompt);
  } catch (const Error& e) {
    CEPE_THROW("config: 'prompt': " << e.message());
  }
}

std::vector<std::string> read_api_key_file(const std::string& path) {
  std::ifstream in(path);
  CEPE_CHECK(in, "config: 'api_key_file': cannot open " << path);
  std::vector<std::string> keys;
  std::string line;
  while (std::getline(in, line)) {
    const size_t b = line.find_first_not_of(" \t\r");
    if (b == std::string::npos || line[b] == '#') continue;
    const size_t e = line.find_last_not_of(" \t\r");
    keys.push_back(line.substr(b, e - b + 1));
  }
  CEPE_CHECK(!in.bad(), "config: 'api_key_file': cannot read " << path);
  // A key file with every key revoked (or only comments) must not silently turn authentication
  // off: the operator asked for keys, so serving open would fail open.
  CEPE_CHECK(!keys.empty(), "config: 'api_key_file': "
                                << path
                                << " holds no keys (only blank or '#' lines); refusing to serve "
                                   "without authentication");
  return keys;
}

void load_api_key_file(ServerConfig& config) {
  if (config.api_key_file.empty()) return;
  for (auto& key : read_api_key_file(config.api_key_file))
    config.api_keys.push_back(std::move(key));
}

std::string server_config_to_json(const ServerConfig& config) {
  ServerConfig c = config;  // accessors need a mutable struct; the caller's stays untouched
  rapidjson::StringBuffer sb;
  rapidjson::PrettyWriter<rapidjson::StringBuffer> w(sb);
  w.StartObject();
  bool in_prompt = false;
  for (const auto& f : field_refs()) {
    std::string name = f.info.name;
    const bool is_prompt = name.rfind("prompt.", 0) == 0;
    if (is_prompt && !in_prompt) {
      w.Key("prompt");
      w.StartObject();
      in_prompt = true;
    } else if (!is_prompt && in_prompt) {
      w.EndObject();
      in_prompt = false;
    }
    if (is_prompt) name = name.substr(7);
    w.Key(name.c_str());
    switch (f.info.kind) {
      case FieldKind::Int:
        w.Int(*f.int_ptr(c));
        break;
      case FieldKind::Int64:
        w.Int64(*f.i64_ptr(c));
        break;
      case FieldKind::Bool:
        w.Bool(*f.bool_ptr(c));
        break;
      case FieldKind::String:
        w.String(f.str_ptr(c)->c_str(), static_cast<rapidjson::SizeType>(f.str_ptr(c)->size()));
        break;
      case FieldKind::StringList:
        w.StartArray();
        for (const auto& s : *f.list_ptr(c)) {
          if (name == "api_keys")
            w.String("<redacted>");
          else
            w.String(s.c_str(), static_cast<rapidjson::SizeType>(s.size()));
        }
        w.EndArray();
        break;
    }
  }
  if (in_prompt) w.EndObject();
  w.EndObject();
  return sb.GetString();
}

}  // namespace cepe::config
