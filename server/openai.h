// The OpenAI-compatible API (POST /v1/chat/completions, POST /v1/completions, GET /v1/models):
// request parsing onto the /ask request and the JSON bodies and stream chunks of the answers. No
// Beast here: the generating routes' handler (server/generate.cpp) calls these and the connection
// writes the bytes.
//
// The question is the last user message (chat) or the prompt (completions); retrieval, limits and
// sampling are those of /ask. Extension fields: k, decoder_passages, passages, top_k, nprobe,
// ef_search in the request; `passages` (what the answer was conditioned on) in the response.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "engine/generation.h"
#include "engine/tokenizer.h"
#include "retriever/retriever.h"
#include "server/request.h"

namespace cepe::server {

/// Which API a generation request came through.
enum class Api {
  Ask,         ///< POST /ask
  Chat,        ///< POST /v1/chat/completions
  Completion,  ///< POST /v1/completions
};

/// A parsed OpenAI request: the /ask request it maps to plus what only OpenAI has.
struct OpenAiRequest {
  AskRequest ask;              ///< question, k, sampling, stream, caller passages
  bool include_usage = false;  ///< stream_options.include_usage: a last chunk with usage
};

/// Parses a chat (`api` Chat) or completions (`api` Completion) body; throws ApiError (400) naming
/// the field (ApiError::param() holds it).
OpenAiRequest parse_openai_request(Api api, std::string_view body, const AskLimits& limits);

/// `{"error": {"message", "type", "param", "code"}}`, OpenAI's error shape; `type` follows the
/// status (invalid_request_error, authentication_error, rate_limit_error, server_error).
std::string openai_error_json(int status, const std::string& code, const std::string& message,
                              const std::string& param = "");

/// OpenAI's finish_reason for ours: "eos" and "stop" are "stop", "length" stays, the others
/// ("cancelled", "deadline", "error") are kept as they are.
std::string openai_finish_reason(const std::string& ours);

/// What every response and chunk of one request repeats.
struct OpenAiIds {
  Api api = Api::Chat;  ///< chat or completion
  std::string id;       ///< "chatcmpl-..." or "cmpl-..."
  int64_t created = 0;  ///< Unix seconds
  std::string model;    ///< the served model's name
};

/// Token counts for `usage`.
struct OpenAiUsage {
  int64_t prompt_tokens = 0;      ///< decoder prompt tokens
  int64_t completion_tokens = 0;  ///< generated tokens
  int64_t encoder_tokens = 0;     ///< extension: encoder tokens cross-attended to
};

/// The passages as the JSON array reported in `passages` (and by /ask).
std::string passages_json(const std::vector<retriever::Hit>& hits);

/// Log-probabilities as chat completions and /ask list them: `[{"token", "logprob", "bytes",
/// "top_logprobs": [{"token", "logprob", "bytes"}, ...]}, ...]`, one entry per generated token;
/// `token` is valid UTF-8 (a lone byte of a character shows as U+FFFD), `bytes` exact.
std::string logprob_content_json(const std::vector<TokenLogprob>& logprobs,
                                 const Tokenizer& tokenizer);

/// The `logprobs` value of an OpenAI choice: chat's `{"content": [...], "refusal": null}`, or
/// completions' `{"tokens", "token_logprobs", "top_logprobs", "text_offset"}`, whose
/// top_logprobs maps the most likely tokens (and the chosen one) to their log-probabilities.
/// `text_offset` is the byte offset of the first token in the generated text; it is advanced
/// past the listed tokens, so a stream's chunks continue where the last one ended.
std::string openai_logprobs_json(Api api, const std::vector<TokenLogprob>& logprobs,
                                 const Tokenizer& tokenizer, int64_t& text_offset);

/// The whole (non-streamed) response; `logprobs` is the choice's logprobs value as JSON (""
/// for null).
std::string openai_response_json(const OpenAiIds& ids, const std::string& text,
                                 const std::string& finish_reason, const OpenAiUsage& usage,
                                 const std::string& passages, const std::string& logprobs = "");

/// One stream chunk: `text` as the delta; `first` adds the assistant role and `passages` (chat)
/// or `passages` alone (completion); a set `finish_reason` ends the choice; `logprobs` is the
/// chunk's logprobs value as JSON ("" for null).
std::string openai_chunk_json(const OpenAiIds& ids, const std::string& text, bool first,
                              const std::optional<std::string>& finish_reason,
                              const std::string& passages = "", const std::string& logprobs = "");

/// The usage chunk sent after the last choice chunk when stream_options.include_usage is set.
std::string openai_usage_chunk_json(const OpenAiIds& ids, const OpenAiUsage& usage);

/// GET /v1/models: the one served model.
std::string openai_models_json(const std::string& model, int64_t created);

}  // namespace cepe::server
