// The HTTP side of the server: one Session per connection on its own strand, reading requests with
// Beast's parser under header/body deadlines, routing them (routes.h), checking access (access.h),
// and answering the generating routes through the retrieval pool (ask.h: retrieve and plan) and
// the scheduler, streaming with Server-Sent Events (sse.h). While a request waits for the engine,
// a one-byte read on the raw socket watches for the client going away, so its generation is
// cancelled at once. /v1/info is rendered by info.h.
#include <array>
#include <boost/asio/dispatch.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/strand.hpp>
#include <boost/asio/thread_pool.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <cctype>
#include <cmath>
#include <condition_variable>
#include <cstring>
#include <ctime>
#include <deque>
#include <future>
#include <limits>
#include <optional>
#include <random>
#include <thread>
#include <unordered_map>

#include "common/error.h"
#include "server/access.h"
#include "server/ask.h"
#include "server/http_date.h"
#include "server/info.h"
#include "server/openai.h"
#include "server/request.h"
#include "server/routes.h"
#include "server/server.h"
#include "server/sse.h"

namespace cepe::server {

namespace beast = boost::beast;
namespace http = beast::http;
namespace net = boost::asio;
using tcp = net::ip::tcp;

namespace {

constexpr const char* kServerName = "cepe-qa/0.1";

// Client-supplied request ids are echoed only when short and plain, so they are safe in headers
// and logs.
bool valid_request_id(std::string_view id) {
  if (id.empty() || id.size() > 128) return false;
  for (char c : id) {
    if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_' || c == '.' ||
          c == ':'))
      return false;
  }
  return true;
}

}  // namespace

class Session;

class Server::Impl {
 public:
  Impl(config::ServerConfig c, Logger* l)
      : cfg(std::move(c)), log(l), acceptor(net::make_strand(ioc)) {
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

  void start();
  void do_accept();
  bool shutdown(std::chrono::milliseconds grace);
  bool ready(std::string* why) const;
  std::string next_request_id() {
    return id_prefix + "-" + std::to_string(id_counter.fetch_add(1) + 1);
  }
  void request_finished() {
    metrics.in_flight.fetch_sub(1);
    std::lock_guard<std::mutex> lock(drain_mu);
    drain_cv.notify_all();
  }
  EngineLoop* engine() const { return engine_ptr.load(std::memory_order_acquire); }
  std::string info_json() const;

  config::ServerConfig cfg;
  AskLimits limits;
  Logger* log;
  // Declared before the io_context: sessions destroyed with it still count and signal here.
  Metrics metrics;
  std::mutex drain_mu;
  std::condition_variable drain_cv;
  Resources res;
  std::unique_ptr<EngineLoop> engine_owner;
  std::atomic<EngineLoop*> engine_ptr{nullptr};
  net::io_context ioc;
  std::optional<net::executor_work_guard<net::io_context::executor_type>> work;
  tcp::acceptor acceptor;
  std::unique_ptr<net::steady_timer> accept_retry;
  std::vector<std::thread> io_threads;
  std::unique_ptr<net::thread_pool> pool;
  std::atomic<bool> draining{false};
  std::atomic<int> searches{0};  // /search requests posted to the retrieval pool, not yet done
  std::atomic<uint64_t> load_done{0}, load_total{0};  // Server::set_load_progress, in bytes
  std::atomic<bool> stopped{false};
  bool started = false;
  uint16_t bound_port = 0;
  std::string id_prefix;
  std::atomic<uint64_t> id_counter{0};
  int64_t started_unix = static_cast<int64_t>(std::time(nullptr));  // "created" of /v1/models
  // The accepted API keys: cfg.api_keys at start, replaced whole by Server::set_api_keys().
  mutable std::mutex keys_mu;
  std::shared_ptr<const std::vector<std::string>> keys =
      std::make_shared<const std::vector<std::string>>(cfg.api_keys);
  std::shared_ptr<const std::vector<std::string>> api_keys() const {
    std::lock_guard<std::mutex> lock(keys_mu);
    return keys;
  }
  // The index and the encoder store: res.retriever and res.encoder_store at attach(), replaced
  // by Server::set_retriever() / set_encoder_store() under this lock; the retriever is read
  // through retriever() (a snapshot that keeps the one a request started on alive).
  mutable std::mutex retriever_mu;
  std::shared_ptr<const index::IndexRetriever> retriever() const {
    std::lock_guard<std::mutex> lock(retriever_mu);
    return res.retriever;
  }
  // Open connections per client IP address (max_connections_per_client).
  std::mutex clients_mu;
  std::unordered_map<std::string, int> clients;
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
};

// ---------------------------------------------------------------------------------------------
// One connection.
class Session : public std::enable_shared_from_this<Session> {
 public:
  // `client` is the peer's address, already counted by Impl::admit_client().
  Session(tcp::socket&& socket, Server::Impl& srv, std::string client)
      : stream_(std::move(socket)),
        srv_(srv),
        // The read buffer holds at most a header (or a chunked body's trailers, which Beast
        // buffers whole) plus a little read-ahead: a bigger one fails the read with
        // buffer_overflow instead of growing without bound.
        buffer_(static_cast<size_t>(srv.cfg.max_header_bytes) + kReadAheadBytes),
        client_(std::move(client)) {
    beast::error_code ec;
    const auto ep = stream_.socket().remote_endpoint(ec);
    if (!ec) remote_ = ep.address().to_string() + ":" + std::to_string(ep.port());
    srv_.metrics.connections.fetch_add(1);
  }
  ~Session() {
    if (job_) job_->cancelled.store(true);
    if (ask_) ask_->gone.store(true);
    // A request whose connection died without an answer still counts as finished, so the drain
    // on shutdown never waits for it.
    if (open_) {
      if (log_error_.empty()) log_error_ = "client_closed";
      finish_request(499);
    }
    srv_.metrics.connections.fetch_sub(1);
    srv_.release_client(client_);
  }

