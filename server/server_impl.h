// The server's shared state (Server::Impl), seen by the connections (connection.cpp), the route
// handlers (router.cpp, generate.cpp) and the Server facade (http_server.cpp). Asio, no Beast.
#pragma once

#include <atomic>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/strand.hpp>
#include <boost/asio/thread_pool.hpp>
#include <condition_variable>
#include <cstdio>
#include <ctime>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "server/request.h"
#include "server/server.h"

namespace cepe::server {

/// The Server header and /v1/info's "server".
inline constexpr const char* kServerName = "cepe-qa/0.1";

/// The server's state: config, limits, metrics, the attached model and index, the IO context and
/// its threads, the retrieval pool, and the per-client connection counts.
class Server::Impl {
 public:
  /// Takes the config; starts nothing.
  Impl(config::ServerConfig c, Logger* l)
      : cfg(std::move(c)), log(l), acceptor(boost::asio::make_strand(ioc)) {
    limits.max_k = cfg.max_k;
    limits.default_k = cfg.default_k;
    limits.max_new_tokens = cfg.max_new_tokens;
    limits.default_max_new_tokens = cfg.default_max_new_tokens;
    limits.max_question_chars = cfg.max_question_chars;
    limits.max_stop = cfg.max_stop;
    limits.max_stop_chars = cfg.max_stop_chars;
    limits.max_json_depth = cfg.max_json_depth;
    limits.max_logprobs = cfg.max_logprobs;
    limits.default_stop = cfg.default_stop;
    std::random_device rd;
    char buf[32];
    std::snprintf(buf, sizeof buf, "%08x", rd());
    id_prefix = buf;
  }

  /// Binds, listens and starts the IO threads and the retrieval pool (Server::start()).
  void start();
  /// Accepts the next connection (on the acceptor's strand).
  void do_accept();
  /// Server::shutdown().
  bool shutdown(std::chrono::milliseconds grace);
  /// True when /readyz answers 200; otherwise `why` says what is missing.
  bool ready(std::string* why) const;
  /// A fresh request id: this process's random prefix and a counter.
  std::string next_request_id() {
    return id_prefix + "-" + std::to_string(id_counter.fetch_add(1) + 1);
  }
  /// Counts a request as finished and wakes a draining shutdown().
  void request_finished() {
    metrics.in_flight.fetch_sub(1);
    std::lock_guard<std::mutex> lock(drain_mu);
    drain_cv.notify_all();
  }
  /// The engine once attach() published it (acquire: `res` is then safe to read), else null.
  EngineLoop* engine() const { return engine_ptr.load(std::memory_order_acquire); }
  /// The /v1/info body.
  std::string info_json() const;
  /// The accepted API keys now (a snapshot).
  std::shared_ptr<const std::vector<std::string>> api_keys() const {
    std::lock_guard<std::mutex> lock(keys_mu);
    return keys;
  }
  /// The index now served (a snapshot that keeps the one a request started on alive).
  std::shared_ptr<const index::IndexRetriever> retriever() const {
    std::lock_guard<std::mutex> lock(retriever_mu);
    return res.retriever;
  }
  /// Counts a new connection from `address`; false (nothing counted) when it has too many.
  bool admit_client(const std::string& address) {
    std::lock_guard<std::mutex> lock(clients_mu);
    int& n = clients[address];
    if (n >= cfg.max_connections_per_client) {
      if (n == 0) clients.erase(address);
      return false;
    }
    ++n;
    return true;
  }
  /// Forgets one connection of `address`.
  void release_client(const std::string& address) {
    std::lock_guard<std::mutex> lock(clients_mu);
    auto it = clients.find(address);
    if (it != clients.end() && --it->second <= 0) clients.erase(it);
  }

  config::ServerConfig cfg;  ///< the config in use
  AskLimits limits;          ///< the request limits taken from it
  Logger* log;               ///< where request and server logs go (may be null)
  // Declared before the io_context: connections destroyed with it still count and signal here.
  Metrics metrics;                               ///< the counters /metrics renders
  std::mutex drain_mu;                           ///< guards the drain wait
  std::condition_variable drain_cv;              ///< signalled as requests finish
  Resources res;                                 ///< what attach() handed over
  std::unique_ptr<EngineLoop> engine_owner;      ///< the scheduler, once attached
  std::atomic<EngineLoop*> engine_ptr{nullptr};  ///< published by attach() (release)
  boost::asio::io_context ioc;                   ///< the IO threads' context
  /// Keeps ioc.run() going with nothing to do.
  std::optional<boost::asio::executor_work_guard<boost::asio::io_context::executor_type>> work;
  boost::asio::ip::tcp::acceptor acceptor;                  ///< the listening socket
  std::unique_ptr<boost::asio::steady_timer> accept_retry;  ///< pause after a failed accept
  std::vector<std::thread> io_threads;                      ///< cfg.io_threads running ioc
  std::unique_ptr<boost::asio::thread_pool>
      pool;                           ///< the retrieval pool (retrieve, plan, tokenize)
  std::atomic<bool> draining{false};  ///< shutdown() began: refuse new work
  std::atomic<int> searches{0};  ///< /search requests posted to the retrieval pool, not yet done
  std::atomic<uint64_t> load_done{0}, load_total{0};  ///< Server::set_load_progress, in bytes
  std::atomic<bool> stopped{false};                   ///< shutdown() ran
  bool started = false;                               ///< start() ran
  uint16_t bound_port = 0;                            ///< the port bound
  std::string id_prefix;                              ///< request ids' random prefix
  std::atomic<uint64_t> id_counter{0};                ///< request ids' counter
  int64_t started_unix = static_cast<int64_t>(std::time(nullptr));  ///< "created" of /v1/models
  /// Guards `keys`.
  mutable std::mutex keys_mu;
  /// The accepted API keys: cfg.api_keys at start, replaced whole by Server::set_api_keys().
  std::shared_ptr<const std::vector<std::string>> keys =
      std::make_shared<const std::vector<std::string>>(cfg.api_keys);
  /// Guards res.retriever and res.encoder_store, which Server::set_retriever() and
  /// set_encoder_store() replace after attach().
  mutable std::mutex retriever_mu;
  std::mutex clients_mu;                         ///< guards `clients`
  std::unordered_map<std::string, int> clients;  ///< open connections per client IP address
};

}  // namespace cepe::server
