// Raw bytes on a TCP connection to a running server: Beast's parser under our limits and
// deadlines, routing, API keys, CORS, 100-continue, pipelining, the /ask and OpenAI handlers, the
// scheduler and the response writers, all as `cepe serve` runs them (a random-weight tiny model and
// a BM25 index of a few passages, built once per process, and one key and one CORS origin, so
// both sides of each check are reachable).
//
// Each input is sent on a fresh connection followed by a request that asks the server to close
// (`kLast`), or cut in two writes, or without kLast and followed by the client hanging up
// (Delivery), and everything the server sends is read until it closes. The promises checked:
// - the server closes the connection within a bound set by its own deadlines (no hang);
// - what it sent is a sequence of whole HTTP/1.x responses, each with a status it may send
//   (status_allowed), a Date and an X-Request-Id, framing (Content-Length or chunked) that matches
//   the bytes, and, for JSON and SSE bodies, JSON that parses, errors as {"error": {...}} with a
//   one-line message;
// - a response without its content is one to a HEAD request;
// - once the connection is closed, no request stays in flight and no connection stays counted
//   (the bookkeeping that /metrics, the drain on shutdown and the per-client limit rely on).
// The tokenizer is ../shared's LLaMA-2 tokenizer.model; without it the target does nothing and
// says so once.
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <boost/beast/http.hpp>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <fstream>
#include <iterator>
#include <memory>
#include <string>
#include <thread>

#include "common/json.h"
#include "engine/random_model.h"
#include "engine/tokenizer.h"
#include "index/builder.h"
#include "server/resources.h"
#include "server/server.h"
#include "tests/fuzz/fuzz_util.h"

using namespace cepe;
namespace http = boost::beast::http;
using namespace std::chrono_literals;