  void run() {
    net::dispatch(stream_.get_executor(), [self = shared_from_this()] { self->read_header(); });
  }

 private:
  using Response = http::response<http::string_body>;
  static constexpr size_t kReadAheadBytes = 4096;

  // ---- reading ----
  // `again`: the same request's header after empty lines were dropped (same deadline).
  void read_header(bool again = false) {
    if (srv_.draining.load() && requests_ > 0) return close();
    parser_.emplace();
    parser_->header_limit(static_cast<uint32_t>(srv_.cfg.max_header_bytes));
    parser_->body_limit(static_cast<uint64_t>(srv_.cfg.max_body_bytes));
    if (!again) {
      empty_line_bytes_ = 0;
      stream_.expires_after(std::chrono::milliseconds(srv_.cfg.header_timeout_ms));
    }
    http::async_read_header(
        stream_, buffer_, *parser_,
        [self = shared_from_this()](beast::error_code ec, size_t) { self->on_header(ec); });
  }

  void on_header(beast::error_code ec) {
    if (ec == http::error::bad_method && drop_empty_lines()) return read_header(true);
    if (ec == http::error::end_of_stream || ec == beast::error::timeout ||
        ec == http::error::partial_message || ec == net::error::operation_aborted ||
        ec == net::error::connection_reset || ec == net::error::eof) {
      return close();  // idle keep-alive ended, slow or vanished client: nothing to answer
    }
    begin_request();
    // Beast checks Content-Length against the body limit while it parses the header.
    if (ec == http::error::body_limit) {
      if (parser_->is_header_done()) fill_request_info(parser_->get());
      return too_large();
    }
    if (ec == http::error::header_limit || ec == http::error::buffer_overflow) {
      return reply_error(http::status::request_header_fields_too_large, "header_too_large",
                         "the request header is larger than " +
                             std::to_string(srv_.cfg.max_header_bytes) + " bytes",
                         true);
    }
    if (ec)
      return reply_error(http::status::bad_request, "bad_request",
                         "malformed HTTP request: " + ec.message(), true);
    auto& req = parser_->get();
    fill_request_info(req);
    // RFC 9112 3.2: an HTTP/1.1 request names its host exactly once.
    if (req.version() == 11 && req.count(http::field::host) != 1) {
      return reply_error(http::status::bad_request, "bad_request",
                         "an HTTP/1.1 request needs exactly one Host header", true);
    }
    const auto length = parser_->content_length();
    if (length && *length > static_cast<uint64_t>(srv_.cfg.max_body_bytes)) return too_large();
    if (beast::iequals(req[http::field::expect], "100-continue")) {
      stream_.expires_after(std::chrono::milliseconds(srv_.cfg.write_timeout_ms));
      static const char kContinue[] = "HTTP/1.1 100 Continue\r\n\r\n";
      net::async_write(stream_, net::buffer(kContinue, sizeof kContinue - 1),
                       [self = shared_from_this()](beast::error_code wec, size_t) {
                         if (wec) return self->abandon(408);
                         self->read_body();
                       });
      return;
    }
    read_body();
  }

  void read_body() {
    stream_.expires_after(std::chrono::milliseconds(srv_.cfg.body_timeout_ms));
    http::async_read(
        stream_, buffer_, *parser_,
        [self = shared_from_this()](beast::error_code ec, size_t) { self->on_body(ec); });
  }

