// The one QA pipeline: retrieve -> plan (the decoder prompt and the encoder chunks, qa/prompt.h)
// -> submit to the scheduler (qa/scheduler.h: continuous batching, cancellation, deadlines,
// metrics) -> stream tokens through the job's callbacks. `cepe qa` and `cepe ask` drive it
// synchronously through Pipeline::answer(); the server plans on its worker pool and submits the
// jobs to a scheduler running on its own thread.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "engine/generation.h"
#include "engine/models/cepe_llama.h"
#include "engine/tokenizer.h"
#include "qa/passage.h"
#include "qa/prompt.h"
#include "qa/scheduler.h"
#include "retriever/retriever.h"

namespace cepe::qa {

/// The paper's QA decoding: greedy, at most 25 new tokens, the answer ends at a newline.
SamplingOptions qa_sampling();

/// How a question and its passages become model inputs.
struct PlanOptions {
  int decoder_passages = 0;  ///< passages rendered into the decoder prompt; the rest are encoded
  int chunk_tokens = 256;    ///< one passage per encoder chunk, truncated to this many tokens
  int max_prompt_tokens = 4096;  ///< decoder prompt cap (the paper's); passages are dropped to fit
  PromptFormat format;           ///< prompt templates
};

/// Model inputs for one question.
struct Plan {
  std::vector<int32_t> prompt_ids;           ///< decoder prompt (BOS first)
  std::vector<std::vector<int32_t>> chunks;  ///< encoder chunks, one per passage
  std::vector<std::string> chunk_ids;        ///< passage id of each chunk (store/cache lookups)
  int decoder_passages = 0;                  ///< passages that went into the prompt
  /// Indices (into plan()'s `passages`) of those that reached the prompt or an encoder chunk,
  /// in order: what the answer is conditioned on.
  std::vector<size_t> used_passages;
};

/// Builds plans: the first passages in the decoder prompt, the rest one per encoder chunk.
class Planner {
 public:
  /// Checks the options; a model without an encoder (per `config`) gets every passage in its
  /// prompt. The tokenizer must outlive the planner.
  Planner(const ModelConfig& config, const Tokenizer& tokenizer, PlanOptions options);
  /// The plan for `question` with `passages` in rank order; throws cepe::Error when the question
  /// is empty or alone longer than the prompt cap.
  Plan plan(std::string_view question, const std::vector<Passage>& passages) const;
  /// The options in use.
  const PlanOptions& options() const { return options_; }

 private:
  bool has_encoder_;
  const Tokenizer& tokenizer_;
  PlanOptions options_;
  PromptBuilder prompt_;
};

/// Retrieved hits as passages, in rank order.
std::vector<Passage> passages_from_hits(const std::vector<retriever::Hit>& hits);

/// A scheduler job for `plan` (its prompt and chunks are moved in).
std::shared_ptr<Job> make_job(Plan plan, const SamplingOptions& sampling,
                              Clock::time_point deadline = Clock::time_point::max());

/// A generated answer.
struct Answer {
  std::string text;              ///< the answer, whitespace-trimmed
  std::string finish_reason;     ///< "length", "eos", "stop", ...
  int64_t prompt_tokens = 0;     ///< decoder prompt tokens
  int64_t encoder_tokens = 0;    ///< encoder tokens
  int64_t generated_tokens = 0;  ///< tokens generated
  double first_token_ms = -1;    ///< from leaving the queue (before encoding) to the first token
  /// Log-probability of the generated tokens under the model (their sum: the answer's, a
  /// confidence score); nullopt unless the sampling options record log-probabilities.
  std::optional<double> logprob;
};

/// Retrieval, planning and scheduling over one model, driven on the calling thread.
class Pipeline {
 public:
  /// Binds the model, tokenizer and (optional: plans may bring their own passages) retriever,
  /// which must outlive the pipeline.
  Pipeline(CepeModel& model, const Tokenizer& tokenizer, const retriever::Retriever* retriever,
           PlanOptions plan_options, SamplingOptions sampling, SchedulerOptions scheduler_options);

  /// The top passages of each question (one batched search); throws without a retriever.
  std::vector<std::vector<Passage>> retrieve(const std::vector<std::string>& questions,
                                             const retriever::SearchOptions& search) const;
  /// The plan for one question (see Planner::plan).
  Plan plan(std::string_view question, const std::vector<Passage>& passages) const;
  /// Generates the answers of `plans` with continuous batching and calls `on_done(i, answer)` as
  /// each finishes (completion order). When `stop` returns true the unfinished ones are dropped.
  /// Throws cepe::Error with the model's message when a generation fails.
  void answer(std::vector<Plan> plans, const std::function<void(size_t, const Answer&)>& on_done,
              const std::function<bool()>& stop = {});
  /// The scheduler the answers are generated on.
  Scheduler& scheduler() { return scheduler_; }

 private:
  const retriever::Retriever* retriever_;
  Planner planner_;
  SamplingOptions sampling_;
  Scheduler scheduler_;
};

}  // namespace cepe::qa
