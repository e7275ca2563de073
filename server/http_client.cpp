#include "server/http_client.h"

#include <sys/socket.h>
#include <sys/time.h>

#include <boost/asio/connect.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <cctype>

#include "engine/common/error.h"

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

// Blocking sockets with SO_RCVTIMEO/SO_SNDTIMEO: a stuck read fails instead of hanging a test.
void set_timeouts(tcp::socket& s, std::chrono::milliseconds t) {
  timeval tv{};
  tv.tv_sec = static_cast<time_t>(t.count() / 1000);
  tv.tv_usec = static_cast<suseconds_t>((t.count() % 1000) * 1000);
  ::setsockopt(s.native_handle(), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  ::setsockopt(s.native_handle(), SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
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

class HttpClient::Impl {
 public:
  Impl(std::string h, uint16_t p, std::chrono::milliseconds t)
      : host(std::move(h)), port(p), timeout(t), socket(ioc) {}

  void connect() {
    if (socket.is_open()) return;
    buffer.clear();
    tcp::resolver resolver(ioc);
    net::connect(socket, resolver.resolve(host, std::to_string(port)));
    socket.set_option(tcp::no_delay(true));
    set_timeouts(socket, timeout);
  }

  void close() {
    beast::error_code ec;
    socket.shutdown(tcp::socket::shutdown_both, ec);
    socket.close(ec);
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
    http::write(socket, req);
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
  tcp::socket socket;
  beast::flat_buffer buffer;
  std::optional<http::response_parser<http::string_body>> stream_parser;
  size_t consumed = 0;
  std::string pending;
  std::vector<SseEvent> ready;
};

HttpClient::HttpClient(std::string host, uint16_t port, std::chrono::milliseconds timeout)
    : impl_(std::make_unique<Impl>(std::move(host), port, timeout)) {}

HttpClient::~HttpClient() { impl_->close(); }

HttpResponse HttpClient::request(const std::string& method, const std::string& target,
                                 const std::string& body, const HeaderList& headers) {
  // One retry: a kept-alive connection the server closed in the meantime fails on first use.
  for (int attempt = 0;; ++attempt) {
    const bool fresh = !impl_->socket.is_open();
    try {
      impl_->connect();
      impl_->send(method, target, body, headers);
      http::response_parser<http::string_body> parser;
      parser.body_limit(1ull << 30);
      http::read(impl_->socket, impl_->buffer, parser);
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
  http::read_header(impl_->socket, impl_->buffer, *impl_->stream_parser);
  impl_->consumed = 0;
  impl_->pending.clear();
  impl_->ready.clear();
  HttpResponse r = Impl::convert(impl_->stream_parser->get().base());
  // A non-stream answer (an error) is read whole.
  if (r.header("content-type").rfind("text/event-stream", 0) != 0) {
    http::read(impl_->socket, impl_->buffer, *impl_->stream_parser);
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
    http::read_some(im.socket, im.buffer, *im.stream_parser);
  }
  SseEvent ev = std::move(im.ready.front());
  im.ready.erase(im.ready.begin());
  return ev;
}

std::string HttpClient::raw(const std::string& bytes, std::chrono::milliseconds wait,
                            bool half_close) {
  impl_->close();
  impl_->connect();
  set_timeouts(impl_->socket, wait);
  beast::error_code ec;
  net::write(impl_->socket, net::buffer(bytes), ec);
  if (half_close) impl_->socket.shutdown(tcp::socket::shutdown_send, ec);
  std::string out;
  char buf[4096];
  const auto until = std::chrono::steady_clock::now() + wait;
  while (std::chrono::steady_clock::now() < until) {
    const size_t n = impl_->socket.read_some(net::buffer(buf), ec);
    if (ec) break;
    out.append(buf, n);
  }
  impl_->close();
  return out;
}

void HttpClient::close() { impl_->close(); }

bool HttpClient::connected() const { return impl_->socket.is_open(); }

std::vector<SseEvent> parse_sse(const std::string& body) {
  std::string buf = body;
  std::vector<SseEvent> out;
  take_events(buf, out);
  return out;
}

}  // namespace cepe::server
