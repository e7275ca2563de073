// The QA scheduler (qa/scheduler.h): encoding in slices between decode steps gives the answers of
// encoding whole (and of the engine's one-shot generate()), and a running stream keeps receiving
// tokens while a large request is still being encoded.
#include <gtest/gtest.h>

#include <atomic>
#include <cmath>
#include <condition_variable>
#include <mutex>
#include <numeric>
#include <random>
#include <thread>

#include "engine/backend.h"
#include "engine/random_model.h"
#include "qa/pipeline.h"
#include "qa/scheduler.h"
#include "test_util.h"

namespace cepe {
namespace {

namespace fs = std::filesystem;

struct Loaded {
  std::unique_ptr<Backend> backend;
  std::unique_ptr<CepeModel> model;
  std::unique_ptr<Tokenizer> tokenizer;
};

// A tiny random CEPE model with the shared llama2 tokenizer's vocabulary.
Loaded load_tiny(const fs::path& tokenizer_path) {
  Loaded l;
  l.tokenizer = std::make_unique<Tokenizer>(tokenizer_path);
  RandomModelSpec spec = random_model_preset("tiny");
  spec.vocab_size = l.tokenizer->vocab_size();
  const fs::path dir = test::temp_dir("qa-scheduler") / "model";
  write_random_model(spec, dir);
  l.backend = make_backend(Device::CPU);
  l.model = CepeModel::load(dir, *l.backend);
  return l;
}

std::vector<int32_t> random_ids(std::mt19937& rng, int n) {
  std::uniform_int_distribution<int32_t> pick(3, 31999);
  std::vector<int32_t> ids(n);
  for (auto& id : ids) id = pick(rng);
  return ids;
}

struct Request {
  std::vector<int32_t> prompt;
  std::vector<std::vector<int32_t>> chunks;
};

// Requests with chunks of unequal lengths (so a request's rotary length is not its every chunk's).
std::vector<Request> make_requests(int n, int chunks_each) {
  std::mt19937 rng(42);
  std::vector<Request> out;
  for (int r = 0; r < n; ++r) {
    Request q;
    q.prompt = random_ids(rng, 5 + r);
    q.prompt[0] = 1;
    for (int c = 0; c < chunks_each; ++c) q.chunks.push_back(random_ids(rng, 9 + (c * 7 + r) % 23));
    out.push_back(std::move(q));
  }
  return out;
}

SamplingOptions greedy(int max_new) {
  SamplingOptions s;
  s.max_new_tokens = max_new;
  s.stop_at_eos = false;
  return s;
}

qa::SchedulerOptions batch_options(int64_t budget) {
  qa::SchedulerOptions so;
  so.max_batch = 4;  // fewer slots than requests: later ones join a running batch
  so.encode_tokens_per_step = budget;
  return so;
}

// Answers every request together on `scheduler` (driven on the calling thread). With ids, chunk
// c of request r is passage "r.c" (for the encoder-state cache).
std::vector<qa::JobResult> run_on(qa::Scheduler& scheduler, const std::vector<Request>& requests,
                                  bool with_ids = false) {
  std::vector<qa::JobResult> results(requests.size());
  for (size_t i = 0; i < requests.size(); ++i) {
    auto job = std::make_shared<qa::Job>();
    job->prompt_ids = requests[i].prompt;
    job->chunks = requests[i].chunks;
    if (with_ids)
      for (size_t c = 0; c < requests[i].chunks.size(); ++c)
        job->chunk_ids.push_back(std::to_string(i) + "." + std::to_string(c));
    job->sampling = greedy(12);
    job->on_done = [&results, i](qa::JobResult r) { results[i] = std::move(r); };
    EXPECT_TRUE(scheduler.try_reserve());
    scheduler.submit(job);
  }
  scheduler.drain();
  return results;
}

// Answers every request together on the calling thread with the given encode budget.
std::vector<qa::JobResult> run_all(CepeModel& model, const Tokenizer& tok,
                                   const std::vector<Request>& requests, int64_t budget) {
  qa::Scheduler scheduler(model, tok, batch_options(budget));
  return run_on(scheduler, requests);
}

TEST(QaScheduler, SlicedEncodingGivesTheAnswersOfWholeEncodingAndOfGenerate) {
  CEPE_REQUIRE_SHARED("models/llama2-tokenizer/tokenizer.model", tok_path);
  Loaded l = load_tiny(tok_path);
  const auto requests = make_requests(7, 5);
  const auto whole = run_all(*l.model, *l.tokenizer, requests, 0);
  // 1 token: one chunk per step; 40: a slice spans requests and cuts one between steps.
  for (int64_t budget : {1, 40}) {
    const auto sliced = run_all(*l.model, *l.tokenizer, requests, budget);
    for (size_t i = 0; i < requests.size(); ++i) {
      SCOPED_TRACE("budget " + std::to_string(budget) + ", request " + std::to_string(i));
      ASSERT_EQ(sliced[i].outcome, qa::JobOutcome::Finished) << sliced[i].error;
      EXPECT_EQ(sliced[i].text, whole[i].text);
      EXPECT_EQ(sliced[i].completion_tokens, 12);
      EXPECT_EQ(sliced[i].encoder_tokens, whole[i].encoder_tokens);
    }
  }
  // The reference: the engine's one-shot path (encode the request's chunks in one call, then
  // generate alone), independent of the scheduler.
  for (size_t i = 0; i < requests.size(); ++i) {
    const GenerationResult g =
        generate(*l.model, *l.tokenizer, requests[i].prompt, requests[i].chunks, greedy(12));
    EXPECT_EQ(whole[i].text, g.text) << "request " << i;
    EXPECT_EQ(whole[i].encoder_tokens, g.encoder_tokens) << "request " << i;
  }
}

// Passages found in the encoder-state cache are read, not encoded, and the answers are those of
// live encoding: a cold pass fills the cache, a warm pass reads every chunk from it, on whole and
// sliced encoding alike.
TEST(QaScheduler, CachedPassagesGiveTheAnswersOfLiveEncoding) {
  CEPE_REQUIRE_SHARED("models/llama2-tokenizer/tokenizer.model", tok_path);
  Loaded l = load_tiny(tok_path);
  const auto requests = make_requests(6, 4);
  const auto live = run_all(*l.model, *l.tokenizer, requests, 0);
  size_t chunks = 0;
  for (const auto& r : requests) chunks += r.chunks.size();
  for (int64_t budget : {0, 40}) {
    SCOPED_TRACE("budget " + std::to_string(budget));
    qa::Scheduler scheduler(*l.model, *l.tokenizer, batch_options(budget));
    auto cache = std::make_shared<qa::EncodedPassageCache>(size_t(64) << 20);
    scheduler.encoder_states().use_cache(cache, /*fingerprint=*/7);
    const auto cold = run_on(scheduler, requests, /*with_ids=*/true);
    const qa::EncoderStateCounters& c = scheduler.encoder_states().counters();
    EXPECT_EQ(c.cache_hits.load(), 0u);
    EXPECT_EQ(c.live_passages.load(), chunks);
    EXPECT_EQ(cache->entries(), chunks);
    const auto warm = run_on(scheduler, requests, /*with_ids=*/true);
    EXPECT_EQ(c.cache_hits.load(), chunks);
    EXPECT_EQ(c.live_passages.load(), chunks) << "a cached passage was encoded again";
    for (size_t i = 0; i < requests.size(); ++i) {
      SCOPED_TRACE("request " + std::to_string(i));
      ASSERT_EQ(cold[i].outcome, qa::JobOutcome::Finished) << cold[i].error;
      ASSERT_EQ(warm[i].outcome, qa::JobOutcome::Finished) << warm[i].error;
      EXPECT_EQ(cold[i].text, live[i].text);
      EXPECT_EQ(warm[i].text, live[i].text);
      EXPECT_EQ(warm[i].encoder_tokens, live[i].encoder_tokens);
      EXPECT_GE(warm[i].first_token_ms, 0);
    }
  }
}

// Counts decode steps, and those taken while some job was still being encoded.
class StepCounter : public qa::SchedulerMetrics {
 public:
  explicit StepCounter(const qa::Scheduler** scheduler) : scheduler_(scheduler) {}
  void on_queue_depth(int64_t) override {}
  void on_batch(int64_t, int64_t) override {}
  void on_queue_wait(double) override {}
  void on_engine_step(int, double) override {
    steps.fetch_add(1);
    if ((*scheduler_)->encoding() > 0) steps_while_encoding.fetch_add(1);
  }
  void on_joined(int64_t, int64_t) override {}
  void on_ended(qa::JobOutcome, int64_t) override {}
  std::atomic<int> steps{0}, steps_while_encoding{0};

