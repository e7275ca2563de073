// Prometheus metrics of the server, rendered in the text exposition format by GET /metrics.
#pragma once

#include <array>
#include <atomic>
#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "qa/scheduler.h"

namespace cepe::server {

/// A cumulative histogram with fixed bucket bounds (seconds).
class Histogram {
 public:
  /// Upper bounds, ascending; +Inf is implicit.
  explicit Histogram(std::vector<double> bounds);
  /// Records one observation.
  void observe(double value);
  /// Appends `name_bucket`, `name_sum` and `name_count` lines with `labels` ("" or `k="v",...`).
  void render(std::string& out, const std::string& name, const std::string& labels) const;
  /// Number of observations.
  uint64_t count() const;

 private:
  std::vector<double> bounds_;
  mutable std::mutex mu_;
  std::vector<uint64_t> counts_;  // per bucket, not cumulative; last is +Inf
  double sum_ = 0;
  uint64_t count_ = 0;
};

/// Every metric the server exports. Counters and gauges are atomics; labelled series sit behind a
/// mutex (one lock per finished request). The scheduler reports through its SchedulerMetrics side.
class Metrics : public qa::SchedulerMetrics {
 public:
  Metrics();
  /// A finished HTTP request: `route` is one of the known routes or "other".
  void request_done(const std::string& route, int status, double seconds);
  /// Retrieval of one request took `seconds`.
  void retrieval(double seconds) { retrieval_.observe(seconds); }
  /// One engine step over `batch` sequences took `seconds`.
  void engine_step(int batch, double seconds);
  /// Time a request waited in the queue before joining the batch.
  void queue_wait(double seconds) { queue_wait_.observe(seconds); }

  /// SchedulerMetrics: the queue_depth gauge.
  void on_queue_depth(int64_t depth) override { queue_depth.store(depth); }
  /// SchedulerMetrics: the batch_size and cache_bytes gauges.
  void on_batch(int64_t sequences, int64_t bytes) override {
    batch_size.store(sequences);
    cache_bytes.store(bytes);
  }
  /// SchedulerMetrics: the queue wait histogram.
  void on_queue_wait(double seconds) override { queue_wait(seconds); }
  /// SchedulerMetrics: the step histogram and counters.
  void on_engine_step(int batch, double seconds) override { engine_step(batch, seconds); }
  /// SchedulerMetrics: prompt and encoder token counters.
  void on_joined(int64_t prompt, int64_t encoder) override {
    prompt_tokens.fetch_add(static_cast<uint64_t>(prompt));
    encoder_tokens.fetch_add(static_cast<uint64_t>(encoder));
  }
  /// SchedulerMetrics: generated tokens, cancellations and deadlines.
  void on_ended(qa::JobOutcome outcome, int64_t generated) override {
    generated_tokens.fetch_add(static_cast<uint64_t>(generated));
    if (outcome == qa::JobOutcome::Deadline) deadlines.fetch_add(1);
    if (outcome == qa::JobOutcome::Cancelled) cancelled.fetch_add(1);
  }
  /// SchedulerMetrics: the encoder-state store and cache counters and gauges.
  void on_encoder_states(const qa::EncoderStateCounters& c, const qa::EncodedPassageCache* cache,
                         int64_t sequence_state_bytes) override {
    sequence_encoder_state_bytes.store(sequence_state_bytes);
    encoder_store_hits.store(c.store_hits.load());
    encoder_cache_hits.store(c.cache_hits.load());
    encoder_live_passages.store(c.live_passages.load());
    if (cache) {
      encoder_cache_misses.store(cache->misses());
      encoder_cache_evictions.store(cache->evictions());
      encoder_cache_bytes.store(static_cast<int64_t>(cache->bytes()));
    }
  }

  std::atomic<int64_t> queue_depth{0};  ///< admitted requests not yet in the batch
  std::atomic<int64_t> batch_size{0};   ///< sequences in the running batch
  std::atomic<int64_t> cache_bytes{0};  ///< caches held by the running sequences
  std::atomic<int64_t> sequence_encoder_state_bytes{
      0};                                            ///< of cache_bytes: encoder states (absorbed)
  std::atomic<uint64_t> encoder_store_hits{0};       ///< passages read from the state store
  std::atomic<uint64_t> encoder_cache_hits{0};       ///< passages read from the state cache
  std::atomic<uint64_t> encoder_cache_misses{0};     ///< cache lookups that missed
  std::atomic<uint64_t> encoder_cache_evictions{0};  ///< cache entries evicted
  std::atomic<int64_t> encoder_cache_bytes{0};       ///< bytes the state cache holds
  std::atomic<uint64_t> encoder_live_passages{0};    ///< passages encoded per request
  std::atomic<int64_t> in_flight{0};                 ///< requests being handled
  std::atomic<int64_t> connections{0};               ///< open connections
  std::atomic<uint64_t> generated_tokens{0};         ///< tokens generated, all requests
  std::atomic<uint64_t> prompt_tokens{0};            ///< decoder prompt tokens prefilled
  std::atomic<uint64_t> encoder_tokens{0};           ///< encoder tokens encoded
  std::atomic<uint64_t> cancelled{0};                ///< generations cancelled (client gone)
  std::atomic<uint64_t> deadlines{0};                ///< generations stopped by the deadline
  std::atomic<uint64_t> rejected{0};                 ///< requests refused with 429
  std::atomic<uint64_t> connections_refused{0};      ///< connections closed at accept (limits)
  std::atomic<int> ready{0};                         ///< 1 while /readyz answers 200
  std::atomic<int64_t> index_passages{0};            ///< passages of the index served (0: none)
  std::atomic<uint64_t> index_reloads{0};  ///< indexes swapped in by Server::set_retriever()

  /// The whole exposition text.
  std::string render() const;

 private:
  mutable std::mutex mu_;
  std::map<std::pair<std::string, int>, uint64_t> requests_;
  std::map<std::string, Histogram> latency_;
  Histogram retrieval_;
  Histogram step_;
  Histogram queue_wait_;
  std::atomic<uint64_t> steps_{0};
  std::atomic<uint64_t> stepped_sequences_{0};
};

}  // namespace cepe::server
