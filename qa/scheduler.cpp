#include "qa/scheduler.h"

#include <algorithm>
#include <limits>

#include "common/error.h"

namespace cepe::qa {
namespace {

double ms_between(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double, std::milli>(b - a).count();
}

std::string message_of(const std::exception_ptr& error) {
  if (!error) return "";
  try {
    std::rethrow_exception(error);
  } catch (const std::exception& e) {
    return e.what();
  } catch (...) {
    return "unknown error";
  }
}

}  // namespace

// A sequence in the running batch.
struct Scheduler::Active {
  std::shared_ptr<Job> job;
  std::unique_ptr<Sequence> seq;
  int64_t encoder_tokens = 0;
  double queue_ms = 0, encode_ms = 0;
  Clock::time_point joined;    // left the queue
  double first_token_ms = -1;  // from `joined` to the first generated token
};

// A job that left the queue and whose chunks are being encoded, slice by slice.
struct Scheduler::Joining {
  // One chunk's states: rows [begin, begin + rows) of a slice's encoder output, or the whole of
  // a tensor read from the encoder-state store or cache; or its projected keys and values (a
  // K/V store), with rows its tokens.
  struct Piece {
    Tensor states;
    int64_t begin = 0, rows = 0;
    ProjectedKV kv;
    bool ready() const { return states.raw() != nullptr || kv.defined(); }
  };
  std::shared_ptr<Job> job;
  double queue_ms = 0, encode_ms = 0;
  Clock::time_point joined;
  size_t next_chunk = 0;      // chunks [0, next_chunk) are encoded (or were found)
  int64_t rope_length = 0;    // the longest chunk: every chunk's dynamic-NTK length
  std::vector<Piece> pieces;  // one per chunk, in chunk order
  std::exception_ptr error;   // set when a pass with its chunks failed
  bool encoded() const { return next_chunk == job->chunks.size(); }
};

Scheduler::Scheduler(CepeModel& model, const Tokenizer& tokenizer, SchedulerOptions options,
                     SchedulerMetrics* metrics)
    : model_(model),
      tokenizer_(tokenizer),
      options_(options),
      metrics_(metrics),
      encoder_states_(model) {
  CEPE_CHECK(options_.max_batch >= 1, "max_batch must be >= 1");
  CEPE_CHECK(options_.max_queue >= 1, "max_queue must be >= 1");
  CEPE_CHECK(options_.encode_tokens_per_step >= 0, "encode_tokens_per_step must be >= 0");
  if (!options_.batching) options_.max_batch = 1;
}

Scheduler::~Scheduler() {
  stop();
}

void Scheduler::start() {
  std::lock_guard<std::mutex> lock(mu_);
  if (thread_.joinable() || stopping_) return;
  last_tick_ns_.store(Clock::now().time_since_epoch().count());
  alive_.store(true);
  thread_ = std::thread([this] { run(); });
}

void Scheduler::stop() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
  alive_.store(false);
  // Jobs left by drain() or queued after the thread ended (or never started) still get an answer.
  for (auto& a : active_) finish(a, JobOutcome::Shutdown);
  active_.clear();
  for (auto& j : joining_) end_early(j.job, JobOutcome::Shutdown, j.queue_ms);
  joining_.clear();
  std::deque<std::shared_ptr<Job>> left;
  {
    std::lock_guard<std::mutex> lock(mu_);
    left.swap(queue_);
  }
  for (auto& job : left) end_queued(job, JobOutcome::Shutdown);
  publish();
}

void Scheduler::drain(const std::function<bool()>& stop) {
  CEPE_CHECK(!thread_.joinable(), "drain() on a scheduler that runs its own thread");
  while (has_work()) {
    if (stop && stop()) {
      cancel_all();
      return;
    }
    iterate();
  }
}

bool Scheduler::try_reserve() {
  int n = reserved_.load();
  while (n < options_.max_queue) {
    if (reserved_.compare_exchange_weak(n, n + 1)) {
      if (metrics_) metrics_->on_queue_depth(n + 1);
      return true;
    }
  }
  return false;
}