  void on_body(beast::error_code ec) {
    if (ec == http::error::body_limit) return too_large();
    // Only the trailers of a chunked body are buffered whole: they overflowed the buffer.
    if (ec == http::error::buffer_overflow || ec == http::error::header_limit) {
      return reply_error(http::status::request_header_fields_too_large, "header_too_large",
                         "the chunked body's trailers are larger than " +
                             std::to_string(srv_.cfg.max_header_bytes) + " bytes",
                         true);
    }
    if (ec == beast::error::timeout || ec == http::error::end_of_stream ||
        ec == http::error::partial_message || ec == net::error::connection_reset ||
        ec == net::error::eof) {
      return abandon(408);  // the socket is already closed or the client is gone
    }
    if (ec)
      return reply_error(http::status::bad_request, "bad_request",
                         "malformed HTTP request body: " + ec.message(), true);
    stream_.expires_never();
    dispatch_request();
  }

  // Empty lines before a request line are ignored (RFC 9112 2.2: some clients send a CRLF after a
  // POST body). Drops the CR and LF bytes at the front of the buffer; false when there were none,
  // or when more than a header's worth came before one request.
  bool drop_empty_lines() {
    const auto data = buffer_.data();
    const char* p = static_cast<const char*>(data.data());
    size_t n = 0;
    while (n < data.size() && (p[n] == '\r' || p[n] == '\n')) ++n;
    empty_line_bytes_ += n;
    if (n == 0 || empty_line_bytes_ > static_cast<size_t>(srv_.cfg.max_header_bytes)) return false;
    buffer_.consume(n);
    return true;
  }

  void too_large() {
    reply_error(
        http::status::payload_too_large, "body_too_large",
        "the request body is larger than " + std::to_string(srv_.cfg.max_body_bytes) + " bytes",
        true);
  }

  // ---- per-request bookkeeping ----
  void begin_request() {
    ++requests_;
    open_ = true;
    t0_ = Clock::now();
    request_id_ = srv_.next_request_id();
    method_ = "?";
    path_ = "?";
    route_ = "other";
    keep_alive_ = false;
    head_ = false;
    version_ = 11;
    origin_.clear();
    stream_mode_ = false;
    log_error_.clear();
    finish_reason_.clear();
    completion_tokens_ = -1;
    srv_.metrics.in_flight.fetch_add(1);
  }

  void fill_request_info(const http::request<http::string_body>& req) {
    method_ = std::string(req.method_string());
    const std::string_view target(req.target().data(), req.target().size());
    path_ = std::string(request_path(target));
    route_ = route_of(path_);
    keep_alive_ = req.keep_alive();
    head_ = req.method() == http::verb::head;
    version_ = req.version();
    origin_ = std::string(req[http::field::origin]);
    const std::string_view id(req["X-Request-Id"].data(), req["X-Request-Id"].size());
    if (valid_request_id(id)) request_id_ = std::string(id);
  }

  void finish_request(int status) {
    if (!open_) return;
    open_ = false;
    const double ms = ms_since(t0_);
    srv_.metrics.request_done(route_, status, ms / 1000.0);
    if (srv_.cfg.log_requests && srv_.log) {
      LogLine line("info", "request");
      line.str("request_id", request_id_)
          .str("remote", remote_)
          .str("method", method_)
          .str("path", path_)
          .num("status", status)
          .ms("duration_ms", ms);
      if (generate_api(route_)) line.flag("stream", stream_mode_);
      if (!finish_reason_.empty()) line.str("finish_reason", finish_reason_);
      if (completion_tokens_ >= 0) line.num("completion_tokens", completion_tokens_);
      if (!log_error_.empty()) line.str("error", log_error_);
      line.write(srv_.log);
    }
    srv_.request_finished();
  }

  // Ends a request that cannot be answered (the client is gone or too slow) and the connection.
  void abandon(int status) {
    if (log_error_.empty()) log_error_ = status == 499 ? "client_closed" : "timeout";
    finish_request(status);
    close();
  }

  void close() {
    beast::error_code ec;
    stream_.socket().shutdown(tcp::socket::shutdown_both, ec);
    stream_.socket().close(ec);
  }

  // After an error answered before the body was read, closing at once would make the kernel
  // reset the connection and the client could lose the answer: stop sending, then read and drop
  // what it still sends, for a bounded time and amount.
  void linger_close() {
    beast::error_code ec;
    stream_.socket().shutdown(tcp::socket::shutdown_send, ec);
    drain_left_ = 16u << 20;
    stream_.expires_after(std::chrono::seconds(2));
    drain();
  }

  void drain() {
    if (!drain_buf_) drain_buf_ = std::make_unique<std::array<char, 16384>>();
    stream_.async_read_some(net::buffer(*drain_buf_),
                            [self = shared_from_this()](beast::error_code ec, size_t n) {
                              if (ec || n >= self->drain_left_) return self->close();
                              self->drain_left_ -= n;
                              self->drain();
                            });
  }

  // ---- responses ----
  void add_common_headers(http::fields& f) {
    f.set(http::field::date, http_date_now());
    f.set(http::field::server, kServerName);
    f.set("X-Request-Id", request_id_);
    if (cors_allowed()) {
      f.set(http::field::access_control_allow_origin, origin_);
      f.set("Access-Control-Expose-Headers", "X-Request-Id, Retry-After");
    }
    if (!srv_.cfg.cors_origins.empty()) f.set(http::field::vary, "Origin");
  }

