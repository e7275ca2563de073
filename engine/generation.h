// Token generation on top of CepeModel: sampling, stop conditions, streaming text, and a step
// function that advances many sequences together (the primitive continuous batching is built on).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "engine/models/cepe_llama.h"
#include "engine/tokenizer.h"

namespace cepe {

/// How the next token is chosen and when generation stops.
struct SamplingOptions {
  float temperature = 0.0f;       ///< 0 = greedy (argmax); otherwise logits are divided by it
  int top_k = 0;                  ///< keep the k most likely tokens (0 = all)
  float top_p = 1.0f;             ///< keep the smallest set whose probability reaches top_p
  uint64_t seed = 0;              ///< random seed, so sampled output is reproducible
  int max_new_tokens = 128;       ///< hard limit on generated tokens
  std::vector<std::string> stop;  ///< generation ends before the first occurrence of any of these
  bool stop_at_eos = true;        ///< end at the model's EOS token(s)
  std::vector<int32_t> stop_token_ids;  ///< further ids that end generation (not emitted)
  /// -1: no log-probabilities; n >= 0: record each generated token's log-probability and the n
  /// most likely tokens at its step (OpenAI's logprobs / top_logprobs).
  int logprobs = -1;
};

/// Log-probability of one generated token and of the most likely tokens at its step, under the
/// model's distribution (log-softmax of the raw logits: before temperature, top-k and top-p, so
/// the figures do not depend on how the token was sampled).
struct TokenLogprob {
  int32_t id = 0;                              ///< the generated token
  float logprob = 0.0f;                        ///< its log-probability
  std::vector<std::pair<int32_t, float>> top;  ///< most likely first (ties: lower id first)
};

/// The log-probability of `id` and the `top` most likely tokens of `vocab` logits. The
/// normaliser is a float sum of e^x over the vocabulary: each figure is within ~n·2^-24 (at
/// worst; ~√n·2^-24 typically) of the exact log-softmax, n the vocabulary size over the 8 or 16
/// lanes summing it.
TokenLogprob token_logprob(const float* logits, int vocab, int32_t id, int top);

/// Checks sampling options; the error names the offending field.
void validate(const SamplingOptions& options);

/// Why a sequence stopped.
enum class FinishReason { None, Length, Eos, Stop, Cancelled };

/// "length", "eos", "stop", "cancelled" ("" while running).
const char* finish_reason_name(FinishReason reason);

/// Chooses tokens from logits: greedy, or temperature / top-k / top-p sampling (in that order,
/// as HuggingFace's warpers apply them) with a seeded generator.
class Sampler {
 public:
  /// A sampler for one sequence.
  explicit Sampler(const SamplingOptions& options);
  /// Picks a token id from `vocab` logits.
  int32_t sample(const float* logits, int vocab);

 private:
  SamplingOptions options_;
  std::mt19937_64 rng_;
  std::vector<std::pair<float, int32_t>> candidates_;
};

/// Finds stop strings in streamed text and holds back any tail that could still become one.
class StopMatcher {
 public:
  /// Watches for `stops` (empty strings are ignored).
  explicit StopMatcher(std::vector<std::string> stops);
  /// Appends text; returns what can be emitted now. Sets stopped() when a stop string appears
  /// (the stop string and everything after it are dropped).
  std::string push(const std::string& text);
  /// Emits whatever is still held back (call when generation ends for another reason).
  std::string flush();
  /// True once a stop string was seen.
  bool stopped() const { return stopped_; }

 private:
  std::vector<std::string> stops_;
  std::string pending_;
  bool stopped_ = false;
};

/// One sequence being generated: its prompt, encoder context, cache, sampler and streamed text.
class Sequence {
 public:
  /// Prepares a sequence; the context (possibly empty) is attached to its decoder state. Without
  /// a tokenizer only token ids are produced (no text, no stop strings).
  Sequence(CepeModel& model, const Tokenizer* tokenizer, std::vector<int32_t> prompt_ids,
           const EncodedContext& context, const SamplingOptions& options);

  /// True when generation has ended.
  bool finished() const { return finish_ != FinishReason::None; }
  /// Why it ended (None while running).
  FinishReason finish_reason() const { return finish_; }
  /// Ends the sequence now (client gone, deadline passed).
  void cancel();
  /// Text completed since the last call (whole UTF-8 characters, stop strings held back).
  std::string take_text();
  /// All generated text (without a stop string).
  const std::string& text() const { return text_; }
  /// Generated token ids (EOS excluded).
  const std::vector<int32_t>& tokens() const { return generated_; }
  /// Log-probabilities of the generated tokens, one per entry of tokens() (empty unless
  /// SamplingOptions::logprobs >= 0).
  const std::vector<TokenLogprob>& logprobs() const { return logprobs_; }
  /// Log-probabilities added since the last call, as take_text() is for text.
  std::vector<TokenLogprob> take_logprobs();
  /// Prompt length in tokens.
  int64_t prompt_tokens() const { return static_cast<int64_t>(prompt_.size()); }
  /// Encoder tokens cross-attended to.
  int64_t encoder_tokens() const { return state_->encoder_tokens(); }
  /// Bytes the sequence holds between steps (KV cache and what cross-attention reads).
  size_t cache_bytes() const { return state_->cache_bytes(); }
  /// Of cache_bytes, the encoder states it holds (absorbed cross-attention; none when they are
  /// read in place from a mapped store).
  size_t encoder_state_bytes() const { return state_->encoder_state_bytes(); }
  /// True until the prompt has been run (the next step is a prefill).
  bool needs_prefill() const { return state_->length() == 0; }
  /// Milliseconds spent in the prefill step and in decode steps.
  double prefill_ms = 0.0, decode_ms = 0.0;

 private:
  friend void step_sequences(CepeModel&, const std::vector<Sequence*>&);
  void accept(const float* logits, int vocab);

  CepeModel& model_;
  std::vector<int32_t> prompt_;
  SamplingOptions options_;
  std::unique_ptr<DecoderState> state_;
  Sampler sampler_;
  StopMatcher stop_;
  std::optional<StreamDecoder> decoder_;
  std::vector<int32_t> generated_;
  std::vector<TokenLogprob> logprobs_;
  size_t logprobs_taken_ = 0;
  std::string text_, unread_;
  FinishReason finish_ = FinishReason::None;
};

/// Advances every unfinished sequence by one token in a single batched forward pass: sequences
/// that have not started run their whole prompt, the others their last token.
void step_sequences(CepeModel& model, const std::vector<Sequence*>& sequences);

/// Result of a whole generation.
struct GenerationResult {
  std::string text;                                     ///< generated text
  std::vector<int32_t> tokens;                          ///< generated ids
  std::vector<TokenLogprob> logprobs;                   ///< per generated id, when asked for
  FinishReason finish = FinishReason::None;             ///< why it stopped
  int64_t prompt_tokens = 0;                            ///< decoder prompt length
  int64_t encoder_tokens = 0;                           ///< encoder tokens
  double encode_ms = 0, prefill_ms = 0, decode_ms = 0;  ///< time per phase
};

/// Encodes `context_chunks`, then generates until a stop condition; `on_text` receives streamed
/// text and may return false to cancel.
GenerationResult generate(CepeModel& model, const Tokenizer& tokenizer,
                          const std::vector<int32_t>& prompt_ids,
                          const std::vector<std::vector<int32_t>>& context_chunks,
                          const SamplingOptions& options,
                          const std::function<bool(const std::string&)>& on_text = {});

}  // namespace cepe