void Scheduler::release() {
  const int n = reserved_.fetch_sub(1) - 1;
  if (metrics_) metrics_->on_queue_depth(n);
}

void Scheduler::submit(std::shared_ptr<Job> job) {
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

void Scheduler::wake() {
  cv_.notify_one();
}

Clock::time_point Scheduler::last_tick() const {
  return Clock::time_point(Clock::duration(last_tick_ns_.load()));
}

bool Scheduler::has_work() const {
  if (!active_.empty() || !joining_.empty()) return true;
  std::lock_guard<std::mutex> lock(mu_);
  return !queue_.empty();
}

void Scheduler::end_queued(std::shared_ptr<Job> job, JobOutcome outcome) {
  release();
  JobResult r;
  r.outcome = outcome;
  r.finish_reason = outcome == JobOutcome::Deadline ? "deadline" : "cancelled";
  r.queue_ms = ms_between(job->submitted, Clock::now());
  if (metrics_) metrics_->on_ended(outcome, 0);
  if (job->on_done) job->on_done(std::move(r));
}

// A job that left the queue but never got a sequence (it ended while being encoded).
void Scheduler::end_early(std::shared_ptr<Job> job, JobOutcome outcome, double queue_ms,
                          std::exception_ptr error) {
  JobResult r;
  r.outcome = outcome;
  r.error = message_of(error);
  r.exception = error;
  r.queue_ms = queue_ms;
  r.finish_reason = outcome == JobOutcome::Deadline ? "deadline"
                    : outcome == JobOutcome::Failed ? "error"
                                                    : "cancelled";
  if (metrics_) metrics_->on_ended(outcome, 0);
  if (job->on_done) done_.emplace_back(std::move(job->on_done), std::move(r));
}

void Scheduler::finish(Active& a, JobOutcome outcome, std::exception_ptr error) {
  Sequence* s = a.seq.get();
  JobResult r;
  r.outcome = outcome;
  r.error = message_of(error);
  r.exception = error;
  r.encoder_tokens = a.encoder_tokens;
  r.queue_ms = a.queue_ms;
  r.encode_ms = a.encode_ms;
  r.first_token_ms = a.first_token_ms;
  if (s) {
    if (outcome != JobOutcome::Finished) s->cancel();  // frees its caches now
    r.text = s->text();
    r.prompt_tokens = s->prompt_tokens();
    r.completion_tokens = static_cast<int64_t>(s->tokens().size());
    r.logprobs = s->logprobs();
    r.prefill_ms = s->prefill_ms;
    r.decode_ms = s->decode_ms;
    r.finish_reason = finish_reason_name(s->finish_reason());
  }
  // One rule for queued and running jobs alike (end_queued): a job the server stopped was
  // cancelled, not failed; only a model error is "error".
  if (outcome == JobOutcome::Deadline) r.finish_reason = "deadline";
  if (outcome == JobOutcome::Cancelled || outcome == JobOutcome::Shutdown)
    r.finish_reason = "cancelled";
  if (outcome == JobOutcome::Failed) r.finish_reason = "error";
  if (metrics_) metrics_->on_ended(outcome, r.completion_tokens);
  a.seq.reset();
  // Delivered by deliver() once the gauges no longer count this sequence, so a client that reads
  // /metrics right after its answer sees it gone from the batch.
  if (a.job->on_done) done_.emplace_back(std::move(a.job->on_done), std::move(r));
  a.job.reset();
}

void Scheduler::cancel_all() {
  std::deque<std::shared_ptr<Job>> left;
  {
    std::lock_guard<std::mutex> lock(mu_);
    left.swap(queue_);
  }
  for (auto& job : left) end_queued(job, JobOutcome::Cancelled);
  for (auto& j : joining_) end_early(j.job, JobOutcome::Cancelled, j.queue_ms);
  joining_.clear();
  for (auto& a : active_) finish(a, JobOutcome::Cancelled);
  active_.clear();
  publish();
}

void Scheduler::deliver() {
  std::vector<std::pair<std::function<void(JobResult)>, JobResult>> done;
  done.swap(done_);
  for (auto& [on_done, result] : done) on_done(std::move(result));
}

void Scheduler::publish() {
  running_.store(static_cast<int>(active_.size()));
  encoding_.store(static_cast<int>(joining_.size()));
  if (metrics_) {
    size_t bytes = 0, states = 0;
    for (const Active& a : active_) {
      if (!a.seq) continue;
      bytes += a.seq->cache_bytes();
      // Absorbed: what a sequence holds for cross-attention is its encoder states E alone,
      // and not even those when they are read in place from the mapped store.
      states += a.seq->encoder_state_bytes();
    }
    metrics_->on_batch(static_cast<int64_t>(active_.size()), static_cast<int64_t>(bytes));
    metrics_->on_encoder_states(encoder_states_.counters(), encoder_states_.cache().get(),
                                static_cast<int64_t>(states));
  }
  deliver();
}

// Moves queued jobs into free batch slots (a job being encoded holds its slot); expired and
// cancelled ones are answered instead.
void Scheduler::admit() {
  const auto now = Clock::now();
  std::vector<std::shared_ptr<Job>> admitted, dropped_deadline, dropped_cancel;
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
    while (!queue_.empty() && static_cast<int>(active_.size() + joining_.size() + admitted.size()) <
                                  options_.max_batch) {
      admitted.push_back(queue_.front());
      queue_.pop_front();
    }
  }
  for (auto& j : dropped_cancel) end_queued(j, JobOutcome::Cancelled);
  for (auto& j : dropped_deadline) end_queued(j, JobOutcome::Deadline);
  for (auto& job : admitted) {
    release();
    Joining j;
    j.job = job;
    j.joined = now;
    j.queue_ms = ms_between(job->submitted, now);
    if (metrics_) metrics_->on_queue_wait(j.queue_ms / 1000.0);
    for (const auto& chunk : job->chunks)
      j.rope_length = std::max<int64_t>(j.rope_length, static_cast<int64_t>(chunk.size()));
    j.pieces.resize(job->chunks.size());
    // Passages whose states are stored or cached are not encoded: read them now (a copy out of
    // the mapped store, or the cached tensor itself). A store that fails to read fails the job.
    if (encoder_states_.enabled()) {
      const auto t0 = Clock::now();
      try {
        for (size_t c = 0; c < job->chunks.size() && c < job->chunk_ids.size(); ++c) {
          FoundStates found = encoder_states_.lookup(job->chunk_ids[c], job->chunks[c]);
          const auto rows = static_cast<int64_t>(job->chunks[c].size());
          if (found.kv.defined())
            j.pieces[c] = {Tensor(), 0, rows, std::move(found.kv)};
          else if (found.found())
            j.pieces[c] = {model_.backend().to_device(found.states), 0, rows, {}};
        }
      } catch (...) {
        j.error = std::current_exception();
      }
      j.encode_ms += ms_between(t0, Clock::now());
    }
    joining_.push_back(std::move(j));
  }
}

