// Settings of `cepe serve`: one struct, loaded from a JSON file (config/server.json documents every
// default) and overridden field by field from command-line flags. Every error names the field.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "qa/prompt.h"

namespace cepe::config {

/// Everything the server needs to know; the defaults are the documented ones.
struct ServerConfig {
  // ---- network ----
  std::string host = "127.0.0.1";       ///< address to listen on ("0.0.0.0" for every interface)
  int port = 8080;                      ///< TCP port (0: any free port, reported in the log)
  int io_threads = 2;                   ///< threads running HTTP connections
  int retrieval_threads = 2;            ///< threads running retrieval and tokenisation
  int max_connections = 1024;           ///< open connections beyond this are closed at once
  int max_connections_per_client = 64;  ///< the same from one client IP address

  // ---- model and index ----
  std::string model;           ///< model directory (config.json, *.safetensors, tokenizer.model)
  std::string model_name;      ///< name reported in responses ("": the model directory's name)
  std::string device = "cpu";  ///< "cpu" or "cuda"
  int threads = 0;             ///< CPU compute threads (0: all cores)
  std::string weights = "stored";        ///< load-time weight format: stored|f32|bf16|f16|q8_0|q4_0
  std::string cross_attention = "auto";  ///< "cached", "absorbed" or "auto" (see CepeModel)
  std::string kv_cache = "auto";         ///< KV cache type: "f32", "f16" or "auto" (see CepeModel)
  std::string stored_weights =
      "auto";         ///< "auto" or "mapped" (cpu, weights stored; see --stored-weights)
  std::string index;  ///< index directory ("": callers must send their own passages)
  int nprobe = 0;     ///< FAISS IVF lists to visit (0: the index's default)
  int ef_search = 0;  ///< FAISS HNSW search depth (0: the index's default)
  /// BM25 shards searched as one database instead of the index's own (paths, or tcp:HOST:PORT of
  /// xapian-tcpsrv); passages still come from the index's store.
  std::vector<std::string> bm25_shards;
  /// Precomputed passage states (cepe index encode): "auto" (the index's store matching the
  /// model), "off", or a .ces file.
  std::string encoder_store = "auto";
  /// LRU cache of encoded passages when no store is used, in MiB (0: off).
  int encoder_cache_mb = 256;

  // ---- engine ----
  int max_batch = 8;     ///< sequences generated together (continuous batching)
  int max_queue = 64;    ///< admitted requests waiting for a batch slot; more get 429
  bool batching = true;  ///< false: one request at a time (for comparisons)
  /// encoder tokens encoded between two decode steps while streams run (0: a request whole)
  int encode_tokens_per_step = 1024;
  int retry_after_s = 1;  ///< Retry-After sent with 429

  // ---- request limits and defaults ----
  int64_t max_body_bytes = 1 << 20;  ///< larger request bodies get 413
  int max_header_bytes = 16384;      ///< larger request headers (or chunked trailers) get 431
  int max_k = 20;                    ///< largest `k` (and number of caller passages)
  int default_k = 5;                 ///< `k` when the request gives none
  int max_new_tokens = 256;          ///< largest `max_new_tokens`
  int default_max_new_tokens = 25;   ///< `max_new_tokens` when the request gives none
  int max_question_chars = 2000;     ///< longest question, in Unicode code points
  int max_stop = 4;                  ///< most stop strings per request
  int max_stop_chars = 64;           ///< longest stop string, in bytes
  int max_json_depth = 16;           ///< deepest nesting of arrays/objects in a request body
  int max_logprobs = 20;             ///< most likely tokens listed per generated token (logprobs)
  int chunk_tokens = 256;            ///< one passage per encoder chunk, cut to this many tokens
  int max_prompt_tokens = 4096;      ///< decoder prompt cap; decoder passages are dropped to fit
  std::vector<std::string> default_stop = {"\n"};  ///< `stop` when the request gives none
  qa::PromptFormat prompt;                         ///< prompt templates (qa/prompt.h)

  // ---- timeouts (milliseconds) ----
  int request_timeout_ms = 60000;  ///< whole /ask deadline; past it generation stops (504)
  int header_timeout_ms = 10000;   ///< to receive a request header (also the keep-alive idle time)
  int body_timeout_ms = 30000;     ///< to receive a request body
  int write_timeout_ms = 30000;    ///< to send a response (or one streamed event)
  int shutdown_grace_ms = 30000;   ///< on SIGTERM, in-flight requests get this long to finish
  int ready_stall_ms = 30000;      ///< /readyz fails when the engine loop has not ticked this long

  // ---- access ----
  std::vector<std::string> api_keys;  ///< accepted keys ("Authorization: Bearer K" or "X-API-Key")
  std::string api_key_file;           ///< file with more keys, one a line ('#' comments)
  std::vector<std::string> cors_origins;  ///< origins allowed by CORS ("*": any)

  // ---- logging ----
  bool log_requests = true;  ///< one JSON line per request on stderr
};

/// Kinds of values a field holds.
enum class FieldKind { Int, Int64, Bool, String, StringList };

/// One settable field: its name in the JSON file (flags use it with '-' for '_'), kind and range.
struct FieldInfo {
  const char* name;    ///< JSON name; prompt templates are "prompt.<name>"
  FieldKind kind;      ///< value kind
  long long min, max;  ///< inclusive range of integers
  const char* help;    ///< one line for --help and the docs
};

/// Every field of ServerConfig in the order the docs list them.
const std::vector<FieldInfo>& server_config_fields();

/// Reads a JSON config file over the defaults; unknown fields, wrong types and out-of-range values
/// are errors naming the file and the field.
ServerConfig load_server_config(const std::filesystem::path& file);

/// Parses JSON config text over `config` (`origin` names the source in errors).
void apply_config_json(ServerConfig& config, const std::string& json, const std::string& origin);

/// Sets one field from its text form (a flag value): integers are range-checked, booleans are
/// true/false/on/off/1/0, lists are comma-free single values appended by the caller. Throws
/// cepe::Error naming `origin` (e.g. "--max-batch") when the value does not fit.
void set_config_field(ServerConfig& config, const std::string& name, const std::string& value,
                      const std::string& origin);

/// Checks relations between fields (defaults within maxima, a model given, ...).
void validate_server_config(const ServerConfig& config);

/// The keys of an API key file, one a line (blank lines and '#' lines skipped); throws
/// cepe::Error naming 'api_key_file' when it cannot be read or holds no key.
std::vector<std::string> read_api_key_file(const std::string& path);
/// Adds the keys of `config.api_key_file` to `config.api_keys` (read_api_key_file).
void load_api_key_file(ServerConfig& config);

/// The configuration as pretty JSON, API keys redacted (`cepe serve --print-config`, /v1/info).
std::string server_config_to_json(const ServerConfig& config);

}  // namespace cepe::config