  bool cors_allowed() const { return origin_allowed(origin_, srv_.cfg.cors_origins); }

  void reply(http::status status, std::string body, const std::string& content_type,
             bool close_after, std::vector<std::pair<std::string, std::string>> extra = {}) {
    if (dead_) return abandon(499);
    res_.emplace(status, version_ == 10 ? 10 : 11);
    add_common_headers(*res_);
    res_->set(http::field::content_type, content_type);
    res_->set(http::field::cache_control, "no-store");
    for (auto& [k, v] : extra) res_->set(k, v);
    res_->body() = std::move(body);
    const bool keep = keep_alive_ && !close_after && !srv_.draining.load();
    res_->keep_alive(keep);
    res_->prepare_payload();
    // A response to HEAD has the header GET would get and no content (RFC 9110 9.3.2): the
    // client reads no body after it, so content sent here would pass for the next response.
    if (head_) res_->body().clear();
    const int code = static_cast<int>(status);
    stream_.expires_after(std::chrono::milliseconds(srv_.cfg.write_timeout_ms));
    http::async_write(
        stream_, *res_,
        [self = shared_from_this(), keep, code, close_after](beast::error_code ec, size_t) {
          self->res_.reset();
          if (ec) return self->abandon(499);
          self->finish_request(code);
          if (close_after) return self->linger_close();
          if (!keep) return self->close();
          self->read_header();
        });
  }

  void reply_json(http::status status, std::string body, bool close_after = false,
                  std::vector<std::pair<std::string, std::string>> extra = {}) {
    reply(status, std::move(body), "application/json", close_after, std::move(extra));
  }

  void reply_error(http::status status, const std::string& code, const std::string& message,
                   bool close_after = false,
                   std::vector<std::pair<std::string, std::string>> extra = {},
                   const std::string& param = "") {
    log_error_ = code;
    reply_json(status,
               openai_route(route_)
                   ? openai_error_json(static_cast<int>(status), code, message, param)
                   : error_json(code, message),
               close_after, std::move(extra));
  }

  void reply_api_error(const ApiError& e) {
    reply_error(static_cast<http::status>(e.status()), e.code(), e.what(), false, {}, e.param());
  }

  // ---- routing ----
  void dispatch_request() {
    const auto& req = parser_->get();
    const http::verb m = req.method();
    if (m == http::verb::options) return preflight();
    if (route_ == "other") {
      return reply_error(http::status::not_found, "not_found", "no route for " + path_);
    }
    const bool post = post_route(route_);
    const bool allowed =
        post ? m == http::verb::post : m == http::verb::get || m == http::verb::head;
    if (!allowed) {
      return reply_error(http::status::method_not_allowed, "method_not_allowed",
                         std::string(req.method_string()) + " is not allowed on " + route_ +
                             " (use " + (post ? "POST" : "GET") + ")",
                         false, {{"Allow", allowed_methods()}});
    }
    if (!probe_route(route_) && !authorized(req)) {
      return reply_error(http::status::unauthorized, "unauthorized",
                         "a valid API key is required (Authorization: Bearer KEY or X-API-Key)",
                         false, {{"WWW-Authenticate", "Bearer"}});
    }
    if (route_ == "/healthz") return reply_json(http::status::ok, "{\"status\":\"ok\"}");
    if (route_ == "/readyz") {
      std::string why;
      if (srv_.ready(&why)) return reply_json(http::status::ok, "{\"status\":\"ready\"}");
      return reply_error(http::status::service_unavailable, "not_ready", why);
    }
    if (route_ == "/metrics") {
      std::string why;
      srv_.metrics.ready.store(srv_.ready(&why) ? 1 : 0);
      return reply(http::status::ok, srv_.metrics.render(), "text/plain; version=0.0.4", false);
    }
    if (route_ == "/v1/info") return reply_json(http::status::ok, srv_.info_json());
    if (route_ == kModelsRoute) {
      // The name is known once the model is attached (acquire, as for /v1/info).
      if (!srv_.engine()) return reply_not_ready();
      return reply_json(http::status::ok,
                        openai_models_json(srv_.res.model_name, srv_.started_unix));
    }
    if (route_ == kSearchRoute) return handle_search(req.body());
    handle_generate(*generate_api(route_), req.body());
  }

  // The Allow header of the current route: GET routes answer HEAD too.
  const char* allowed_methods() const {
    return post_route(route_) ? "POST, OPTIONS" : "GET, HEAD, OPTIONS";
  }

  // 503 while the model (and with it the index) is not attached yet.
  void reply_not_ready() {
    reply_error(http::status::service_unavailable, "not_ready", "the model is still loading", false,
                {{"Retry-After", "5"}});
  }