 private:
  const qa::Scheduler** scheduler_;
};

// One stream decodes; a request with 24 chunks joins. Returns the steps the stream made while the
// request was being encoded, and fills the request's answer.
int steps_during_join(CepeModel& model, const Tokenizer& tok, const Request& big, int64_t budget,
                      qa::JobResult* big_result) {
  const qa::Scheduler* view = nullptr;
  StepCounter counter(&view);
  qa::SchedulerOptions so;
  so.encode_tokens_per_step = budget;
  qa::Scheduler scheduler(model, tok, so, &counter);
  view = &scheduler;
  std::mutex mu;
  std::condition_variable cv;
  bool stream_done = false, big_done = false;
  auto stream = std::make_shared<qa::Job>();
  stream->prompt_ids = {1, 450, 4996, 17354};
  stream->sampling = greedy(100000);
  stream->on_done = [&](qa::JobResult) {
    std::lock_guard<std::mutex> lock(mu);
    stream_done = true;
    cv.notify_all();
  };
  auto job = std::make_shared<qa::Job>();
  job->prompt_ids = big.prompt;
  job->chunks = big.chunks;
  job->sampling = greedy(12);
  job->on_done = [&](qa::JobResult r) {
    std::lock_guard<std::mutex> lock(mu);
    *big_result = std::move(r);
    big_done = true;
    cv.notify_all();
  };
  scheduler.start();
  EXPECT_TRUE(scheduler.try_reserve());
  scheduler.submit(stream);
  while (counter.steps.load() < 3) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  EXPECT_TRUE(scheduler.try_reserve());
  scheduler.submit(job);
  {
    std::unique_lock<std::mutex> lock(mu);
    cv.wait(lock, [&] { return big_done; });
  }
  stream->cancelled.store(true);
  scheduler.wake();
  {
    std::unique_lock<std::mutex> lock(mu);
    cv.wait(lock, [&] { return stream_done; });
  }
  scheduler.stop();
  return counter.steps_while_encoding.load();
}

TEST(QaScheduler, RunningStreamGetsTokensWhileALargeRequestIsEncoded) {
  CEPE_REQUIRE_SHARED("models/llama2-tokenizer/tokenizer.model", tok_path);
  Loaded l = load_tiny(tok_path);
  Request big = make_requests(1, 24)[0];
  for (auto& c : big.chunks) c.resize(std::min<size_t>(c.size(), 16));  // 9..16 tokens each
  qa::JobResult whole_result, sliced_result;
  // Encoded whole: the request joins in one round, no step runs while it encodes.
  EXPECT_EQ(steps_during_join(*l.model, *l.tokenizer, big, 0, &whole_result), 0);
  // At most 16 tokens (one chunk) per step: the stream steps between the 24 slices.
  EXPECT_GE(steps_during_join(*l.model, *l.tokenizer, big, 16, &sliced_result), 23);
  ASSERT_EQ(whole_result.outcome, qa::JobOutcome::Finished) << whole_result.error;
  ASSERT_EQ(sliced_result.outcome, qa::JobOutcome::Finished) << sliced_result.error;
  EXPECT_EQ(sliced_result.text, whole_result.text);
  EXPECT_EQ(sliced_result.encoder_tokens, whole_result.encoder_tokens);
}

TEST(QaScheduler, CancelledAndExpiredJobsEndWhileEncoding) {
  CEPE_REQUIRE_SHARED("models/llama2-tokenizer/tokenizer.model", tok_path);
  Loaded l = load_tiny(tok_path);
  qa::SchedulerOptions so;
  so.encode_tokens_per_step = 1;
  qa::Scheduler scheduler(*l.model, *l.tokenizer, so);
  const Request big = make_requests(1, 30)[0];
  std::vector<qa::JobResult> results(3);
  auto add = [&](size_t i, const std::vector<std::vector<int32_t>>& chunks, int max_new) {
    auto job = std::make_shared<qa::Job>();
    job->prompt_ids = big.prompt;
    job->chunks = chunks;
    job->sampling = greedy(max_new);
    job->on_done = [&results, i](qa::JobResult r) { results[i] = std::move(r); };
    EXPECT_TRUE(scheduler.try_reserve());
    scheduler.submit(job);
    return job;
  };
  add(0, {}, 40);  // running, so the big ones that join it are encoded in slices
  std::shared_ptr<qa::Job> cancelled, expired;
  int rounds = 0;
  scheduler.drain([&] {
    ++rounds;
    if (rounds == 2) {  // job 0 is running now
      cancelled = add(1, big.chunks, 6);
      expired = add(2, big.chunks, 6);
    }
    if (rounds == 5) {  // three slices of one chunk in: both are part-encoded
      EXPECT_EQ(scheduler.encoding(), 2);
      cancelled->cancelled.store(true);
      expired->deadline = qa::Clock::now();
    }
    return false;
  });
  EXPECT_EQ(results[0].outcome, qa::JobOutcome::Finished);
  EXPECT_EQ(results[1].outcome, qa::JobOutcome::Cancelled);
  EXPECT_EQ(results[1].finish_reason, "cancelled");
  EXPECT_EQ(results[2].outcome, qa::JobOutcome::Deadline);
  EXPECT_EQ(results[2].finish_reason, "deadline");
  EXPECT_EQ(scheduler.reserved(), 0);
}

TEST(QaScheduler, PipelineRethrowsTheModelsError) {
  CEPE_REQUIRE_SHARED("models/llama2-tokenizer/tokenizer.model", tok_path);
  Loaded l = load_tiny(tok_path);
  qa::Pipeline pipeline(*l.model, *l.tokenizer, nullptr, {}, qa::qa_sampling(), {});
  qa::Plan plan;
  plan.prompt_ids = {1, 450};
  plan.chunks = {{5, 6}, {}};  // an empty chunk: the encoder refuses it
  std::vector<qa::Plan> plans;
  plans.push_back(plan);
  try {
    pipeline.answer(std::move(plans), [](size_t, const qa::Answer&) {});
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("context chunk 1 is empty"), std::string::npos)
        << e.what();
  }
}

// Log-probabilities (SamplingOptions::logprobs) are the model's log-softmax at each step: checked
// against logits from the model stepped by hand on the same tokens, with the normaliser and the
// ranking computed here independently (a full sort in double). The bound: both sides run the same
// float32 forward, one batched and one not, so logits agree within float32_logit_bound, and a
// log-softmax moves by at most twice its logits' largest change. With temperature and top-k
// sampling the figures stay those of the raw distribution (not renormalised over the survivors).
TEST(QaScheduler, LogprobsAreTheModelsLogSoftmax) {
  CEPE_REQUIRE_SHARED("models/llama2-tokenizer/tokenizer.model", tok_path);
  Loaded l = load_tiny(tok_path);
  const Request q = make_requests(1, 3)[0];
  const int max_new = 10, top = 5;
  for (const float temperature : {0.0f, 1.0f}) {
    SCOPED_TRACE("temperature " + std::to_string(temperature));
    SamplingOptions s = greedy(max_new);
    s.temperature = temperature;
    s.top_k = temperature > 0 ? 3 : 0;
    s.seed = 11;
    s.logprobs = top;
    qa::Scheduler scheduler(*l.model, *l.tokenizer, batch_options(0));
    auto job = std::make_shared<qa::Job>();
    job->prompt_ids = q.prompt;
    job->chunks = q.chunks;
    job->sampling = s;
    std::vector<TokenLogprob> streamed;
    job->on_text = [&](std::string, std::vector<TokenLogprob> lps) {
      streamed.insert(streamed.end(), lps.begin(), lps.end());
    };
    qa::JobResult result;
    job->on_done = [&](qa::JobResult r) { result = std::move(r); };
    ASSERT_TRUE(scheduler.try_reserve());
    scheduler.submit(job);
    scheduler.drain();
    ASSERT_EQ(result.outcome, qa::JobOutcome::Finished) << result.error;
    ASSERT_EQ(result.completion_tokens, max_new);
    ASSERT_EQ(result.logprobs.size(), static_cast<size_t>(max_new));
    ASSERT_EQ(streamed.size(), result.logprobs.size()) << "the stream carries every token's";

    // The reference: the model stepped by hand over the generated ids.
    auto state = l.model->new_state(static_cast<int64_t>(q.prompt.size()) + max_new);
    l.model->set_context(*state, l.model->encode(q.chunks));
    Tensor logits = l.model->forward(*state, q.prompt, /*all_logits=*/false);
    const int vocab = static_cast<int>(logits.dim(1));
    for (int i = 0; i < max_new; ++i) {
      SCOPED_TRACE("token " + std::to_string(i));
      const TokenLogprob& got = result.logprobs[i];
      const float* row = logits.data<float>();
      double mx = row[0], magnitude = 0;
      for (int v = 0; v < vocab; ++v) {
        mx = std::max(mx, double(row[v]));
        magnitude = std::max(magnitude, std::fabs(double(row[v])));
      }
      double sum = 0;
      for (int v = 0; v < vocab; ++v) sum += std::exp(row[v] - mx);
      const double log_z = mx + std::log(sum);
      std::vector<int32_t> order(vocab);
      std::iota(order.begin(), order.end(), 0);
      std::stable_sort(order.begin(), order.end(),
                       [&](int32_t a, int32_t b) { return row[a] > row[b]; });
      const double bound = 2 * test::float32_logit_bound(
                                   l.model->config(), static_cast<int64_t>(q.prompt.size()) + i + 1,
                                   q.chunks, magnitude);
      EXPECT_EQ(got.id, result.logprobs[i].id);
      EXPECT_EQ(got.id, streamed[i].id);
      EXPECT_EQ(got.logprob, streamed[i].logprob);
      EXPECT_NEAR(got.logprob, row[got.id] - log_z, bound);
      ASSERT_EQ(got.top.size(), static_cast<size_t>(top));
      for (int r = 0; r < top; ++r) {
        // Ranks are compared only where the reference's neighbours are further apart than the
        // bound (a near tie may fall either way between the two evaluations).
        const bool separated = (r == 0 || row[order[r - 1]] - row[order[r]] > bound) &&
                               row[order[r]] - row[order[r + 1]] > bound;
        if (separated) {
          EXPECT_EQ(got.top[r].first, order[r]) << "rank " << r;
        }
        EXPECT_NEAR(got.top[r].second, row[got.top[r].first] - log_z, bound) << "rank " << r;
        if (r > 0) {
          EXPECT_GE(got.top[r - 1].second, got.top[r].second);
        }
      }
      if (temperature == 0) {
        EXPECT_EQ(got.id, got.top[0].first) << "greedy picks the most likely token";
      } else {
        // top_k = 3: the token is one of the three most likely (its figure, checked above, is
        // the raw one, not the larger one renormalised over the three).
        EXPECT_TRUE(got.id == got.top[0].first || got.id == got.top[1].first ||
                    got.id == got.top[2].first);
      }
      logits = l.model->forward(*state, {got.id}, /*all_logits=*/false);
    }
  }
  // Off by default: nothing recorded.
  const GenerationResult plain =
      generate(*l.model, *l.tokenizer, q.prompt, q.chunks, greedy(max_new));
  EXPECT_TRUE(plain.logprobs.empty());
}

}  // namespace
}  // namespace cepe
