// The /ask request body: strict parsing (unknown fields, wrong types and values over the limits are
// 400s that name the field) and the JSON error body every failure is answered with.
#pragma once

#include "common/utf8.h"  // utf8_length: limits count code points

#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include "qa/passage.h"

namespace cepe::server {

/// A failure answered with an HTTP status and `{"error": {"code", "message"}}`.
class ApiError : public std::runtime_error {
 public:
  /// `code` is a stable machine-readable word; `message` is for people; `param` names the request
  /// field at fault ("" when none), for the OpenAI error shape.
  ApiError(int status, std::string code, const std::string& message, std::string param = "")
      : std::runtime_error(message),
        status_(status),
        code_(std::move(code)),
        param_(std::move(param)) {}
  /// HTTP status.
  int status() const { return status_; }
  /// Stable error code ("invalid_field", "queue_full", ...).
  const std::string& code() const { return code_; }
  /// The request field at fault, "" when none.
  const std::string& param() const { return param_; }

 private:
  int status_;
  std::string code_;
  std::string param_;
};

/// Limits and defaults applied while parsing (from the server config).
struct AskLimits {
  int max_k = 20;                                  ///< largest k and number of caller passages
  int default_k = 5;                               ///< k when absent
  int max_new_tokens = 256;                        ///< largest max_new_tokens
  int default_max_new_tokens = 25;                 ///< max_new_tokens when absent
  int max_question_chars = 2000;                   ///< longest question (code points)
  int max_stop = 4;                                ///< most stop strings
  int max_stop_chars = 64;                         ///< longest stop string (bytes)
  int max_json_depth = 16;                         ///< deepest nesting
  int max_logprobs = 20;                           ///< most alternatives listed per token
  std::vector<std::string> default_stop = {"\n"};  ///< stop strings when absent
};

/// A parsed and checked /ask request; absent options already hold their defaults.
struct AskRequest {
  std::string question;           ///< the question (non-empty, valid UTF-8)
  int k = 5;                      ///< passages to retrieve
  int decoder_passages = 0;       ///< of those, how many go into the decoder prompt
  int max_new_tokens = 25;        ///< generation limit
  float temperature = 0.0f;       ///< 0: greedy
  float top_p = 1.0f;             ///< nucleus mass
  int top_k = 0;                  ///< 0: all tokens
  uint64_t seed = 0;              ///< sampling seed
  std::vector<std::string> stop;  ///< stop strings
  bool stream = false;            ///< answer with Server-Sent Events
  /// -1: no log-probabilities; n >= 0: each generated token's, with the n most likely tokens
  int logprobs = -1;
  std::optional<std::vector<qa::Passage>> passages;  ///< caller passages replacing retrieval
  int nprobe = -1;            ///< FAISS IVF lists to visit (-1: the server's setting)
  int ef_search = -1;         ///< FAISS HNSW search depth (-1: the server's setting)
  double bm25_weight = 1.0;   ///< hybrid indexes: weight of the BM25 ranking in rank fusion
  double dense_weight = 1.0;  ///< hybrid indexes: weight of the dense ranking in rank fusion
  int rrf_k = 60;             ///< hybrid indexes: the reciprocal rank fusion constant
};

/// Parses a request body; throws ApiError (400) naming the offending field.
AskRequest parse_ask_request(std::string_view body, const AskLimits& limits);

/// Parses a POST /search body: `question`, `k` (1 ... max_k) and the retrieval settings of /ask,
/// nothing else (generation fields are unknown fields here); throws ApiError (400) naming the
/// offending field.
AskRequest parse_search_request(std::string_view body, const AskLimits& limits);

/// `{"error": {"code": ..., "message": ...}}`.
std::string error_json(const std::string& code, const std::string& message);

/// Escapes `text` as a JSON string literal (quotes included).
std::string json_quote(std::string_view text);

}  // namespace cepe::server
