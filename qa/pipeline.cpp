#include "qa/pipeline.h"

#include <algorithm>

#include "common/error.h"

namespace cepe::qa {
namespace {

std::string trim(const std::string& s) {
  const char* ws = " \t\r\n";
  const size_t b = s.find_first_not_of(ws);
  if (b == std::string::npos) return "";
  return s.substr(b, s.find_last_not_of(ws) - b + 1);
}

}  // namespace

SamplingOptions qa_sampling() {
  SamplingOptions s;
  s.max_new_tokens = 25;
  s.stop = {"\n"};
  return s;
}

Planner::Planner(const ModelConfig& config, const Tokenizer& tokenizer, PlanOptions options)
    : has_encoder_(config.is_cepe()),
      tokenizer_(tokenizer),
      options_(std::move(options)),
      prompt_(options_.format) {
  CEPE_CHECK(options_.decoder_passages >= 0, "decoder_passages must be >= 0");
  CEPE_CHECK(options_.chunk_tokens > 0, "chunk_tokens must be > 0");
  CEPE_CHECK(options_.max_prompt_tokens > 0, "max_prompt_tokens must be > 0");
}

Plan Planner::plan(std::string_view question, const std::vector<Passage>& passages) const {
  CEPE_CHECK(!question.empty(), "the question is empty");
  Plan plan;
  // A plain decoder cannot take encoder chunks: every passage goes into its prompt.
  const size_t in_decoder =
      has_encoder_ ? std::min(passages.size(), static_cast<size_t>(options_.decoder_passages))
                   : passages.size();
  // Keep the most decoder passages whose prompt fits the cap. Re-tokenising the whole prompt after
  // each drop would cost O(passages x prompt); instead each passage is tokenised once on its own
  // (stopping once the running estimate is clearly over the cap), the estimate picks a count,
  // and only prompts near the cap are tokenised in full to settle it. Pieces tokenised alone can
  // differ from the joined prompt by a token or two at each seam, hence the margin and the final
  // exact search (which finds the same count as dropping one passage at a time).
  auto prompt_with = [&](size_t m) {
    const std::vector<Passage> first(passages.begin(), passages.begin() + m);
    return tokenizer_.encode(prompt_.render(question, first), true);
  };
  const int cap = options_.max_prompt_tokens;
  const std::vector<int32_t> bare = prompt_with(0);
  CEPE_CHECK(
      static_cast<int>(bare.size()) <= cap,
      "the question alone is " << bare.size() << " tokens, over the prompt limit of " << cap);
  constexpr int64_t kSeamTokens = 4;  // per passage, either way
  // estimates[m - 1]: the estimated prompt length with the first m passages.
  std::vector<int64_t> estimates;
  int64_t estimate = static_cast<int64_t>(bare.size());
  size_t fitted = 0;
  for (size_t i = 0; i < in_decoder; ++i) {
    std::string piece = prompt_.render_passage(passages[i], i);
    if (i > 0) piece = prompt_.format().passage_separator + piece;
    estimate += static_cast<int64_t>(tokenizer_.encode(piece, false).size());
    estimates.push_back(estimate);
    if (estimate - kSeamTokens * static_cast<int64_t>(i + 1) > cap) break;
    if (estimate <= cap) fitted = i + 1;
  }
  plan.prompt_ids = fitted == 0 ? bare : prompt_with(fitted);
  while (fitted > 0 && static_cast<int>(plan.prompt_ids.size()) > cap) {
    --fitted;
    plan.prompt_ids = fitted == 0 ? bare : prompt_with(fitted);
  }
  // One more passage may still fit where the estimate was pessimistic; one that is estimated
  // clearly over the cap is never tokenised in full.
  while (fitted < estimates.size() &&
         estimates[fitted] - kSeamTokens * static_cast<int64_t>(fitted + 1) <= cap) {
    std::vector<int32_t> more = prompt_with(fitted + 1);
    if (static_cast<int>(more.size()) > cap) break;
    plan.prompt_ids = std::move(more);
    ++fitted;
  }
  plan.decoder_passages = static_cast<int>(fitted);
  for (size_t i = 0; i < fitted; ++i) plan.used_passages.push_back(i);
  for (size_t i = in_decoder; i < passages.size(); ++i) {
    // The same tokens `cepe index encode` stores, so stored states are found by their hash.
    std::vector<int32_t> ids = encoder_chunk_ids(tokenizer_, passages[i], options_.chunk_tokens);
    if (ids.empty()) continue;
    plan.chunks.push_back(std::move(ids));
    plan.chunk_ids.push_back(passages[i].id);
    plan.used_passages.push_back(i);
  }
  return plan;
}

std::vector<Passage> passages_from_hits(const std::vector<retriever::Hit>& hits) {
  std::vector<Passage> out;
  out.reserve(hits.size());
  for (const auto& h : hits) out.push_back({h.id, h.title, h.text, h.score});
  return out;
}

std::shared_ptr<Job> make_job(Plan plan, const SamplingOptions& sampling,
                              Clock::time_point deadline) {
  auto job = std::make_shared<Job>();
  job->prompt_ids = std::move(plan.prompt_ids);
  job->chunks = std::move(plan.chunks);
  job->chunk_ids = std::move(plan.chunk_ids);
  job->sampling = sampling;
  job->deadline = deadline;
  return job;
}

Pipeline::Pipeline(CepeModel& model, const Tokenizer& tokenizer,
                   const retriever::Retriever* retriever, PlanOptions plan_options,
                   SamplingOptions sampling, SchedulerOptions scheduler_options)
    : retriever_(retriever),
      planner_(model.config(), tokenizer, std::move(plan_options)),
      sampling_(std::move(sampling)),
      scheduler_(model, tokenizer, scheduler_options) {
  validate(sampling_);
}

std::vector<std::vector<Passage>> Pipeline::retrieve(const std::vector<std::string>& questions,
                                                     const retriever::SearchOptions& search) const {
  CEPE_CHECK(retriever_, "no index: the questions need passages to be retrieved");
  std::vector<std::vector<Passage>> out;
  for (const auto& hits : retriever_->search_batch(questions, search))
    out.push_back(passages_from_hits(hits));
  return out;
}

Plan Pipeline::plan(std::string_view question, const std::vector<Passage>& passages) const {
  return planner_.plan(question, passages);
}

void Pipeline::answer(std::vector<Plan> plans,
                      const std::function<void(size_t, const Answer&)>& on_done,
                      const std::function<bool()>& stop) {
  std::exception_ptr failure;
  for (size_t i = 0; i < plans.size(); ++i) {
    CEPE_CHECK(scheduler_.try_reserve(), "the scheduler's queue holds "
                                             << scheduler_.options().max_queue
                                             << " jobs; cannot queue " << plans.size());
    auto job = make_job(std::move(plans[i]), sampling_);
    const bool logprobs = sampling_.logprobs >= 0;
    job->on_done = [i, logprobs, &on_done, &failure](JobResult r) {
      if (r.outcome == JobOutcome::Failed) {
        if (!failure) failure = r.exception;
        return;
      }
      if (r.outcome != JobOutcome::Finished) return;  // dropped by `stop`
      Answer a;
      a.text = trim(r.text);
      a.finish_reason = r.finish_reason;
      a.prompt_tokens = r.prompt_tokens;
      a.encoder_tokens = r.encoder_tokens;
      a.generated_tokens = r.completion_tokens;
      a.first_token_ms = r.first_token_ms;
      if (logprobs) {
        double sum = 0;
        for (const auto& lp : r.logprobs) sum += lp.logprob;
        a.logprob = sum;
      }
      on_done(i, a);
    };
    scheduler_.submit(std::move(job));
  }
  scheduler_.drain([&] { return failure || (stop && stop()); });
  // The model's own error (file and line where it was raised), as a direct call would throw it.
  if (failure) std::rethrow_exception(failure);
}

}  // namespace cepe::qa