  // The engine, when the server takes new work; otherwise replies 503 (shutting down, or not
  // ready yet) and returns null.
  EngineLoop* serving_engine() {
    if (srv_.draining.load()) {
      reply_error(http::status::service_unavailable, "shutting_down", "the server is shutting down",
                  true);
      return nullptr;
    }
    EngineLoop* engine = srv_.engine();
    if (!engine) reply_not_ready();
    return engine;
  }

  // 429 with Retry-After: `what` is full.
  void reply_queue_full(const std::string& what) {
    srv_.metrics.rejected.fetch_add(1);
    reply_error(http::status::too_many_requests, "queue_full", what + "; retry later", false,
                {{"Retry-After", std::to_string(srv_.cfg.retry_after_s)}});
  }

  // ---- /search: retrieval alone, on the retrieval pool ----
  void handle_search(const std::string& body) {
    if (!serving_engine()) return;  // the index is attached with the model
    auto req = std::make_shared<AskRequest>();
    try {
      *req = parse_search_request(body, srv_.limits);
    } catch (const ApiError& e) {
      return reply_api_error(e);
    }
    std::shared_ptr<const index::IndexRetriever> retriever = srv_.retriever();
    if (!retriever) {
      return reply_error(http::status::bad_request, "no_index", "this server has no index");
    }
    // Searches waiting for the retrieval pool are bounded like generating requests.
    if (srv_.searches.fetch_add(1) >= srv_.cfg.max_queue) {
      srv_.searches.fetch_sub(1);
      return reply_queue_full("too many searches in progress (" +
                              std::to_string(srv_.cfg.max_queue) + ")");
    }
    const auto deadline = t0_ + std::chrono::milliseconds(srv_.cfg.request_timeout_ms);
    net::post(*srv_.pool, [self = shared_from_this(), req, retriever, deadline,
                           request_id = request_id_] {
      std::string json;
      std::optional<ApiError> error;
      try {
        if (Clock::now() >= deadline) {
          throw ApiError(504, "deadline_exceeded",
                         "the search waited longer than " +
                             std::to_string(self->srv_.cfg.request_timeout_ms) + " ms");
        }
        json = search_json(*req, *retriever, self->srv_.cfg, self->srv_.metrics, request_id);
      } catch (const ApiError& e) {
        error = e;
      } catch (const std::exception& e) {
        error = ApiError(500, "internal", std::string("the search failed: ") + e.what());
      }
      self->srv_.searches.fetch_sub(1);
      net::post(self->stream_.get_executor(), [self, json = std::move(json), error] {
        if (self->dead_) return;
        if (error) return self->reply_api_error(*error);
        self->reply_json(http::status::ok, json);
      });
    });
  }

  bool authorized(const http::request<http::string_body>& req) const {
    const auto auth = req[http::field::authorization];
    const auto x = req["X-API-Key"];
    return key_allowed(request_key(std::string_view(auth.data(), auth.size()),
                                   std::string_view(x.data(), x.size())),
                       *srv_.api_keys());
  }

  void preflight() {
    if (origin_.empty()) {
      // A plain OPTIONS (not CORS): say what the route allows.
      return reply(http::status::no_content, "", "text/plain", false,
                   {{"Allow", allowed_methods()}});
    }
    if (!cors_allowed()) {
      return reply_error(http::status::forbidden, "origin_not_allowed",
                         "origin " + origin_ + " is not allowed");
    }
    reply(http::status::no_content, "", "text/plain", false,
          {{"Access-Control-Allow-Methods", "GET, POST, OPTIONS"},
           {"Access-Control-Allow-Headers", "Content-Type, Authorization, X-API-Key, X-Request-Id"},
           {"Access-Control-Max-Age", "600"}});
  }

  // ---- /ask ----
  void handle_generate(Api api, const std::string& body) {
    EngineLoop* engine = serving_engine();
    if (!engine) return;
    auto st = std::make_shared<AskState>();
    st->api = api;
    try {
      if (api == Api::Ask) {
        st->req = parse_ask_request(body, srv_.limits);
      } else {
        OpenAiRequest o = parse_openai_request(api, body, srv_.limits);
        st->req = std::move(o.ask);
        st->include_usage = o.include_usage;
        st->ids.api = api;
        st->ids.id = (api == Api::Chat ? "chatcmpl-" : "cmpl-") + request_id_;
        st->ids.created = static_cast<int64_t>(std::time(nullptr));
        st->ids.model = srv_.res.model_name;
      }
    } catch (const ApiError& e) {
      return reply_api_error(e);
    }
    stream_mode_ = st->req.stream;
    if (!st->req.passages && !srv_.retriever()) {
      return reply_error(http::status::bad_request, "missing_field",
                         "this server has no index: send 'passages'");
    }
    if (!engine->try_reserve()) {
      return reply_queue_full("the request queue is full (" + std::to_string(srv_.cfg.max_queue) +
                              " waiting)");
    }
    st->request_id = request_id_;
    st->t0 = t0_;
    st->deadline = t0_ + std::chrono::milliseconds(srv_.cfg.request_timeout_ms);
    ask_ = st;
    start_watch();
    net::post(*srv_.pool, [self = shared_from_this(), st] { self->prepare(st); });
  }

