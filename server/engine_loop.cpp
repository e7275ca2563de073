#include "server/engine_loop.h"

#include <algorithm>

#include "common/error.h"

namespace cepe::server {
namespace {

double ms_between(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double, std::milli>(b - a).count();
}

}  // namespace

struct EngineLoop::Active {
  std::shared_ptr<Job> job;
  std::unique_ptr<Sequence> seq;
  int64_t encoder_tokens = 0;
  double queue_ms = 0, encode_ms = 0;
};

EngineLoop::EngineLoop(CepeModel& model, const Tokenizer& tokenizer, EngineOptions options,
                       Metrics* metrics)
    : model_(model),
      tokenizer_(tokenizer),
      options_(options),
      metrics_(metrics),
      encoder_states_(model) {
  CEPE_CHECK(options_.max_batch >= 1, "max_batch must be >= 1");
  CEPE_CHECK(options_.max_queue >= 1, "max_queue must be >= 1");
  if (!options_.batching) options_.max_batch = 1;
}

EngineLoop::~EngineLoop() {
  stop();
}

void EngineLoop::start() {
  std::lock_guard<std::mutex> lock(mu_);
  if (thread_.joinable() || stopping_) return;
  last_tick_ns_.store(Clock::now().time_since_epoch().count());
  alive_.store(true);
  thread_ = std::thread([this] { run(); });
}

void EngineLoop::stop() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
  alive_.store(false);
  // Jobs queued after the thread ended (or never started) still get their answer.
  std::deque<std::shared_ptr<Job>> left;
  {
    std::lock_guard<std::mutex> lock(mu_);
    left.swap(queue_);
  }
  for (auto& job : left) end_queued(job, JobOutcome::Shutdown);
}

bool EngineLoop::try_reserve() {
  int n = reserved_.load();
  while (n < options_.max_queue) {
    if (reserved_.compare_exchange_weak(n, n + 1)) {
      if (metrics_) metrics_->queue_depth.store(n + 1);
      return true;
    }
  }
  return false;
}

void EngineLoop::release() {
  const int n = reserved_.fetch_sub(1) - 1;
  if (metrics_) metrics_->queue_depth.store(n);
}

void EngineLoop::submit(std::shared_ptr<Job> job) {
  job->submitted = Clock::now();
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (!stopping_) {
      queue_.push_back(std::move(job));
      job = nullptr;
    }
  }
  if (job) {
    end_queued(job, JobOutcome::Shutdown);
    return;
  }
  cv_.notify_one();
}

void EngineLoop::wake() {
  cv_.notify_one();
}

Clock::time_point EngineLoop::last_tick() const {
  return Clock::time_point(Clock::duration(last_tick_ns_.load()));
}

void EngineLoop::end_queued(std::shared_ptr<Job> job, JobOutcome outcome) {
  release();
  JobResult r;
  r.outcome = outcome;
  r.finish_reason = outcome == JobOutcome::Deadline ? "deadline" : "cancelled";
  r.queue_ms = ms_between(job->submitted, Clock::now());
  if (metrics_) {
    if (outcome == JobOutcome::Deadline) metrics_->deadlines.fetch_add(1);
    if (outcome == JobOutcome::Cancelled) metrics_->cancelled.fetch_add(1);
  }
  if (job->on_done) job->on_done(std::move(r));
}

void EngineLoop::finish(Active& a, JobOutcome outcome, const std::string& error) {
  Sequence* s = a.seq.get();
  JobResult r;
  r.outcome = outcome;
  r.error = error;
  r.encoder_tokens = a.encoder_tokens;
  r.queue_ms = a.queue_ms;
  r.encode_ms = a.encode_ms;
  if (s) {
    if (outcome != JobOutcome::Finished) s->cancel();  // frees its caches now
    r.text = s->text();
    r.prompt_tokens = s->prompt_tokens();
    r.completion_tokens = static_cast<int64_t>(s->tokens().size());
    r.prefill_ms = s->prefill_ms;
    r.decode_ms = s->decode_ms;
    r.finish_reason = finish_reason_name(s->finish_reason());
  }
  if (outcome == JobOutcome::Deadline) r.finish_reason = "deadline";
  if (outcome == JobOutcome::Shutdown || outcome == JobOutcome::Failed) r.finish_reason = "error";
  if (metrics_) {
    metrics_->generated_tokens.fetch_add(static_cast<uint64_t>(r.completion_tokens));
    if (outcome == JobOutcome::Deadline) metrics_->deadlines.fetch_add(1);
    if (outcome == JobOutcome::Cancelled) metrics_->cancelled.fetch_add(1);
  }
  a.seq.reset();
  // Delivered by deliver() once the gauges no longer count this sequence, so a client that reads
  // /metrics right after its answer sees it gone from the batch.
  if (a.job->on_done) done_.emplace_back(std::move(a.job->on_done), std::move(r));
  a.job.reset();
}

void EngineLoop::deliver() {
  std::vector<std::pair<std::function<void(JobResult)>, JobResult>> done;
  done.swap(done_);
  for (auto& [on_done, result] : done) on_done(std::move(result));
}

