// The engine thread: the only thread that touches the model. Requests wait in a bounded queue;
// between two batched forward steps finished, cancelled and expired sequences leave the batch and
// queued ones join it (their passages are encoded as they join) — continuous batching.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "engine/cepe_model.h"
#include "engine/generation.h"
#include "engine/tokenizer.h"
#include "qa/encoder_states.h"
#include "server/metrics.h"

namespace cepe::server {

using Clock = std::chrono::steady_clock;

/// How a job ended.
enum class JobOutcome {
  Finished,   ///< generation stopped by itself (length, EOS, stop string)
  Deadline,   ///< the request deadline passed; generation was cancelled
  Cancelled,  ///< the client went away; generation was cancelled
  Shutdown,   ///< the server stopped before the job could finish
  Failed,     ///< the model raised an error
};

/// What a job produced; delivered once through Job::on_done.
struct JobResult {
  JobOutcome outcome = JobOutcome::Finished;  ///< how it ended
  std::string error;                          ///< message when Failed
  std::string text;                           ///< generated text (stop strings removed)
  std::string finish_reason;                  ///< "length", "eos", "stop", "cancelled", ...
  int64_t prompt_tokens = 0;                  ///< decoder prompt tokens
  int64_t encoder_tokens = 0;                 ///< encoder tokens cross-attended to
  int64_t completion_tokens = 0;              ///< tokens generated
  double queue_ms = 0;                        ///< waiting for a batch slot
  double encode_ms = 0;                       ///< encoding the passages
  double prefill_ms = 0;                      ///< steps that ran the prompt
  double decode_ms = 0;                       ///< steps that produced later tokens
};

/// One generation request handed to the engine. The callbacks run on the engine thread and must
/// not block (post the work elsewhere).
struct Job {
  std::vector<int32_t> prompt_ids;           ///< decoder prompt
  std::vector<std::vector<int32_t>> chunks;  ///< encoder chunks (may be empty)
  std::vector<std::string> chunk_ids;  ///< passage id per chunk (store/cache lookups; may be "")
  SamplingOptions sampling;            ///< decoding settings
  Clock::time_point deadline = Clock::time_point::max();  ///< past it the job ends as Deadline
  std::function<void(std::string)> on_text;               ///< streamed text (empty: not streaming)
  std::function<void(JobResult)> on_done;                 ///< called exactly once
  std::atomic<bool> cancelled{false};  ///< set by the connection when the client is gone
  Clock::time_point submitted;         ///< set by submit()
};

/// Settings of the loop.
struct EngineOptions {
  int max_batch = 8;     ///< sequences stepped together
  int max_queue = 64;    ///< reservations (admitted, not yet running) before try_reserve() fails
  bool batching = true;  ///< false: one sequence at a time
  std::chrono::milliseconds idle_tick{100};  ///< heartbeat period while idle (for /readyz)
};

/// The continuous-batching loop on its own thread.
class EngineLoop {
 public:
  /// Binds the model (used only from the loop's thread) and the tokenizer.
  EngineLoop(CepeModel& model, const Tokenizer& tokenizer, EngineOptions options, Metrics* metrics);
  /// Stops the loop (see stop()).
  ~EngineLoop();

  /// Starts the thread.
  void start();
  /// Ends every queued and running job as Shutdown and joins the thread.
  void stop();

  /// Reserves a queue place for a request about to be prepared; false when the queue is full
  /// (answer 429). Every successful reservation ends in exactly one submit() or release().
  bool try_reserve();
  /// Gives back a reservation that will not be submitted.
  void release();
  /// Queues a job under a reservation; after stop() it ends at once as Shutdown.
  void submit(std::shared_ptr<Job> job);
  /// Wakes the loop so it notices a cancelled job now rather than at the next step.
  void wake();

  /// Sequences in the running batch.
  int running() const { return running_.load(); }
  /// Reservations: requests admitted but not yet running (preparing or queued).
  int reserved() const { return reserved_.load(); }
  /// Steps run so far.
  uint64_t steps() const { return steps_.load(); }
  /// When the loop last went round (stepped or idled); for /readyz.
  Clock::time_point last_tick() const;
  /// True between start() and stop().
  bool alive() const { return alive_.load(); }
  /// The options in use.
  const EngineOptions& options() const { return options_; }
  /// Where passages' states come from; set its store/cache before start().
  qa::EncoderStates& encoder_states() { return encoder_states_; }

 private:
  struct Active;
  void run();
  void admit(std::vector<Active>& active);
  void finish(Active& a, JobOutcome outcome, const std::string& error = "");
  void end_queued(std::shared_ptr<Job> job, JobOutcome outcome);
  void deliver();
  // Batch size and cache bytes of the running sequences to the metrics; then deliver().
  void publish(const std::vector<Active>& active);

  CepeModel& model_;
  const Tokenizer& tokenizer_;
  EngineOptions options_;
  Metrics* metrics_;
  qa::EncoderStates encoder_states_;

  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::shared_ptr<Job>> queue_;
  bool stopping_ = false;
  std::thread thread_;
  std::atomic<bool> alive_{false};
  std::atomic<int> reserved_{0};
  std::atomic<int> running_{0};
  std::atomic<uint64_t> steps_{0};
  std::atomic<int64_t> last_tick_ns_{0};
  // Results of finished sequences, handed to their on_done after the gauges are updated (engine
  // thread only).
  std::vector<std::pair<std::function<void(JobResult)>, JobResult>> done_;
};

}  // namespace cepe::server