  // Runs on the retrieval pool: retrieval, prompt and tokenisation, never on an IO thread.
  void prepare(const std::shared_ptr<AskState>& st) {
    try {
      if (st->gone.load()) throw ApiError(499, "client_closed", "the client closed the connection");
      prepare_ask(*st, srv_.res, srv_.retriever().get(), srv_.cfg, srv_.metrics);
    } catch (const ApiError& e) {
      st->error = e;
    } catch (const std::exception& e) {
      st->error =
          ApiError(500, "internal", std::string("preparing the request failed: ") + e.what());
    }
    net::post(stream_.get_executor(), [self = shared_from_this(), st] { self->on_prepared(st); });
  }

  void on_prepared(const std::shared_ptr<AskState>& st) {
    EngineLoop* engine = srv_.engine();
    if (dead_ || st->error || Clock::now() >= st->deadline) {
      engine->release();
      ask_.reset();
    }
    if (dead_) return abandon(499);
    if (st->error) {
      return stop_watch_then(
          [self = shared_from_this(), e = *st->error] { self->reply_api_error(e); });
    }
    if (Clock::now() >= st->deadline) {
      srv_.metrics.deadlines.fetch_add(1);
      return stop_watch_then([self = shared_from_this()] { self->reply_deadline(); });
    }
    job_ = st->job;
    if (st->req.stream) {
      job_->on_text = [self = shared_from_this()](std::string piece,
                                                  std::vector<TokenLogprob> logprobs) {
        net::post(self->stream_.get_executor(),
                  [self, p = std::move(piece), l = std::move(logprobs)]() mutable {
                    self->on_token(std::move(p), std::move(l));
                  });
      };
    }
    job_->on_done = [self = shared_from_this()](JobResult r) {
      net::post(self->stream_.get_executor(),
                [self, r = std::move(r)]() mutable { self->on_job_done(std::move(r)); });
    };
    if (st->req.stream) begin_stream(*st);
    engine->submit(job_);
  }

  void reply_deadline() {
    reply_error(http::status::gateway_timeout, "deadline_exceeded",
                "the request took longer than " + std::to_string(srv_.cfg.request_timeout_ms) +
                    " ms; its generation was cancelled");
  }

  void on_job_done(JobResult r) {
    job_.reset();
    const std::shared_ptr<AskState> st = std::move(ask_);
    finish_reason_ = r.finish_reason;
    completion_tokens_ = r.completion_tokens;
    if (dead_ || r.outcome == JobOutcome::Cancelled) return abandon(499);
    if (stream_mode_) return end_stream(*st, r);
    switch (r.outcome) {
      case JobOutcome::Finished: {
        std::string body;
        if (st->api == Api::Ask) {
          body = ask_answer_json(*st, r, srv_.res.model_name, /*with_passages=*/true,
                                 srv_.res.tokenizer);
        } else {
          std::string logprobs;
          if (st->req.logprobs >= 0) {
            int64_t text_offset = 0;
            logprobs = openai_logprobs_json(st->api, r.logprobs, *srv_.res.tokenizer, text_offset);
          }
          body = openai_response_json(st->ids, answer_text(r), r.finish_reason, usage_of(r),
                                      passages_json(st->hits), logprobs);
        }
        return stop_watch_then([self = shared_from_this(), body = std::move(body)]() mutable {
          self->reply_json(http::status::ok, std::move(body));
        });
      }
      case JobOutcome::Deadline:
        return stop_watch_then([self = shared_from_this()] { self->reply_deadline(); });
      case JobOutcome::Shutdown:
        return stop_watch_then([self = shared_from_this()] {
          self->reply_error(http::status::service_unavailable, "shutting_down",
                            "the server stopped before the answer was complete", true);
        });
      default:
        return stop_watch_then([self = shared_from_this(), msg = r.error] {
          self->reply_error(http::status::internal_server_error, "internal",
                            "generation failed: " + msg);
        });
    }
  }

