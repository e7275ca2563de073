// A small blocking HTTP/1.1 client for the server's tests and tools: keep-alive requests, streamed
// Server-Sent Events read one at a time, raw bytes for malformed-request tests. Not for production
// use (no TLS, no redirects).
#pragma once

#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace cepe::server {

/// A response: status, header fields (names lower-cased) and body.
struct HttpResponse {
  int status = 0;                              ///< 0 when nothing came back
  std::map<std::string, std::string> headers;  ///< lower-cased names
  std::string body;                            ///< whole body (empty for a stream's header)
  /// A header's value, "" when absent (`name` in any case).
  std::string header(const std::string& name) const;
};

/// One Server-Sent Event.
struct SseEvent {
  std::string event;  ///< the `event:` name ("message" when absent)
  std::string data;   ///< the `data:` payload (lines joined by '\n')
};

/// Extra header fields of a request.
using HeaderList = std::vector<std::pair<std::string, std::string>>;

/// One connection to a server (reconnected on demand when the server closed it).
class HttpClient {
 public:
  /// Targets host:port; every socket read and write gives up after `timeout`.
  HttpClient(std::string host, uint16_t port,
             std::chrono::milliseconds timeout = std::chrono::seconds(60));
  ~HttpClient();

  /// Sends a request and reads the whole response; throws on a network error.
  HttpResponse request(const std::string& method, const std::string& target,
                       const std::string& body = "", const HeaderList& headers = {});
  /// Sends a request and reads only the response header (status and fields); the body then comes
  /// through next_event() as Server-Sent Events.
  HttpResponse start_stream(const std::string& target, const std::string& body,
                            const HeaderList& headers = {});
  /// The next event of the stream started by start_stream(); nullopt when the stream ended.
  std::optional<SseEvent> next_event();
  /// Writes raw bytes on a fresh connection and returns everything read until the server closes
  /// or `wait` passes (for malformed requests). `half_close` shuts the sending side after writing.
  std::string raw(const std::string& bytes, std::chrono::milliseconds wait,
                  bool half_close = false);
  /// raw() with the bytes written in `parts`, `pause` apart (a client that sends slowly).
  std::string raw(const std::vector<std::string>& parts, std::chrono::milliseconds pause,
                  std::chrono::milliseconds wait, bool half_close = false);
  /// Closes the connection abruptly.
  void close();
  /// True while a connection is open.
  bool connected() const;

  class Impl;

 private:
  std::unique_ptr<Impl> impl_;
};

/// Splits a whole SSE body into events.
std::vector<SseEvent> parse_sse(const std::string& body);

}  // namespace cepe::server