void EngineLoop::publish(const std::vector<Active>& active) {
  running_.store(static_cast<int>(active.size()));
  if (metrics_) {
    size_t bytes = 0, states = 0;
    const bool absorbed = model_.cross_attention_mode() == CrossAttentionMode::Absorbed;
    const size_t state_row = static_cast<size_t>(model_.config().encoder_hidden_size) * 4;
    for (const Active& a : active) {
      if (!a.seq) continue;
      bytes += a.seq->cache_bytes();
      // Absorbed: what a sequence holds for cross-attention is its encoder states E alone.
      if (absorbed) states += static_cast<size_t>(a.seq->encoder_tokens()) * state_row;
    }
    metrics_->batch_size.store(static_cast<int64_t>(active.size()));
    metrics_->cache_bytes.store(static_cast<int64_t>(bytes));
    metrics_->sequence_encoder_state_bytes.store(static_cast<int64_t>(states));
    const qa::EncoderStateCounters& c = encoder_states_.counters();
    metrics_->encoder_store_hits.store(c.store_hits.load());
    metrics_->encoder_cache_hits.store(c.cache_hits.load());
    metrics_->encoder_live_passages.store(c.live_passages.load());
    if (const auto& cache = encoder_states_.cache()) {
      metrics_->encoder_cache_misses.store(cache->misses());
      metrics_->encoder_cache_evictions.store(cache->evictions());
      metrics_->encoder_cache_bytes.store(static_cast<int64_t>(cache->bytes()));
    }
  }
  deliver();
}

// Moves queued jobs into free batch slots; expired and cancelled ones are answered instead.
void EngineLoop::admit(std::vector<Active>& active) {
  const auto now = Clock::now();
  std::vector<std::shared_ptr<Job>> joining, dropped_deadline, dropped_cancel;
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (auto it = queue_.begin(); it != queue_.end();) {
      if ((*it)->cancelled.load()) {
        dropped_cancel.push_back(*it);
        it = queue_.erase(it);
      } else if (now >= (*it)->deadline) {
        dropped_deadline.push_back(*it);
        it = queue_.erase(it);
      } else {
        ++it;
      }
    }
    while (!queue_.empty() &&
           static_cast<int>(active.size() + joining.size()) < options_.max_batch) {
      joining.push_back(queue_.front());
      queue_.pop_front();
    }
  }
  for (auto& j : dropped_cancel) end_queued(j, JobOutcome::Cancelled);
  for (auto& j : dropped_deadline) end_queued(j, JobOutcome::Deadline);
  for (auto& job : joining) {
    release();
    Active a;
    a.job = job;
    a.queue_ms = ms_between(job->submitted, now);
    if (metrics_) metrics_->queue_wait(a.queue_ms / 1000.0);
    try {
      EncodedContext ctx;
      if (!job->chunks.empty()) {
        const auto t0 = Clock::now();
        job->chunk_ids.resize(job->chunks.size());
        ctx = encoder_states_.encode(job->chunk_ids, job->chunks);
        a.encode_ms = ms_between(t0, Clock::now());
      }
      a.encoder_tokens = ctx.tokens();
      a.seq = std::make_unique<Sequence>(model_, &tokenizer_, job->prompt_ids, ctx, job->sampling);
      if (metrics_) {
        metrics_->encoder_tokens.fetch_add(static_cast<uint64_t>(a.encoder_tokens));
        metrics_->prompt_tokens.fetch_add(job->prompt_ids.size());
      }
      // The chunks are no longer needed once encoded; drop them rather than hold them for the
      // whole generation.
      std::vector<std::vector<int32_t>>().swap(job->chunks);
      std::vector<std::string>().swap(job->chunk_ids);
      active.push_back(std::move(a));
    } catch (const std::exception& e) {
      finish(a, JobOutcome::Failed, e.what());
    }
  }
  deliver();  // failed admissions never counted in the batch
}

void EngineLoop::run() {
  std::vector<Active> active;
  for (;;) {
    {
      std::unique_lock<std::mutex> lock(mu_);
      if (active.empty() && queue_.empty() && !stopping_) cv_.wait_for(lock, options_.idle_tick);
      if (stopping_) break;
    }
    last_tick_ns_.store(Clock::now().time_since_epoch().count());
    admit(active);

    // Leave before the step: cancelled and expired sequences must not cost another token.
    const auto now = Clock::now();
    for (auto& a : active) {
      if (a.job->cancelled.load())
        finish(a, JobOutcome::Cancelled);
      else if (now >= a.job->deadline)
        finish(a, JobOutcome::Deadline);
    }
    std::erase_if(active, [](const Active& a) { return !a.job; });
    publish(active);
    if (active.empty()) continue;

    std::vector<Sequence*> batch;
    for (auto& a : active) batch.push_back(a.seq.get());
    const auto t0 = Clock::now();
    try {
      step_sequences(model_, batch);
    } catch (const std::exception& e) {
      // A failed step leaves no sequence in a known state: fail the whole batch, keep serving.
      for (auto& a : active) finish(a, JobOutcome::Failed, e.what());
      active.clear();
      publish(active);
      continue;
    }
    steps_.fetch_add(1);
    if (metrics_)
      metrics_->engine_step(static_cast<int>(batch.size()), ms_between(t0, Clock::now()) / 1000.0);
    last_tick_ns_.store(Clock::now().time_since_epoch().count());

    for (auto& a : active) {
      if (a.job->on_text) {
        std::string piece = a.seq->take_text();
        if (!piece.empty()) a.job->on_text(std::move(piece));
      }
      if (a.seq->finished()) finish(a, JobOutcome::Finished);
    }
    std::erase_if(active, [](const Active& a) { return !a.job; });
    publish(active);
  }
  for (auto& a : active) finish(a, JobOutcome::Shutdown);
  active.clear();
  publish(active);
}

}  // namespace cepe::server