  // ---- Server-Sent Events ----
  // The header goes out through Beast's serializer and every event as one chunk of Beast's chunk
  // API (make_chunk / make_chunk_last); an HTTP/1.0 client gets the events unframed, then the
  // connection closes.
  void begin_stream(const AskState& st) {
    chunked_ = version_ != 10;
    sse_res_.emplace(http::status::ok, 11);
    add_common_headers(*sse_res_);
    sse_res_->set(http::field::content_type, "text/event-stream");
    sse_res_->set(http::field::cache_control, "no-store");
    sse_res_->set("X-Accel-Buffering", "no");  // so reverse proxies do not hold events back
    sse_res_->chunked(chunked_);
    sse_keep_ = chunked_ && keep_alive_ && !srv_.draining.load();
    if (!sse_keep_) sse_res_->set(http::field::connection, "close");
    sse_sr_.emplace(*sse_res_);
    header_sent_ = false;
    last_chunk_pending_ = false;
    stream_api_ = st.api;
    stream_logprobs_ = st.req.logprobs >= 0;
    stream_text_offset_ = 0;
    if (st.api != Api::Ask) {
      stream_ids_ = st.ids;
      // The role (chat) and the passages come first, before any text, as /ask's passages event.
      return send_event(nullptr,
                        openai_chunk_json(st.ids, "", true, std::nullopt, passages_json(st.hits)));
    }
    send_event("passages", ask_passages_json(st));
  }

  // `name` null: a data-only event (the OpenAI streams).
  void send_event(const char* name, const std::string& json) {
    out_.push_back(sse_event(name, json));
    if (!writing_) write_next();
  }

  void write_next() {
    if (dead_) return;
    auto on_written = [self = shared_from_this()](beast::error_code ec, size_t) {
      if (ec) {
        self->writing_ = false;
        self->client_gone();
        if (self->stream_ended_) self->abandon(499);
        return;
      }
      self->write_next();
    };
    stream_.expires_after(std::chrono::milliseconds(srv_.cfg.write_timeout_ms));
    if (!header_sent_) {
      writing_ = true;
      header_sent_ = true;
      return http::async_write_header(stream_, *sse_sr_, std::move(on_written));
    }
    if (out_.empty()) {
      if (last_chunk_pending_) {
        writing_ = true;
        last_chunk_pending_ = false;
        return net::async_write(stream_, http::make_chunk_last(), std::move(on_written));
      }
      writing_ = false;
      if (stream_ended_) stream_flushed();
      return;
    }
    writing_ = true;
    // The event leaves the queue now; the write keeps its own copy alive until it completes.
    auto event = std::make_shared<std::string>(std::move(out_.front()));
    out_.pop_front();
    auto done = [event, on_written = std::move(on_written)](beast::error_code ec, size_t n) {
      on_written(ec, n);
    };
    if (chunked_)
      net::async_write(stream_, http::make_chunk(net::buffer(*event)), std::move(done));
    else
      net::async_write(stream_, net::buffer(*event), std::move(done));
  }

  void on_token(std::string piece, const std::vector<TokenLogprob>& logprobs) {
    if (dead_ || stream_ended_) return;
    const Tokenizer& tokenizer = *srv_.res.tokenizer;
    if (stream_api_ != Api::Ask) {
      std::string lp;
      if (stream_logprobs_)
        lp = openai_logprobs_json(stream_api_, logprobs, tokenizer, stream_text_offset_);
      return send_event(nullptr,
                        openai_chunk_json(stream_ids_, piece, false, std::nullopt, "", lp));
    }
    std::string event = "{\"text\":" + json_quote(sanitize_utf8(piece));
    if (stream_logprobs_)
      event.append(",\"logprobs\":").append(logprob_content_json(logprobs, tokenizer));
    send_event("token", event + "}");
  }

  void end_stream(const AskState& st, const JobResult& r) {
    if (st.api != Api::Ask && r.outcome == JobOutcome::Finished) {
      send_event(nullptr, openai_chunk_json(st.ids, "", false, r.finish_reason));
      if (st.include_usage) send_event(nullptr, openai_usage_chunk_json(st.ids, usage_of(r)));
      send_event(nullptr, "[DONE]");
    } else if (r.outcome == JobOutcome::Finished) {
      send_event("done", ask_answer_json(st, r, srv_.res.model_name, /*with_passages=*/false));
    } else {
      std::string code = "internal", message = "generation failed: " + r.error;
      if (r.outcome == JobOutcome::Deadline) {
        code = "deadline_exceeded";
        message = "the request took longer than " + std::to_string(srv_.cfg.request_timeout_ms) +
                  " ms; its generation was cancelled";
      } else if (r.outcome == JobOutcome::Shutdown) {
        code = "shutting_down";
        message = "the server stopped before the answer was complete";
      }
      log_error_ = code;
      if (st.api == Api::Ask) {
        send_event("error", error_json(code, message));
      } else {
        // As OpenAI-compatible servers do: the error as a data event, then the end marker.
        const int status = r.outcome == JobOutcome::Deadline   ? 504
                           : r.outcome == JobOutcome::Shutdown ? 503
                                                               : 500;
        send_event(nullptr, openai_error_json(status, code, message));
        send_event(nullptr, "[DONE]");
      }
    }
    last_chunk_pending_ = chunked_;
    stream_ended_ = true;
    if (!writing_) write_next();
  }

  void stream_flushed() {
    stream_ended_ = false;
    stop_watch_then([self = shared_from_this()] {
      self->finish_request(200);
      if (!self->sse_keep_ || self->srv_.draining.load()) return self->close();
      self->read_header();
    });
  }

