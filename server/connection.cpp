#include "server/connection.h"

#include <array>
#include <boost/asio/dispatch.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <cctype>
#include <deque>
#include <functional>
#include <memory>
#include <optional>

#include "server/access.h"
#include "server/ask.h"
#include "server/exchange.h"
#include "server/http_date.h"
#include "server/openai.h"
#include "server/router.h"
#include "server/routes.h"
#include "server/sse.h"

namespace cepe::server {

namespace beast = boost::beast;
namespace http = beast::http;
namespace net = boost::asio;
using tcp = net::ip::tcp;

namespace {

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

std::string_view view(beast::string_view s) {
  return std::string_view(s.data(), s.size());
}

class Connection : public Exchange, public std::enable_shared_from_this<Connection> {
 public:
  Connection(tcp::socket&& socket, Server::Impl& srv, std::string client)
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
  ~Connection() override {
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

  // ---- Exchange ----
  const std::string& request_id() const override { return request_id_; }
  Clock::time_point arrived() const override { return t0_; }
  void begin_events() override;
  void send_event(const char* name, const std::string& data) override {
    out_.push_back(sse_event(name, data));
    if (!writing_) write_next();
  }
  void end_events(const std::string& error_code) override {
    if (!error_code.empty()) log_error_ = error_code;
    last_chunk_pending_ = chunked_;
    stream_ended_ = true;
    if (!writing_) write_next();
  }
  void post(std::function<void()> f) override {
    net::post(stream_.get_executor(), [self = shared_from_this(), f = std::move(f)] { f(); });
  }
  void watch_hangup(std::function<void()> on_gone) override {
    on_gone_ = std::move(on_gone);
    start_watch();
  }
  bool gone() const override { return dead_; }
  void hang_up() override { abandon(499); }
  void log_stream(bool stream) override { stream_mode_ = stream; }
  void log_result(const std::string& finish_reason, int64_t completion_tokens) override {
    finish_reason_ = finish_reason;
    completion_tokens_ = completion_tokens;
  }

 protected:
  void send_response(int status, std::string body, const std::string& content_type,
                     HeaderList extra, bool close_after) override;
  void send_error(int status, const std::string& code, const std::string& message, HeaderList extra,
                  bool close_after, const std::string& param) override {
    log_error_ = code;
    reply(status,
          openai_route(route_) ? openai_error_json(status, code, message, param)
                               : error_json(code, message),
          "application/json", std::move(extra), close_after);
  }

 private:
  static constexpr size_t kReadAheadBytes = 4096;

  // ---- reading ----
  void read_header(bool again = false);
  void on_header(beast::error_code ec);
  void read_body();
  void on_body(beast::error_code ec);
  bool drop_empty_lines();
  void too_large() {
    reply_error(
        413, "body_too_large",
        "the request body is larger than " + std::to_string(srv_.cfg.max_body_bytes) + " bytes", {},
        true, "");
  }
  void header_too_large(const char* what) {
    reply_error(
        431, "header_too_large",
        std::string(what) + " larger than " + std::to_string(srv_.cfg.max_header_bytes) + " bytes",
        {}, true, "");
  }
  void dispatch_request();

  // ---- per-request bookkeeping ----
  void begin_request();
  void fill_request_info(const http::request<http::string_body>& req);
  void finish_request(int status);
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
  void linger_close();
  void drain();

  // ---- writing ----
  void add_common_headers(http::fields& f);
  void write_next();
  void stream_flushed();

  // ---- watching for the client leaving ----
  void start_watch();
  void on_watch(beast::error_code ec, size_t n);
  void stop_watch_then(std::function<void()> f);
  void client_gone();

  beast::tcp_stream stream_;
  Server::Impl& srv_;
  beast::flat_buffer buffer_;
  size_t empty_line_bytes_ = 0;  // dropped before the current request line (drop_empty_lines)
  std::string client_;           // peer IP address, for max_connections_per_client
  std::optional<http::request_parser<http::string_body>> parser_;
  std::optional<http::response<http::string_body>> res_;
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
  bool stream_mode_ = false;  // for the log: the answer streams

  // Server-Sent Events.
  bool chunked_ = true, sse_keep_ = true;
  bool writing_ = false, stream_ended_ = false;
  bool header_sent_ = false, last_chunk_pending_ = false;
  std::deque<std::string> out_;  // events not yet written
  std::optional<http::response<http::empty_body>> sse_res_;
  std::optional<http::response_serializer<http::empty_body>> sse_sr_;

  // Lingering close.
  std::unique_ptr<std::array<char, 16384>> drain_buf_;
  size_t drain_left_ = 0;

  // Disconnect watch.
  bool watching_ = false, dead_ = false;
  std::function<void()> after_watch_;  // runs once the watch has stopped (stop_watch_then)
  std::function<void()> on_gone_;      // the handler's, for a hang-up (watch_hangup)
};

// ---- reading ----

// `again`: the same request's header after empty lines were dropped (same deadline).
void Connection::read_header(bool again) {
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

void Connection::on_header(beast::error_code ec) {
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
    return header_too_large("the request header is");
  }
  if (ec)
    return reply_error(400, "bad_request", "malformed HTTP request: " + ec.message(), {}, true, "");
  auto& req = parser_->get();
  fill_request_info(req);
  // RFC 9112 3.2: an HTTP/1.1 request names its host exactly once.
  if (req.version() == 11 && req.count(http::field::host) != 1) {
    return reply_error(400, "bad_request", "an HTTP/1.1 request needs exactly one Host header", {},
                       true, "");
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

void Connection::read_body() {
  stream_.expires_after(std::chrono::milliseconds(srv_.cfg.body_timeout_ms));
  http::async_read(
      stream_, buffer_, *parser_,
      [self = shared_from_this()](beast::error_code ec, size_t) { self->on_body(ec); });
}

void Connection::on_body(beast::error_code ec) {
  if (ec == http::error::body_limit) return too_large();
  // Only the trailers of a chunked body are buffered whole: they overflowed the buffer.
  if (ec == http::error::buffer_overflow || ec == http::error::header_limit) {
    return header_too_large("the chunked body's trailers are");
  }
  if (ec == beast::error::timeout || ec == http::error::end_of_stream ||
      ec == http::error::partial_message || ec == net::error::connection_reset ||
      ec == net::error::eof) {
    return abandon(408);  // the socket is already closed or the client is gone
  }
  if (ec) {
    return reply_error(400, "bad_request", "malformed HTTP request body: " + ec.message(), {}, true,
                       "");
  }
  stream_.expires_never();
  dispatch_request();
}

// Empty lines before a request line are ignored (RFC 9112 2.2: some clients send a CRLF after a
// POST body). Drops the CR and LF bytes at the front of the buffer; false when there were none,
// or when more than a header's worth came before one request.
bool Connection::drop_empty_lines() {
  const auto data = buffer_.data();
  const char* p = static_cast<const char*>(data.data());
  size_t n = 0;
  while (n < data.size() && (p[n] == '\r' || p[n] == '\n')) ++n;
  empty_line_bytes_ += n;
  if (n == 0 || empty_line_bytes_ > static_cast<size_t>(srv_.cfg.max_header_bytes)) return false;
  buffer_.consume(n);
  return true;
}

void Connection::dispatch_request() {
  const auto& req = parser_->get();
  RequestView view_of_request;
  view_of_request.method = view(req.method_string());
  view_of_request.route = route_;
  view_of_request.path = path_;
  view_of_request.origin = origin_;
  view_of_request.authorization = view(req[http::field::authorization]);
  view_of_request.api_key = view(req["X-API-Key"]);
  view_of_request.body = req.body();
  route_request(shared_from_this(), srv_, view_of_request);
}

// ---- per-request bookkeeping ----

void Connection::begin_request() {
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

void Connection::fill_request_info(const http::request<http::string_body>& req) {
  method_ = std::string(req.method_string());
  path_ = std::string(request_path(view(req.target())));
  route_ = route_of(path_);
  keep_alive_ = req.keep_alive();
  head_ = req.method() == http::verb::head;
  version_ = req.version();
  origin_ = std::string(req[http::field::origin]);
  const std::string_view id = view(req["X-Request-Id"]);
  if (valid_request_id(id)) request_id_ = std::string(id);
}

void Connection::finish_request(int status) {
  if (!open_) return;
  open_ = false;
  on_gone_ = nullptr;
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

// After an error answered before the body was read, closing at once would make the kernel reset
// the connection and the client could lose the answer: stop sending, then read and drop what it
// still sends, for a bounded time and amount.
void Connection::linger_close() {
  beast::error_code ec;
  stream_.socket().shutdown(tcp::socket::shutdown_send, ec);
  drain_left_ = 16u << 20;
  stream_.expires_after(std::chrono::seconds(2));
  drain();
}

void Connection::drain() {
  if (!drain_buf_) drain_buf_ = std::make_unique<std::array<char, 16384>>();
  stream_.async_read_some(net::buffer(*drain_buf_),
                          [self = shared_from_this()](beast::error_code ec, size_t n) {
                            if (ec || n >= self->drain_left_) return self->close();
                            self->drain_left_ -= n;
                            self->drain();
                          });
}

// ---- writing ----

void Connection::add_common_headers(http::fields& f) {
  f.set(http::field::date, http_date_now());
  f.set(http::field::server, kServerName);
  f.set("X-Request-Id", request_id_);
  if (origin_allowed(origin_, srv_.cfg.cors_origins)) {
    f.set(http::field::access_control_allow_origin, origin_);
    f.set("Access-Control-Expose-Headers", "X-Request-Id, Retry-After");
  }
  if (!srv_.cfg.cors_origins.empty()) f.set(http::field::vary, "Origin");
}

void Connection::send_response(int status, std::string body, const std::string& content_type,
                               HeaderList extra, bool close_after) {
  if (watching_) {
    // The answer is ready while the disconnect watch still reads the socket: stop it first, so
    // the socket has one reader, then answer.
    return stop_watch_then([self = shared_from_this(), status, body = std::move(body), content_type,
                            extra = std::move(extra), close_after]() mutable {
      self->reply(status, std::move(body), content_type, std::move(extra), close_after);
    });
  }
  if (dead_) return abandon(499);
  res_.emplace(static_cast<http::status>(status), version_ == 10 ? 10 : 11);
  add_common_headers(*res_);
  res_->set(http::field::content_type, content_type);
  res_->set(http::field::cache_control, "no-store");
  for (auto& [k, v] : extra) res_->set(k, v);
  res_->body() = std::move(body);
  const bool keep = keep_alive_ && !close_after && !srv_.draining.load();
  res_->keep_alive(keep);
  res_->prepare_payload();
  // A response to HEAD has the header GET would get and no content (RFC 9110 9.3.2): the client
  // reads no body after it, so content sent here would pass for the next response.
  if (head_) res_->body().clear();
  stream_.expires_after(std::chrono::milliseconds(srv_.cfg.write_timeout_ms));
  http::async_write(
      stream_, *res_,
      [self = shared_from_this(), keep, status, close_after](beast::error_code ec, size_t) {
        self->res_.reset();
        if (ec) return self->abandon(499);
        self->finish_request(status);
        if (close_after) return self->linger_close();
        if (!keep) return self->close();
        self->read_header();
      });
}

// The header goes out through Beast's serializer and every event as one chunk of Beast's chunk
// API (make_chunk / make_chunk_last); an HTTP/1.0 client gets the events unframed, then the
// connection closes.
void Connection::begin_events() {
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
}

void Connection::write_next() {
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

void Connection::stream_flushed() {
  stream_ended_ = false;
  stop_watch_then([self = shared_from_this()] {
    self->finish_request(200);
    if (!self->sse_keep_ || self->srv_.draining.load()) return self->close();
    self->read_header();
  });
}

// ---- watching for the client leaving ----

void Connection::start_watch() {
  // What the client sends meanwhile (a pipelined request) is kept for the next read; once the
  // buffer is full it is not read, and a hang-up is then noticed when the answer is written.
  const size_t room = buffer_.max_size() - buffer_.size();
  if (watching_ || dead_ || room == 0) return;
  watching_ = true;
  stream_.socket().async_read_some(
      buffer_.prepare(std::min<size_t>(room, 1024)),
      [self = shared_from_this()](beast::error_code ec, size_t n) { self->on_watch(ec, n); });
}

void Connection::on_watch(beast::error_code ec, size_t n) {
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

void Connection::stop_watch_then(std::function<void()> f) {
  if (!watching_) {
    if (dead_) return abandon(499);
    return f();
  }
  after_watch_ = std::move(f);
  beast::error_code ec;
  stream_.socket().cancel(ec);
}

void Connection::client_gone() {
  if (dead_) return;
  dead_ = true;
  log_error_ = "client_closed";
  if (on_gone_) on_gone_();
}

}  // namespace

void serve_connection(tcp::socket socket, Server::Impl& srv, std::string client) {
  std::make_shared<Connection>(std::move(socket), srv, std::move(client))->run();
}

}  // namespace cepe::server