// Encodes the next chunks of the joining jobs, in join order, in one pass. While sequences are
// running the pass holds at most encode_tokens_per_step tokens (but at least one chunk), so the
// running streams wait for one slice, not for the whole of a large request; with nothing running
// (or no budget) every joining chunk is encoded at once.
void Scheduler::encode_slice() {
  const bool limited = options_.encode_tokens_per_step > 0 && !active_.empty();
  const int64_t budget =
      limited ? options_.encode_tokens_per_step : std::numeric_limits<int64_t>::max();
  struct Take {
    size_t joining;              // index into joining_
    std::vector<size_t> chunks;  // its chunks in this pass, in order
  };
  std::vector<Take> takes;
  std::vector<std::vector<int32_t>> chunks;
  std::vector<int64_t> rope_lengths;
  int64_t tokens = 0;
  bool full = false;
  for (size_t i = 0; i < joining_.size() && !full; ++i) {
    Joining& j = joining_[i];
    if (j.error) continue;
    Take take{i, {}};
    while (j.next_chunk < j.job->chunks.size()) {
      const size_t c = j.next_chunk;
      if (j.pieces[c].ready()) {  // found in the store or cache
        ++j.next_chunk;
        continue;
      }
      const auto& chunk = j.job->chunks[c];
      const int64_t n = static_cast<int64_t>(chunk.size());
      if (!chunks.empty() && tokens + n > budget) {
        full = true;
        break;
      }
      chunks.push_back(chunk);
      rope_lengths.push_back(j.rope_length);
      tokens += n;
      take.chunks.push_back(c);
      ++j.next_chunk;
    }
    if (!take.chunks.empty()) takes.push_back(std::move(take));
  }
  if (!chunks.empty()) {
    const auto t0 = Clock::now();
    EncodedContext ctx;
    Tensor host;  // the pass's states on the host, for the cache
    std::exception_ptr error;
    try {
      ctx = model_.encode(chunks, rope_lengths);
      encoder_states_.count_live(chunks.size(), ctx.tokens());
      if (encoder_states_.caching()) host = model_.backend().to_host_f32(ctx.states);
    } catch (...) {
      error = std::current_exception();
    }
    const double ms = ms_between(t0, Clock::now());
    const int64_t width = ctx.states.raw() ? ctx.states.dim(1) : 0;
    int64_t row = 0;
    size_t chunk_index = 0;
    for (const Take& take : takes) {
      Joining& j = joining_[take.joining];
      if (error) {
        // One bad chunk spoils the pass: every job in it fails, the others keep going.
        j.error = error;
        continue;
      }
      int64_t job_rows = 0;
      for (size_t c : take.chunks) {
        const int64_t rows = ctx.chunk_lengths[chunk_index++];
        j.pieces[c] = {ctx.states, row, rows, {}};
        if (host.raw() && c < j.job->chunk_ids.size())
          encoder_states_.remember(j.job->chunk_ids[c], j.job->chunks[c],
                                   host.data<float>() + row * width);
        row += rows;
        job_rows += rows;
      }
      j.encode_ms += ms * static_cast<double>(job_rows) / static_cast<double>(tokens);
    }
  }
  // Jobs whose chunks are all encoded start generating, in join order.
  std::vector<Joining> still;
  for (Joining& j : joining_) {
    if (j.error)
      end_early(j.job, JobOutcome::Failed, j.queue_ms, j.error);
    else if (j.encoded())
      start_sequence(j);
    else
      still.push_back(std::move(j));
  }
  joining_.swap(still);
}

