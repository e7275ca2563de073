#include "server/http_client.h"

#include <boost/asio/connect.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <cctype>
#include <thread>

#include "common/error.h"

namespace cepe::server {

namespace beast = boost::beast;
namespace http = beast::http;
namespace net = boost::asio;
using tcp = net::ip::tcp;

namespace {

std::string lower(std::string s) {
  for (char& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

// Takes complete events off the front of `buf`.
void take_events(std::string& buf, std::vector<SseEvent>& out) {
  for (;;) {
    const size_t end = buf.find("\n\n");
    if (end == std::string::npos) return;
    SseEvent ev;
    size_t pos = 0;
    const std::string block = buf.substr(0, end);
    buf.erase(0, end + 2);
    while (pos <= block.size()) {
      size_t nl = block.find('\n', pos);
      if (nl == std::string::npos) nl = block.size();
      const std::string line = block.substr(pos, nl - pos);
      pos = nl + 1;
      if (line.rfind("event:", 0) == 0) {
        ev.event = line.substr(line.size() > 6 && line[6] == ' ' ? 7 : 6);
      } else if (line.rfind("data:", 0) == 0) {
        if (!ev.data.empty()) ev.data += '\n';
        ev.data += line.substr(line.size() > 5 && line[5] == ' ' ? 6 : 5);
      }
    }
    if (ev.event.empty()) ev.event = "message";
    out.push_back(std::move(ev));
  }
}

}  // namespace

std::string HttpResponse::header(const std::string& name) const {
  auto it = headers.find(lower(name));
  return it == headers.end() ? "" : it->second;
}

// Every socket operation runs asynchronously on a private io_context under a deadline, so a
// silent server makes a call fail after the timeout instead of hanging (Asio's blocking reads
// ignore SO_RCVTIMEO).
class HttpClient::Impl {
 public:
  Impl(std::string h, uint16_t p, std::chrono::milliseconds t)
      : host(std::move(h)), port(p), timeout(t), stream(ioc) {}

  // Runs one asynchronous operation to completion; `start` receives the completion handler.
  template <class Start>
  beast::error_code run(Start&& start, std::chrono::steady_clock::time_point deadline) {
    beast::error_code result = net::error::would_block;
    stream.expires_at(deadline);
    start([&result](beast::error_code ec, auto&&...) { result = ec; });
    ioc.restart();
    ioc.run();
    return result;
  }

  template <class Start>
  void run_or_throw(Start&& start, const char* what) {
    const beast::error_code ec =
        run(std::forward<Start>(start), std::chrono::steady_clock::now() + timeout);
    if (ec) {
      close();
      throw std::runtime_error(std::string(what) + " " + host + ":" + std::to_string(port) + ": " +
                               ec.message());
    }
  }

  void connect() {
    if (stream.socket().is_open()) return;
    buffer.clear();
    tcp::resolver resolver(ioc);
    const auto endpoints = resolver.resolve(host, std::to_string(port));
    run_or_throw([&](auto handler) { stream.async_connect(endpoints, handler); }, "connecting to");
    stream.socket().set_option(tcp::no_delay(true));
  }

  void close() {
    beast::error_code ec;
    stream.socket().shutdown(tcp::socket::shutdown_both, ec);
    stream.socket().close(ec);
    stream_parser.reset();
  }

  void send(const std::string& method, const std::string& target, const std::string& body,
            const HeaderList& headers) {
    http::request<http::string_body> req{http::string_to_verb(method), target, 11};
    if (req.method() == http::verb::unknown) req.method_string(method);
    req.set(http::field::host, host);
    for (const auto& [k, v] : headers) req.set(k, v);
    req.body() = body;
    if (!body.empty() || method == "POST") req.prepare_payload();
    run_or_throw([&](auto handler) { http::async_write(stream, req, handler); }, "writing to");
  }

  template <class Parser>
  void read(Parser& parser) {
    run_or_throw([&](auto handler) { http::async_read(stream, buffer, parser, handler); },
                 "reading from");
  }

  template <class Parser>
  void read_header(Parser& parser) {
    run_or_throw([&](auto handler) { http::async_read_header(stream, buffer, parser, handler); },
                 "reading from");
  }

  template <class Parser>
  void read_some(Parser& parser) {
    run_or_throw([&](auto handler) { http::async_read_some(stream, buffer, parser, handler); },
                 "reading from");
  }

  static HttpResponse convert(const http::response_header<>& h) {
    HttpResponse r;
    r.status = static_cast<int>(h.result_int());
    for (const auto& f : h) r.headers[lower(std::string(f.name_string()))] = std::string(f.value());
    return r;
  }

  std::string host;
  uint16_t port;
  std::chrono::milliseconds timeout;
  net::io_context ioc;
  beast::tcp_stream stream;
  beast::flat_buffer buffer;
  std::optional<http::response_parser<http::string_body>> stream_parser;
  size_t consumed = 0;
  std::string pending;
  std::vector<SseEvent> ready;
};

HttpClient::HttpClient(std::string host, uint16_t port, std::chrono::milliseconds timeout)
    : impl_(std::make_unique<Impl>(std::move(host), port, timeout)) {}

HttpClient::~HttpClient() {
  impl_->close();
}

HttpResponse HttpClient::request(const std::string& method, const std::string& target,
                                 const std::string& body, const HeaderList& headers) {
  // One retry: a kept-alive connection the server closed in the meantime fails on first use.
  for (int attempt = 0;; ++attempt) {
    const bool fresh = !impl_->stream.socket().is_open();
    try {
      impl_->connect();
      impl_->send(method, target, body, headers);
      http::response_parser<http::string_body> parser;
      parser.body_limit(1ull << 30);
      parser.skip(method == "HEAD");  // its Content-Length describes a body that is not sent
      impl_->read(parser);
      HttpResponse r = Impl::convert(parser.get().base());
      r.body = parser.get().body();
      if (!parser.get().keep_alive()) impl_->close();
      return r;
    } catch (const std::exception&) {
      impl_->close();
      if (fresh || attempt > 0) throw;
    }
  }
}

HttpResponse HttpClient::start_stream(const std::string& target, const std::string& body,
                                      const HeaderList& headers) {
  impl_->close();
  impl_->connect();
  impl_->send("POST", target, body, headers);
  impl_->stream_parser.emplace();
  impl_->stream_parser->body_limit(1ull << 30);
  impl_->read_header(*impl_->stream_parser);
  impl_->consumed = 0;
  impl_->pending.clear();
  impl_->ready.clear();
  HttpResponse r = Impl::convert(impl_->stream_parser->get().base());
  // A non-stream answer (an error) is read whole.
  if (r.header("content-type").rfind("text/event-stream", 0) != 0) {
    impl_->read(*impl_->stream_parser);
    r.body = impl_->stream_parser->get().body();
    impl_->stream_parser.reset();
  }
  return r;
}

std::optional<SseEvent> HttpClient::next_event() {
  auto& im = *impl_;
  while (im.ready.empty()) {
    if (!im.stream_parser) return std::nullopt;
    auto& body = im.stream_parser->get().body();
    if (body.size() > im.consumed) {
      im.pending += body.substr(im.consumed);
      im.consumed = body.size();
      take_events(im.pending, im.ready);
      if (!im.ready.empty()) break;
    }
    if (im.stream_parser->is_done()) {
      im.stream_parser.reset();
      continue;
    }
    im.read_some(*im.stream_parser);
  }
  SseEvent ev = std::move(im.ready.front());
  im.ready.erase(im.ready.begin());
  return ev;
}

std::string HttpClient::raw(const std::string& bytes, std::chrono::milliseconds wait,
                            bool half_close) {
  return raw({bytes}, std::chrono::milliseconds(0), wait, half_close);
}

std::string HttpClient::raw(const std::vector<std::string>& parts, std::chrono::milliseconds pause,
                            std::chrono::milliseconds wait, bool half_close) {
  auto& im = *impl_;
  im.close();
  im.connect();
  const auto until = std::chrono::steady_clock::now() + wait;
  std::string out;
  bool failed = false;
  for (size_t i = 0; i < parts.size() && !failed; ++i) {
    if (i > 0) std::this_thread::sleep_for(pause);
    failed = static_cast<bool>(im.run(
        [&](auto handler) { net::async_write(im.stream, net::buffer(parts[i]), handler); }, until));
  }
  if (!failed) {
    beast::error_code ec;
    if (half_close) im.stream.socket().shutdown(tcp::socket::shutdown_send, ec);
    char buf[4096];
    for (;;) {
      size_t n = 0;
      const beast::error_code rec = im.run(
          [&](auto handler) {
            im.stream.async_read_some(net::buffer(buf),
                                      [&n, handler](beast::error_code e, size_t got) mutable {
                                        n = got;
                                        handler(e, got);
                                      });
          },
          until);
      out.append(buf, n);
      if (rec) break;  // closed by the server, or `wait` passed
    }
  }
  im.close();
  return out;
}

void HttpClient::close() {
  impl_->close();
}

bool HttpClient::connected() const {
  return impl_->stream.socket().is_open();
}

std::vector<SseEvent> parse_sse(const std::string& body) {
  std::string buf = body;
  std::vector<SseEvent> out;
  take_events(buf, out);
  return out;
}

}  // namespace cepe::server