namespace {

// Ends every input: whatever the input left unfinished, this closes it (or fails it) and then asks
// the server to close the connection, so an input costs one request's time, not a keep-alive wait.
constexpr std::string_view kLast =
    "\r\n\r\nGET /healthz HTTP/1.1\r\nHost: f\r\nConnection: close\r\n\r\n";

// The server's deadlines, short so that inputs that wait on them stay cheap.
constexpr int kHeaderTimeoutMs = 300, kBodyTimeoutMs = 300, kWriteTimeoutMs = 2000,
              kRequestTimeoutMs = 3000;
// Linger after an error (2 s in the server) plus every deadline above, with room for a slow
// sanitizer build: a connection still open after this is a hang.
constexpr auto kCloseBound = 20s;

struct Running {
  config::ServerConfig cfg;
  server::LoadedResources res;
  std::unique_ptr<server::Server> srv;
};

Running* running() {
  static const std::unique_ptr<Running> r = []() -> std::unique_ptr<Running> {
    const std::filesystem::path tokenizer = fuzz::shared_tokenizer("fuzz_http");
    if (tokenizer.empty()) return nullptr;
    const auto dir = fuzz::scratch_dir() / "server";
    RandomModelSpec spec = random_model_preset("tiny");
    spec.vocab_size = Tokenizer(tokenizer).vocab_size();
    write_random_model(spec, dir / "model");
    std::filesystem::copy_file(tokenizer, dir / "model" / "tokenizer.model");
    {
      std::ofstream corpus(dir / "passages.jsonl");
      corpus
          << R"({"id":"p1","title":"Rome","text":"Rome is the capital of Italy; the Tiber flows through it."})"
          << "\n"
          << R"({"id":"p2","title":"Bern","text":"Bern is the federal city of Switzerland, on the Aare."})"
          << "\n"
          << R"({"id":"p3","title":"Lima","text":"Lima is the capital of Peru, on the Pacific coast."})"
          << "\n";
    }
    index::BuildOptions build;
    build.inputs = {dir / "passages.jsonl"};
    build.out = dir / "index";
    index::build_index(build);

    auto r = std::make_unique<Running>();
    config::ServerConfig& c = r->cfg;
    c.port = 0;
    c.model = (dir / "model").string();
    c.index = build.out.string();
    c.threads = 1;
    c.io_threads = 2;
    c.retrieval_threads = 1;
    c.max_batch = 4;
    c.max_queue = 8;
    c.max_body_bytes = 2048;
    c.max_header_bytes = 2048;
    c.max_k = 3;
    c.default_k = 2;
    c.max_new_tokens = 4;
    c.default_max_new_tokens = 2;
    c.max_question_chars = 200;
    c.chunk_tokens = 32;
    c.max_prompt_tokens = 256;
    c.header_timeout_ms = kHeaderTimeoutMs;
    c.body_timeout_ms = kBodyTimeoutMs;
    c.write_timeout_ms = kWriteTimeoutMs;
    c.request_timeout_ms = kRequestTimeoutMs;
    c.api_keys = {"fuzz-key"};
    c.cors_origins = {"https://ok.example"};
    c.log_requests = false;
    r->res = server::load_resources(c);
    r->srv = std::make_unique<server::Server>(c, nullptr);
    r->srv->start();
    r->srv->attach(r->res.view());
    return r;
  }();
  return r.get();
}

// How an input reaches the server. The first byte picks (no request starts with 0x01 or 0x02):
enum class Delivery {
  Plain,   // the bytes, then kLast
  HangUp,  // 0x01: the bytes, then the client stops sending (the server sees it leave, before,
           // during or after a request: mid-header, mid-body or mid-generation)
  Split,   // 0x02 N: the bytes and kLast in two writes 5 ms apart, cut at N/256 of the way
};

// Sends an input on a fresh connection; returns everything read until the server closed.
std::string exchange(uint16_t port, std::string_view bytes, Delivery how, uint8_t cut) {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) fuzz::fail("socket() failed");
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(port);
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (::connect(fd, reinterpret_cast<const sockaddr*>(&addr), sizeof addr) != 0) {
    fuzz::fail(std::string("cannot connect to the server (did it stop listening?): ") +
               std::strerror(errno));
  }
  const int one = 1;
  ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  // The server may answer and close before reading all of it (413, 431): a failed send is fine.
  std::string out(bytes);
  if (how != Delivery::HangUp) out += kLast;
  const size_t first = how == Delivery::Split ? out.size() * cut / 256 : out.size();
  for (size_t sent = 0; sent < out.size();) {
    if (how == Delivery::Split && sent == first) std::this_thread::sleep_for(5ms);
    const size_t end = sent < first ? first : out.size();
    const ssize_t n = ::send(fd, out.data() + sent, end - sent, MSG_NOSIGNAL);
    if (n <= 0) break;
    sent += static_cast<size_t>(n);
  }
  if (how == Delivery::HangUp) ::shutdown(fd, SHUT_WR);
  std::string got;
  const auto deadline = std::chrono::steady_clock::now() + kCloseBound;
  char buf[16384];
  for (;;) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        deadline - std::chrono::steady_clock::now());
    if (left <= 0ms) fuzz::fail("the server kept the connection open past every deadline");
    pollfd p{fd, POLLIN, 0};
    if (::poll(&p, 1, static_cast<int>(left.count())) <= 0) continue;
    const ssize_t n = ::recv(fd, buf, sizeof buf, 0);
    if (n <= 0) break;  // closed (or reset after the server stopped reading: also an end)
    got.append(buf, static_cast<size_t>(n));
  }
  ::close(fd);
  return got;
}

void check_json_body(const std::string& body, int status, const std::string& where) {
  rapidjson::Document d;
  std::string error;
  if (!parse_json(body, &d, &error)) fuzz::fail(where + ": body is not JSON: " + error);
  if (status < 400) return;
  if (!d.IsObject() || !d.HasMember("error") || !d["error"].IsObject())
    fuzz::fail(where + ": error body without an 'error' object: " + body);
  const auto& e = d["error"];
  if (!e.HasMember("message") || !e["message"].IsString())
    fuzz::fail(where + ": error without a message: " + body);
  const std::string message = e["message"].GetString();
  if (message.empty() || message.find('\n') != std::string::npos)
    fuzz::fail(where + ": error message empty or not one line: " + body);
}

// Server-Sent Events: every data line is JSON, or OpenAI's closing "[DONE]".
void check_sse_body(const std::string& body, const std::string& where) {
  size_t at = 0;
  while (at < body.size()) {
    size_t end = body.find('\n', at);
    if (end == std::string::npos) fuzz::fail(where + ": event stream ends inside a line");
    const std::string_view line(body.data() + at, end - at);
    if (line.rfind("data: ", 0) == 0 && line != "data: [DONE]") {
      rapidjson::Document d;
      std::string error;
      if (!parse_json(line.substr(6), &d, &error))
        fuzz::fail(where + ": event data is not JSON: " + error);
    }
    at = end + 1;
  }
}