void Scheduler::start_sequence(Joining& j) {
  Active a;
  a.job = j.job;
  a.queue_ms = j.queue_ms;
  a.encode_ms = j.encode_ms;
  a.joined = j.joined;
  try {
    EncodedContext ctx;
    if (!j.pieces.empty()) {
      // One pass covering exactly this job's chunks, in order, is the context as it stands.
      const Tensor& first = j.pieces[0].states;
      int64_t total = 0;
      bool whole = first.raw() != nullptr, projected = false;
      for (const auto& p : j.pieces) {
        whole = whole && p.states.raw() == first.raw() && p.begin == total;
        projected = projected || p.kv.defined();
        total += p.rows;
      }
      if (whole && total == first.dim(0)) {
        ctx.states = first;
      } else if (model_.backend().device() == Device::CPU) {
        // Read where they lie: store pages, cache entries and encoder passes, no copy.
        for (const auto& p : j.pieces) {
          ctx.parts.push_back(p.kv.defined() ? Tensor() : p.states.rows(p.begin, p.rows));
          if (projected) ctx.projected.push_back(p.kv);
        }
      } else {
        Backend& backend = model_.backend();
        ctx.states = backend.empty({total, first.dim(1)}, DType::F32);
        int64_t row = 0;
        for (const auto& p : j.pieces) {
          backend.copy_rows(p.states, p.begin, ctx.states, row, p.rows);
          row += p.rows;
        }
      }
    }
    for (const auto& chunk : j.job->chunks)
      ctx.chunk_lengths.push_back(static_cast<int64_t>(chunk.size()));
    j.pieces.clear();
    a.encoder_tokens = ctx.tokens();
    a.seq =
        std::make_unique<Sequence>(model_, &tokenizer_, a.job->prompt_ids, ctx, a.job->sampling);
    if (metrics_)
      metrics_->on_joined(static_cast<int64_t>(a.job->prompt_ids.size()), a.encoder_tokens);
    // The chunks are no longer needed once encoded; drop them rather than hold them for the
    // whole generation.
    std::vector<std::vector<int32_t>>().swap(a.job->chunks);
    std::vector<std::string>().swap(a.job->chunk_ids);
    active_.push_back(std::move(a));
  } catch (...) {
    finish(a, JobOutcome::Failed, std::current_exception());
  }
}