  // ---- watching for the client leaving ----
  void start_watch() {
    // What the client sends meanwhile (a pipelined request) is kept for the next read; once the
    // buffer is full it is not read, and a hang-up is then noticed when the answer is written.
    const size_t room = buffer_.max_size() - buffer_.size();
    if (watching_ || dead_ || room == 0) return;
    watching_ = true;
    stream_.socket().async_read_some(
        buffer_.prepare(std::min<size_t>(room, 1024)),
        [self = shared_from_this()](beast::error_code ec, size_t n) { self->on_watch(ec, n); });
  }

  void on_watch(beast::error_code ec, size_t n) {
    watching_ = false;
    const bool ours = static_cast<bool>(after_watch_);
    if (!ec && n > 0) {
      buffer_.commit(n);
      // Still waiting for the answer: watch on, or a hang-up after a pipelined byte would go
      // unnoticed until the whole generation had run.
      if (!ours) start_watch();
    } else if (!(ours && ec == net::error::operation_aborted)) {
      client_gone();
    }
    if (ours) {
      auto f = std::move(after_watch_);
      after_watch_ = nullptr;
      if (dead_) return abandon(499);
      f();
    }
  }

  void stop_watch_then(std::function<void()> f) {
    if (!watching_) {
      if (dead_) return abandon(499);
      return f();
    }
    after_watch_ = std::move(f);
    beast::error_code ec;
    stream_.socket().cancel(ec);
  }

  void client_gone() {
    if (dead_) return;
    dead_ = true;
    log_error_ = "client_closed";
    if (ask_) ask_->gone.store(true);
    if (job_) {
      job_->cancelled.store(true);
      if (EngineLoop* e = srv_.engine()) e->wake();
    }
  }

  beast::tcp_stream stream_;
  Server::Impl& srv_;
  beast::flat_buffer buffer_;
  size_t empty_line_bytes_ = 0;  // dropped before the current request line (drop_empty_lines)
  std::string client_;           // peer IP address, for max_connections_per_client
  std::optional<http::request_parser<http::string_body>> parser_;
  std::optional<Response> res_;
  std::string remote_;
  uint64_t requests_ = 0;

  // The request being handled.
  bool open_ = false;
  Clock::time_point t0_;
  std::string request_id_, method_, path_, route_, origin_, log_error_, finish_reason_;
  int64_t completion_tokens_ = -1;
  bool keep_alive_ = false;
  bool head_ = false;  // a HEAD request: its response carries no content
  unsigned version_ = 11;
  std::shared_ptr<AskState> ask_;
  std::shared_ptr<Job> job_;

  // Streaming.
  bool stream_mode_ = false, chunked_ = true, sse_keep_ = true;
  bool writing_ = false, stream_ended_ = false;
  bool header_sent_ = false, last_chunk_pending_ = false;
  std::deque<std::string> out_;  // events not yet written
  std::optional<http::response<http::empty_body>> sse_res_;
  std::optional<http::response_serializer<http::empty_body>> sse_sr_;
  Api stream_api_ = Api::Ask;
  bool stream_logprobs_ = false;    // the stream's request asked for log-probabilities
  int64_t stream_text_offset_ = 0;  // completions' text_offset of the next streamed token
  OpenAiIds stream_ids_;

  // Lingering close.
  std::unique_ptr<std::array<char, 16384>> drain_buf_;
  size_t drain_left_ = 0;

  // Disconnect watch.
  bool watching_ = false, dead_ = false;
  std::function<void()> after_watch_;
};

// ---------------------------------------------------------------------------------------------

void Server::Impl::start() {
  beast::error_code ec;
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
  acceptor.async_accept(net::make_strand(ioc), [this](beast::error_code ec, tcp::socket socket) {
    if (!acceptor.is_open() || ec == net::error::operation_aborted) return;
    if (ec) {
      // Out of descriptors and the like: pause instead of spinning on the error.
      LogLine("warn", "accept_failed").str("what", ec.message()).write(log);
      accept_retry->expires_after(std::chrono::milliseconds(50));
      accept_retry->async_wait([this](beast::error_code) {
        if (acceptor.is_open()) do_accept();
      });
      return;
    }
    beast::error_code peer_ec;
    const auto peer = socket.remote_endpoint(peer_ec);
    std::string client = peer_ec ? std::string("?") : peer.address().to_string();
    if (metrics.connections.load() >= cfg.max_connections || !admit_client(client)) {
      // Closed at once, so idle sockets of one client cannot lock the others out.
      metrics.connections_refused.fetch_add(1);
      beast::error_code ignored;
      socket.close(ignored);
    } else {
      socket.set_option(tcp::no_delay(true), ec);
      std::make_shared<Session>(std::move(socket), *this, std::move(client))->run();
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
      beast::error_code ec;
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
