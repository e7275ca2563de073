// `cepe serve`'s HTTP server: Boost.Beast over an IO thread pool, retrieval and tokenisation on a
// worker pool, generation on the scheduler's thread (qa/scheduler.h). The header keeps Beast out
// of its includers.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "config/server_config.h"
#include "engine/models/cepe_llama.h"
#include "engine/tokenizer.h"
#include "index/open_index.h"
#include "qa/scheduler.h"
#include "retriever/retriever.h"
#include "server/log.h"
#include "server/metrics.h"

namespace cepe::server {

// The server's names for the QA scheduler's types (the scheduler lives in qa/).
using Clock = qa::Clock;
using EngineLoop = qa::Scheduler;
using EngineOptions = qa::SchedulerOptions;
using Job = qa::Job;
using JobOutcome = qa::JobOutcome;
using JobResult = qa::JobResult;

/// What the server answers with, loaded by the caller; everything must outlive the server.
struct Resources {
  CepeModel* model = nullptr;            ///< the model (used by the engine thread only)
  const Tokenizer* tokenizer = nullptr;  ///< its tokenizer
  /// The index (null: requests must bring passages); Server::set_retriever() replaces it.
  std::shared_ptr<const index::IndexRetriever> retriever;
  std::string model_name;                                    ///< reported as "model"
  std::shared_ptr<const index::EncoderStore> encoder_store;  ///< passage states (may be null)
  std::shared_ptr<qa::EncodedPassageCache> encoder_cache;    ///< LRU of encoded passages (or null)
  uint64_t encoder_fingerprint = 0;                          ///< the model's, for cache keys
};

/// The server. start() listens at once (so /healthz answers while the model loads); attach()
/// hands it the model and starts the engine; /readyz turns 200 after that.
class Server {
 public:
  /// Checks the config; `logger` may be null (no logs).
  Server(config::ServerConfig config, Logger* logger);
  /// Stops at once if still running.
  ~Server();

  /// Binds host:port and starts the IO and retrieval threads; throws when the bind fails.
  void start();
  /// The bound port (useful with port 0).
  uint16_t port() const;
  /// Starts the engine over loaded resources; /ask is answered 503 before this.
  void attach(const Resources& resources);
  /// How far the model's load has come (bytes of weights read, of `total`): /readyz says it
  /// until attach().
  void set_load_progress(uint64_t done, uint64_t total);
  /// Replaces the accepted API keys (requests after this call see the new ones); throws when
  /// `keys` is empty or the server started without keys (a reload never turns authentication
  /// on or off).
  void set_api_keys(std::vector<std::string> keys);
  /// Replaces the index the server retrieves from (a grown or rebuilt one, after SIGHUP):
  /// requests prepared after this call search it, those already retrieving finish on the old
  /// one, which lives until the last of them lets it go. Throws when the server started without
  /// an index or has no model attached yet.
  void set_retriever(std::shared_ptr<const index::IndexRetriever> retriever);
  /// Replaces the encoder-state store (one `cepe index encode` wrote for a grown index): the
  /// scheduler takes it before its next round; /v1/info reports it.
  void set_encoder_store(std::shared_ptr<const index::EncoderStore> store);
  /// Graceful stop: refuse new connections and requests, let in-flight requests finish for up to
  /// `grace`, then cancel what is left and stop every thread. True when nothing was cut off.
  bool shutdown(std::chrono::milliseconds grace);

  /// True when /readyz would answer 200.
  bool ready() const;
  /// Requests being handled right now.
  int64_t in_flight() const;
  /// The engine (null before attach()).
  const EngineLoop* engine() const;
  /// The metrics.
  Metrics& metrics();
  /// The config in use.
  const config::ServerConfig& config() const;

  class Impl;

 private:
  std::unique_ptr<Impl> impl_;
};

}  // namespace cepe::server
