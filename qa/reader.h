// The reader: turns a question and its passages into a CEPE request (the first passages in the
// decoder prompt, the rest one per encoder chunk) and answers many requests with continuous
// batching — sequences step together and a new one joins as soon as another finishes.
#pragma once

#include <atomic>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include "engine/cepe_model.h"
#include "engine/generation.h"
#include "engine/tokenizer.h"
#include "qa/encoder_states.h"
#include "qa/passage.h"
#include "qa/prompt.h"

namespace cepe::qa {

/// How questions become model inputs and how answers are generated.
struct ReaderOptions {
  int decoder_passages = 0;  ///< passages rendered into the decoder prompt; the rest are encoded
  int chunk_tokens = 256;    ///< one passage per encoder chunk, truncated to this many tokens
  int max_prompt_tokens = 4096;  ///< decoder prompt cap (the paper's); passages are dropped to fit
  SamplingOptions sampling = default_sampling();  ///< greedy, 25 tokens, stop at a newline
  PromptFormat format;                            ///< prompt templates

  /// The paper's QA decoding: greedy, at most 25 new tokens, the answer ends at a newline.
  static SamplingOptions default_sampling() {
    SamplingOptions s;
    s.max_new_tokens = 25;
    s.stop = {"\n"};
    return s;
  }
};

/// Model inputs for one question.
struct ReaderRequest {
  std::vector<int32_t> prompt_ids;           ///< decoder prompt (BOS first)
  std::vector<std::vector<int32_t>> chunks;  ///< encoder chunks, one per passage
  std::vector<std::string> chunk_ids;        ///< passage id of each chunk (store/cache lookups)
  int decoder_passages = 0;                  ///< passages that went into the prompt
};

/// A generated answer.
struct ReaderAnswer {
  std::string text;                          ///< the answer, whitespace-trimmed
  FinishReason finish = FinishReason::None;  ///< why generation stopped
  int64_t prompt_tokens = 0;                 ///< decoder prompt tokens
  int64_t encoder_tokens = 0;                ///< encoder tokens
  int64_t generated_tokens = 0;              ///< tokens generated
  double first_token_ms = 0;  ///< from joining the batch (before encoding) to the first token
};

/// Prepares and answers QA requests on one model.
class Reader {
 public:
  /// Binds the model and tokenizer; a model without an encoder gets every passage in its prompt.
  Reader(CepeModel& model, const Tokenizer& tokenizer, ReaderOptions options);

  /// Builds the request for `question` with `passages` in rank order.
  ReaderRequest prepare(std::string_view question, const std::vector<Passage>& passages) const;

  /// Answers `requests` with at most `max_batch` sequences in flight, calling `on_done(i, answer)`
  /// as each finishes (completion order). Stops early, dropping unfinished ones, when `stop` is
  /// set.
  void run(const std::vector<ReaderRequest>& requests, int max_batch,
           const std::function<void(size_t, const ReaderAnswer&)>& on_done,
           const std::atomic<bool>* stop = nullptr);

  /// The options in use.
  const ReaderOptions& options() const { return options_; }
  /// Where passages' encoder states come from (set a store or cache on it before run()).
  EncoderStates& encoder_states() { return encoder_states_; }

 private:
  CepeModel& model_;
  const Tokenizer& tokenizer_;
  ReaderOptions options_;
  PromptBuilder prompt_;
  EncoderStates encoder_states_;
};

}  // namespace cepe::qa