void Scheduler::replace_store(std::shared_ptr<const index::EncoderStore> store) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    next_store_ = std::move(store);
    store_pending_ = true;
  }
  cv_.notify_all();
}

void Scheduler::iterate() {
  last_tick_ns_.store(Clock::now().time_since_epoch().count());
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (store_pending_) {
      encoder_states_.use_store(std::move(next_store_));
      next_store_.reset();
      store_pending_ = false;
    }
  }
  admit();
  // Leave before encoding or stepping: cancelled and expired jobs must not cost more work.
  auto now = Clock::now();
  std::erase_if(joining_, [&](Joining& j) {
    if (j.job->cancelled.load()) {
      end_early(j.job, JobOutcome::Cancelled, j.queue_ms);
      return true;
    }
    if (now >= j.job->deadline) {
      end_early(j.job, JobOutcome::Deadline, j.queue_ms);
      return true;
    }
    return false;
  });
  encode_slice();
  now = Clock::now();
  for (auto& a : active_) {
    if (a.job->cancelled.load())
      finish(a, JobOutcome::Cancelled);
    else if (now >= a.job->deadline)
      finish(a, JobOutcome::Deadline);
  }
  std::erase_if(active_, [](const Active& a) { return !a.job; });
  publish();
  if (active_.empty()) return;

  std::vector<Sequence*> batch;
  for (auto& a : active_) batch.push_back(a.seq.get());
  const auto t0 = Clock::now();
  try {
    step_sequences(model_, batch);
  } catch (...) {
    // A failed step leaves no sequence in a known state: fail the whole batch, keep serving.
    const std::exception_ptr error = std::current_exception();
    for (auto& a : active_) finish(a, JobOutcome::Failed, error);
    active_.clear();
    publish();
    return;
  }
  steps_.fetch_add(1);
  if (metrics_)
    metrics_->on_engine_step(static_cast<int>(batch.size()), ms_between(t0, Clock::now()) / 1000.0);
  const auto stepped = Clock::now();
  last_tick_ns_.store(stepped.time_since_epoch().count());

  for (auto& a : active_) {
    if (a.first_token_ms < 0 && (!a.seq->tokens().empty() || a.seq->finished()))
      a.first_token_ms = ms_between(a.joined, stepped);
    if (a.job->on_text) {
      std::string piece = a.seq->take_text();
      std::vector<TokenLogprob> logprobs = a.seq->take_logprobs();
      if (!piece.empty() || !logprobs.empty())
        a.job->on_text(std::move(piece), std::move(logprobs));
    }
    if (a.seq->finished()) finish(a, JobOutcome::Finished);
  }
  std::erase_if(active_, [](const Active& a) { return !a.job; });
  publish();
}

void Scheduler::run() {
  for (;;) {
    {
      std::unique_lock<std::mutex> lock(mu_);
      if (active_.empty() && joining_.empty() && queue_.empty() && !stopping_)
        cv_.wait_for(lock, options_.idle_tick);
      if (stopping_) break;
    }
    iterate();
  }
  // stop() answers what is left once the thread has been joined.
}

}  // namespace cepe::qa
