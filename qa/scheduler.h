// The one QA scheduler: the only code that touches the model while requests are answered. Jobs
// wait in a bounded queue; between two batched decode steps finished, cancelled and expired
// sequences leave the batch and queued jobs join it — continuous batching. A joining job's
// encoder chunks are encoded in slices, at most `encode_tokens_per_step` tokens between two decode
// steps and batched across joining jobs (like chunked prefill), so a request with many passages
// does not freeze the running streams while it is encoded.
//
// The server runs it on its own thread (start / submit / stop); `cepe qa` and `cepe ask` drive it
// on the calling thread (submit, then drain).
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "engine/generation.h"
#include "engine/models/cepe_llama.h"
#include "engine/tokenizer.h"
#include "qa/encoder_states.h"

namespace cepe::qa {

using Clock = std::chrono::steady_clock;

/// How a job ended.
enum class JobOutcome {
  Finished,   ///< generation stopped by itself (length, EOS, stop string)
  Deadline,   ///< the request deadline passed; generation was cancelled
  Cancelled,  ///< the client went away; generation was cancelled
  Shutdown,   ///< the scheduler stopped before the job could finish
  Failed,     ///< the model raised an error
};

/// What a job produced; delivered once through Job::on_done.
struct JobResult {
  JobOutcome outcome = JobOutcome::Finished;  ///< how it ended
  std::string error;                          ///< message when Failed
  std::exception_ptr exception;               ///< the exception when Failed (for rethrowing)
  std::string text;                           ///< generated text (stop strings removed)
  std::string finish_reason;                  ///< "length", "eos", "stop", "cancelled", ...
  int64_t prompt_tokens = 0;                  ///< decoder prompt tokens
  int64_t encoder_tokens = 0;                 ///< encoder tokens cross-attended to
  int64_t completion_tokens = 0;              ///< tokens generated
  std::vector<TokenLogprob> logprobs;         ///< per generated token, when sampling.logprobs >= 0
  double queue_ms = 0;                        ///< waiting for a batch slot
  double encode_ms = 0;                       ///< encoding the passages (the slices' share)
  double prefill_ms = 0;                      ///< steps that ran the prompt
  double decode_ms = 0;                       ///< steps that produced later tokens
  /// From leaving the queue (before encoding) to the first generated token; -1 without one.
  double first_token_ms = -1;
};

/// One generation request handed to the scheduler. The callbacks run on the scheduler's thread
/// (the engine thread, or the caller of drain()) and must not block.
struct Job {
  std::vector<int32_t> prompt_ids;           ///< decoder prompt
  std::vector<std::vector<int32_t>> chunks;  ///< encoder chunks (may be empty)
  /// Passage id of each chunk, for the encoder-state store and cache ("" or absent: encoded live).
  std::vector<std::string> chunk_ids;
  SamplingOptions sampling;                               ///< decoding settings
  Clock::time_point deadline = Clock::time_point::max();  ///< past it the job ends as Deadline
  /// Streamed output (empty: not streaming): the text completed since the last call and the
  /// log-probabilities of the tokens generated since then (empty unless sampling.logprobs >= 0;
  /// text and tokens need not line up, as text waits for whole characters and stop strings).
  std::function<void(std::string, std::vector<TokenLogprob>)> on_text;
  std::function<void(JobResult)> on_done;  ///< called exactly once
  std::atomic<bool> cancelled{false};      ///< set by the client side when the answer is unwanted
  Clock::time_point submitted;             ///< set by submit()
};

/// What the scheduler reports as it runs; the server's Prometheus metrics implement it (qa/
/// cannot see server/). Called from the scheduler's thread, except queue_depth() (any thread).
class SchedulerMetrics {
 public:
  virtual ~SchedulerMetrics() = default;
  /// Reservations now held (admitted requests not yet in the batch).
  virtual void on_queue_depth(int64_t depth) = 0;
  /// The running batch changed: sequences in it and the bytes they hold between steps.
  virtual void on_batch(int64_t sequences, int64_t cache_bytes) = 0;
  /// A job left the queue after waiting `seconds`.
  virtual void on_queue_wait(double seconds) = 0;
  /// One decode step over `batch` sequences took `seconds`.
  virtual void on_engine_step(int batch, double seconds) = 0;
  /// A job joined the batch with this many decoder prompt and encoder tokens.
  virtual void on_joined(int64_t prompt_tokens, int64_t encoder_tokens) = 0;
  /// A job ended (queued or running) after generating `generated_tokens`.
  virtual void on_ended(JobOutcome outcome, int64_t generated_tokens) = 0;
  /// Where passages' states came from so far (`cache` may be null), and the bytes of encoder
  /// states the running sequences hold for absorbed cross-attention.
  virtual void on_encoder_states(const EncoderStateCounters& counters,
                                 const EncodedPassageCache* cache, int64_t sequence_state_bytes) {
    (void)counters, (void)cache, (void)sequence_state_bytes;
  }
};

/// Settings of the scheduler.
struct SchedulerOptions {
  int max_batch = 8;     ///< sequences stepped together (joining ones count)
  int max_queue = 64;    ///< reservations (admitted, not yet running) before try_reserve() fails
  bool batching = true;  ///< false: one sequence at a time
  /// Encoder tokens encoded between two decode steps while sequences are running (at least one
  /// chunk per step); 0: a joining job is encoded whole before the next step.
  int64_t encode_tokens_per_step = 0;
  std::chrono::milliseconds idle_tick{100};  ///< heartbeat period while idle (for /readyz)
};

/// The continuous-batching scheduler.
class Scheduler {
 public:
  /// Binds the model (used only from the scheduler's thread), the tokenizer and, optionally,
  /// the metrics (which must outlive the scheduler).
  Scheduler(CepeModel& model, const Tokenizer& tokenizer, SchedulerOptions options,
            SchedulerMetrics* metrics = nullptr);
  /// Stops the scheduler (see stop()).
  ~Scheduler();

