// The server as its owner sees it (server.h): listening and accepting (each connection then
// served by connection.h), readiness, graceful shutdown, attaching the model and replacing the
// index, the encoder store and the API keys while serving. Requests are routed by router.h; the
// generating routes are answered by generate.h.
#include <boost/asio/dispatch.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/strand.hpp>
#include <boost/asio/thread_pool.hpp>
#include <future>

#include "common/error.h"
#include "server/connection.h"
#include "server/info.h"
#include "server/server.h"
#include "server/server_impl.h"

namespace cepe::server {

namespace net = boost::asio;
using tcp = net::ip::tcp;
using error_code = boost::system::error_code;

void Server::Impl::start() {
  error_code ec;
  const auto address = net::ip::make_address(cfg.host, ec);
  CEPE_CHECK(!ec, "config: 'host' " << cfg.host << " is not an IP address: " << ec.message());
  const tcp::endpoint ep(address, static_cast<uint16_t>(cfg.port));
  acceptor.open(ep.protocol(), ec);
  CEPE_CHECK(!ec, "cannot open a socket: " << ec.message());
  acceptor.set_option(net::socket_base::reuse_address(true), ec);
  acceptor.bind(ep, ec);
  CEPE_CHECK(!ec, "cannot listen on " << cfg.host << ":" << cfg.port << ": " << ec.message());
  acceptor.listen(net::socket_base::max_listen_connections, ec);
  CEPE_CHECK(!ec, "cannot listen on " << cfg.host << ":" << cfg.port << ": " << ec.message());
  bound_port = acceptor.local_endpoint().port();
  accept_retry = std::make_unique<net::steady_timer>(acceptor.get_executor());
  work.emplace(ioc.get_executor());
  pool = std::make_unique<net::thread_pool>(static_cast<size_t>(cfg.retrieval_threads));
  net::dispatch(acceptor.get_executor(), [this] { do_accept(); });
  for (int i = 0; i < cfg.io_threads; ++i) {
    io_threads.emplace_back([this] {
      for (;;) {
        try {
          ioc.run();
          return;
        } catch (const std::exception& e) {
          // A handler threw: log it and keep the thread serving.
          LogLine("error", "io_exception").str("what", e.what()).write(log);
        }
      }
    });
  }
  started = true;
}

void Server::Impl::do_accept() {
  acceptor.async_accept(net::make_strand(ioc), [this](error_code ec, tcp::socket socket) {
    if (!acceptor.is_open() || ec == net::error::operation_aborted) return;
    if (ec) {
      // Out of descriptors and the like: pause instead of spinning on the error.
      LogLine("warn", "accept_failed").str("what", ec.message()).write(log);
      accept_retry->expires_after(std::chrono::milliseconds(50));
      accept_retry->async_wait([this](error_code) {
        if (acceptor.is_open()) do_accept();
      });
      return;
    }
    error_code peer_ec;
    const auto peer = socket.remote_endpoint(peer_ec);
    std::string client = peer_ec ? std::string("?") : peer.address().to_string();
    if (metrics.connections.load() >= cfg.max_connections || !admit_client(client)) {
      // Closed at once, so idle sockets of one client cannot lock the others out.
      metrics.connections_refused.fetch_add(1);
      error_code ignored;
      socket.close(ignored);
    } else {
      socket.set_option(tcp::no_delay(true), ec);
      serve_connection(std::move(socket), *this, std::move(client));
    }
    do_accept();
  });
}

bool Server::Impl::ready(std::string* why) const {
  EngineLoop* e = engine();
  if (draining.load()) {
    *why = "the server is shutting down";
    return false;
  }
  if (!e || !e->alive()) {
    *why = "the model is not loaded yet";
    if (const uint64_t total = load_total.load(); !e && total)
      *why += " (" + std::to_string(load_done.load() >> 20) + " of " + std::to_string(total >> 20) +
              " MB of weights read)";
    return false;
  }
  const auto since = Clock::now() - e->last_tick();
  if (since > std::chrono::milliseconds(cfg.ready_stall_ms)) {
    *why = "the engine loop has not stepped for " +
           std::to_string(std::chrono::duration_cast<std::chrono::milliseconds>(since).count()) +
           " ms";
    return false;
  }
  return true;
}

std::string Server::Impl::info_json() const {
  // `res` is written by attach() before it publishes the engine; reading it is safe only after
  // the acquire that sees the engine (as /ask does). Before that nothing is loaded.
  static const Resources kNothing;
  if (engine() == nullptr) return server_info_json(kNothing, cfg, kServerName);
  Resources now;
  {
    // res.retriever and res.encoder_store change under this lock; the rest is fixed since
    // attach().
    std::lock_guard<std::mutex> lock(retriever_mu);
    now = res;
  }
  return server_info_json(now, cfg, kServerName);
}

bool Server::Impl::shutdown(std::chrono::milliseconds grace) {
  if (!started || stopped.exchange(true)) return true;
  draining.store(true);
  metrics.ready.store(0);
  {
    std::promise<void> closed;
    net::dispatch(acceptor.get_executor(), [this, &closed] {
      error_code ec;
      acceptor.close(ec);
      accept_retry->cancel();
      closed.set_value();
    });
    closed.get_future().wait();
  }
  auto idle = [this] { return metrics.in_flight.load() == 0; };
  bool clean;
  {
    std::unique_lock<std::mutex> lock(drain_mu);
    clean = drain_cv.wait_for(lock, grace, idle);
  }
  LogLine("info", "shutdown")
      .flag("clean", clean)
      .num("in_flight", metrics.in_flight.load())
      .write(log);
  // What is left after the grace period is cancelled; its clients get a 503 (or an error event).
  pool->join();
  if (engine_owner) engine_owner->stop();
  {
    std::unique_lock<std::mutex> lock(drain_mu);
    drain_cv.wait_for(lock, std::chrono::seconds(2), idle);
  }
  work.reset();
  ioc.stop();
  for (auto& t : io_threads) t.join();
  io_threads.clear();
  return clean;
}

// ---------------------------------------------------------------------------------------------

Server::Server(config::ServerConfig config, Logger* logger)
    : impl_(std::make_unique<Impl>(std::move(config), logger)) {}

Server::~Server() {
  impl_->shutdown(std::chrono::milliseconds(0));
}

void Server::start() {
  impl_->start();
}

uint16_t Server::port() const {
  return impl_->bound_port;
}

void Server::attach(const Resources& resources) {
  CEPE_CHECK(resources.model && resources.tokenizer, "the server needs a model and a tokenizer");
  CEPE_CHECK(!impl_->engine(), "the server already has a model");
  impl_->res = resources;
  impl_->metrics.index_passages.store(
      resources.retriever ? static_cast<int64_t>(resources.retriever->manifest().passages) : 0);
  EngineOptions eo;
  eo.max_batch = impl_->cfg.max_batch;
  eo.max_queue = impl_->cfg.max_queue;
  eo.batching = impl_->cfg.batching;
  eo.encode_tokens_per_step = impl_->cfg.encode_tokens_per_step;
  impl_->engine_owner =
      std::make_unique<EngineLoop>(*resources.model, *resources.tokenizer, eo, &impl_->metrics);
  impl_->engine_owner->encoder_states().use_store(resources.encoder_store);
  impl_->engine_owner->encoder_states().use_cache(resources.encoder_cache,
                                                  resources.encoder_fingerprint);
  impl_->engine_owner->start();
  impl_->engine_ptr.store(impl_->engine_owner.get(), std::memory_order_release);
  impl_->metrics.ready.store(1);
}

bool Server::shutdown(std::chrono::milliseconds grace) {
  return impl_->shutdown(grace);
}

void Server::set_api_keys(std::vector<std::string> keys) {
  CEPE_CHECK(!impl_->cfg.api_keys.empty(),
             "API keys can be replaced only on a server that started with some");
  CEPE_CHECK(!keys.empty(), "refusing to replace the API keys with none (that would serve open)");
  for (const auto& k : keys) CEPE_CHECK(!k.empty(), "an API key is empty");
  auto next = std::make_shared<const std::vector<std::string>>(std::move(keys));
  std::lock_guard<std::mutex> lock(impl_->keys_mu);
  impl_->keys = std::move(next);
}

void Server::set_retriever(std::shared_ptr<const index::IndexRetriever> retriever) {
  CEPE_CHECK(impl_->engine(), "the server has no model attached yet");
  CEPE_CHECK(impl_->retriever() && retriever,
             "the index can be replaced only on a server that started with one");
  const auto passages = static_cast<int64_t>(retriever->manifest().passages);
  {
    std::lock_guard<std::mutex> lock(impl_->retriever_mu);
    impl_->res.retriever = std::move(retriever);
  }
  impl_->metrics.index_passages.store(passages);
  impl_->metrics.index_reloads.fetch_add(1);
}

void Server::set_encoder_store(std::shared_ptr<const index::EncoderStore> store) {
  CEPE_CHECK(impl_->engine_owner, "the server has no model attached yet");
  impl_->engine_owner->replace_store(store);
  std::lock_guard<std::mutex> lock(impl_->retriever_mu);
  impl_->res.encoder_store = std::move(store);
}

void Server::set_load_progress(uint64_t done, uint64_t total) {
  impl_->load_done.store(done);
  impl_->load_total.store(total);
}

bool Server::ready() const {
  std::string why;
  return impl_->ready(&why);
}

int64_t Server::in_flight() const {
  return impl_->metrics.in_flight.load();
}

const EngineLoop* Server::engine() const {
  return impl_->engine();
}

Metrics& Server::metrics() {
  return impl_->metrics;
}

const config::ServerConfig& Server::config() const {
  return impl_->cfg;
}

}  // namespace cepe::server