// The statuses the server sends: 408 and 499 end a connection unanswered, and 500 would be an
// exception nobody mapped to a client error.
bool status_allowed(int status) {
  constexpr int kSent[] = {100, 200, 204, 400, 401, 403, 404, 405, 413, 429, 431, 503, 504};
  return std::find(std::begin(kSent), std::end(kSent), status) != std::end(kSent);
}

// Every response in `got`, in order. `cut_ok`: the client hung up, and the server stops what it
// is sending when it sees that (a stream cancelled mid-way), so the last response may end early.
void check_responses(const std::string& got, std::string_view input, bool cut_ok) {
  size_t at = 0;
  for (int index = 0; at < got.size(); ++index) {
    const std::string where = "response " + std::to_string(index);
    http::response_parser<http::string_body> parser;
    parser.body_limit(64u << 20);
    boost::beast::error_code ec;
    // Not eager yet: put() stops after the header, so what follows it can be looked at.
    at += parser.put(boost::asio::buffer(got.data() + at, got.size() - at), ec);
    if (ec == http::error::need_more) {
      if (cut_ok) return;
      fuzz::fail(where + ": the connection closed inside a header");
    }
    if (ec) fuzz::fail(where + ": not an HTTP response header: " + ec.message());
    const auto& res = parser.get();
    const int status = res.result_int();
    if (!status_allowed(status)) fuzz::fail(where + ": status " + std::to_string(status));
    if (status != 100 && res["X-Request-Id"].empty()) fuzz::fail(where + ": no X-Request-Id");
    if (status != 100 && res[http::field::date].empty()) fuzz::fail(where + ": no Date");
    const auto length = parser.content_length();
    // An answer to HEAD: the header says what GET would send, and the next response (or the end)
    // follows at once.
    const bool next_follows = at == got.size() || got.compare(at, 7, "HTTP/1.") == 0;
    if (status != 100 && length && *length > 0 && next_follows) {
      if (input.find("HEAD") == std::string_view::npos)
        fuzz::fail(where + ": a response without its content, and no HEAD was sent");
      continue;
    }
    parser.eager(true);
    while (!parser.is_done() && at < got.size()) {
      at += parser.put(boost::asio::buffer(got.data() + at, got.size() - at), ec);
      if (ec == http::error::need_more) break;
      if (ec) fuzz::fail(where + ": bad framing: " + ec.message());
    }
    if (!parser.is_done()) {
      parser.put_eof(ec);
      if (ec && cut_ok) return;
      if (ec) fuzz::fail(where + ": the connection closed inside a body: " + ec.message());
    }
    const std::string& body = parser.get().body();
    const std::string type(res[http::field::content_type]);
    if (type == "application/json") check_json_body(body, status, where);
    if (type.rfind("text/event-stream", 0) == 0) check_sse_body(body, where);
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  Running* r = running();
  if (!r) return 0;
  std::string_view input = fuzz::as_text(data, size);
  Delivery how = Delivery::Plain;
  uint8_t cut = 0;
  if (size >= 1 && data[0] == 1) {
    how = Delivery::HangUp;
    input.remove_prefix(1);
  } else if (size >= 2 && data[0] == 2) {
    how = Delivery::Split;
    cut = data[1];
    input.remove_prefix(2);
  }
  const std::string got = exchange(r->srv->port(), input, how, cut);
  // (An input may end the connection unanswered: a body that never comes ends at the deadline.)
  if (size == 0 && got.rfind("HTTP/1.1 200 OK", 0) != 0)
    fuzz::fail("the closing request alone was not answered 200: " + got);
  if (fuzz::showing()) std::fprintf(stderr, "%s\n", got.c_str());
  check_responses(got, input, how == Delivery::HangUp);
  // The server counts a connection's end when its session goes, just after the close.
  auto& m = r->srv->metrics();
  for (int i = 0; m.in_flight.load() != 0 || m.connections.load() != 0; ++i) {
    if (i == 10000)  // 10 s: a session ends within milliseconds; a leaked count never does
      fuzz::fail("after the close, " + std::to_string(m.in_flight.load()) +
                 " requests still in flight, " + std::to_string(m.connections.load()) +
                 " connections counted");
    std::this_thread::sleep_for(1ms);
  }
  return 0;
}
