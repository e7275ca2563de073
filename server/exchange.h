// One request and its answer as the route handlers (router.cpp, generate.cpp) see them, with no
// Beast type in sight: what was asked, and the ways to answer it (a whole response, or a stream
// of Server-Sent Events). The connection (connection.cpp) implements it over Beast.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "server/request.h"
#include "server/server.h"

namespace cepe::server {

/// Extra response header fields, in order.
using HeaderList = std::vector<std::pair<std::string, std::string>>;

/// What the handlers read of a request whose body was read whole.
struct RequestView {
  std::string_view method;         ///< as sent ("GET", "POST", ...; methods are case-sensitive)
  std::string_view route;          ///< routes.h's name for the path, or "other"
  std::string_view path;           ///< the path asked for
  std::string_view origin;         ///< the Origin header, "" when absent
  std::string_view authorization;  ///< the Authorization header, "" when absent
  std::string_view api_key;        ///< the X-API-Key header, "" when absent
  std::string_view body;           ///< the body; valid only during the handler's call
};

/// The answering side of one request. Every member runs on the connection's strand (post() gets
/// there from other threads); exactly one of reply(), reply_error(), the event stream or
/// hang_up() ends each request.
class Exchange {
 public:
  virtual ~Exchange() = default;

  /// The request's id (the client's X-Request-Id when plain, else one of ours).
  virtual const std::string& request_id() const = 0;
  /// When the request's header began to arrive (deadlines count from it).
  virtual Clock::time_point arrived() const = 0;

  /// Sends a whole response (HEAD gets its header only); `close_after` ends the connection after
  /// it, lingering so the client still reads it.
  void reply(int status, std::string body, const std::string& content_type, HeaderList extra = {},
             bool close_after = false) {
    send_response(status, std::move(body), content_type, std::move(extra), close_after);
  }
  /// Sends an error: OpenAI's shape on OpenAI routes, {"error": {"code", "message"}} elsewhere;
  /// `param` names the request field at fault ("" when none).
  void reply_error(int status, const std::string& code, const std::string& message,
                   HeaderList extra = {}, bool close_after = false, const std::string& param = "") {
    send_error(status, code, message, std::move(extra), close_after, param);
  }
  /// A JSON response.
  void reply_json(int status, std::string body, HeaderList extra = {}) {
    reply(status, std::move(body), "application/json", std::move(extra));
  }
  /// An ApiError's response.
  void reply_api_error(const ApiError& e) {
    reply_error(e.status(), e.code(), e.what(), {}, false, e.param());
  }

  /// Starts a 200 text/event-stream response; its header leaves with the first event.
  virtual void begin_events() = 0;
  /// Queues one event; `name` null makes a data-only event (the OpenAI streams).
  virtual void send_event(const char* name, const std::string& data) = 0;
  /// Ends the stream once the queued events are written; `error_code` (when not empty) is what
  /// the request log records as its error.
  virtual void end_events(const std::string& error_code) = 0;

  /// Runs `f` on the connection's strand, keeping the connection alive until it has run.
  virtual void post(std::function<void()> f) = 0;
  /// Watches the socket while the answer is being made: when the client hangs up, gone() turns
  /// true and `on_gone` runs (on the strand). The watch ends when the answer is complete.
  virtual void watch_hangup(std::function<void()> on_gone) = 0;
  /// True once the client is known to have left.
  virtual bool gone() const = 0;
  /// Ends the request unanswered (status 499: the client left) and the connection.
  virtual void hang_up() = 0;

  /// For the request log: whether the answer streams.
  virtual void log_stream(bool stream) = 0;
  /// For the request log: how the generation ended.
  virtual void log_result(const std::string& finish_reason, int64_t completion_tokens) = 0;

 protected:
  /// reply()'s implementation.
  virtual void send_response(int status, std::string body, const std::string& content_type,
                             HeaderList extra, bool close_after) = 0;
  /// reply_error()'s implementation.
  virtual void send_error(int status, const std::string& code, const std::string& message,
                          HeaderList extra, bool close_after, const std::string& param) = 0;
};

}  // namespace cepe::server