  /// Starts the scheduler's own thread (server use).
  void start();
  /// Ends every queued and running job as Shutdown and joins the thread.
  void stop();
  /// Runs the scheduler on the calling thread until no job is queued, encoding or running (CLI
  /// use; not with start()). When `stop` returns true, every unfinished job ends as Cancelled.
  void drain(const std::function<bool()>& stop = {});

  /// Reserves a queue place for a request about to be prepared; false when the queue is full
  /// (answer 429). Every successful reservation ends in exactly one submit() or release().
  bool try_reserve();
  /// Gives back a reservation that will not be submitted.
  void release();
  /// Queues a job under a reservation; after stop() it ends at once as Shutdown.
  void submit(std::shared_ptr<Job> job);
  /// Wakes the thread so it notices a cancelled job now rather than at the next step.
  void wake();
  /// Replaces the encoder-state store from any thread (a server reopening a grown index's
  /// store): the scheduler's thread takes it before its next round; sequences already running
  /// keep the rows they read (the old mapping lives as long as they do).
  void replace_store(std::shared_ptr<const index::EncoderStore> store);

  /// Sequences in the running batch.
  int running() const { return running_.load(); }
  /// Jobs whose chunks are being encoded (joined, not yet running).
  int encoding() const { return encoding_.load(); }
  /// Reservations: requests admitted but not yet joined (preparing or queued).
  int reserved() const { return reserved_.load(); }
  /// Decode steps run so far.
  uint64_t steps() const { return steps_.load(); }
  /// When the scheduler last went round (stepped or idled); for /readyz.
  Clock::time_point last_tick() const;
  /// True between start() and stop().
  bool alive() const { return alive_.load(); }
  /// The options in use.
  const SchedulerOptions& options() const { return options_; }
  /// Where passages' states come from (store, cache, live); set its store and cache before
  /// start() or the first submit().
  EncoderStates& encoder_states() { return encoder_states_; }

 private:
  struct Active;
  struct Joining;
  void run();
  // One round: admit queued jobs, encode a slice, drop cancelled/expired, one decode step.
  void iterate();
  void admit();
  void encode_slice();
  void start_sequence(Joining& j);
  void finish(Active& a, JobOutcome outcome, std::exception_ptr error = nullptr);
  void end_early(std::shared_ptr<Job> job, JobOutcome outcome, double queue_ms,
                 std::exception_ptr error = nullptr);
  void end_queued(std::shared_ptr<Job> job, JobOutcome outcome);
  void cancel_all();
  void deliver();
  // Batch size and cache bytes of the running sequences to the metrics; then deliver().
  void publish();
  bool has_work() const;

  CepeModel& model_;
  const Tokenizer& tokenizer_;
  SchedulerOptions options_;
  SchedulerMetrics* metrics_;
  EncoderStates encoder_states_;

  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::shared_ptr<Job>> queue_;
  bool stopping_ = false;
  bool store_pending_ = false;                             // replace_store() was called
  std::shared_ptr<const index::EncoderStore> next_store_;  // what it passed
  std::thread thread_;
  std::atomic<bool> alive_{false};
  std::atomic<int> reserved_{0};
  std::atomic<int> running_{0};
  std::atomic<int> encoding_{0};
  std::atomic<uint64_t> steps_{0};
  std::atomic<int64_t> last_tick_ns_{0};
  // Scheduler thread only: sequences being generated, jobs being encoded (in join order).
  std::vector<Active> active_;
  std::vector<Joining> joining_;
  // Results of ended jobs, handed to their on_done after the gauges are updated.
  std::vector<std::pair<std::function<void(JobResult)>, JobResult>> done_;
};

}  // namespace cepe::qa
