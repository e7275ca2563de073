// Which handler answers a request: method checks, API keys, CORS preflight, the probes,
// /metrics, /v1/info, /v1/models and /search are answered here; the generating routes go to
// generate.h. No Beast: requests arrive as RequestView, answers leave through Exchange.
#pragma once

#include <memory>
#include <string>

#include "server/exchange.h"
#include "server/server_impl.h"

namespace cepe::server {

/// Answers one request whose body was read: OPTIONS (CORS preflight, or the Allow list), 404 for
/// unknown paths, 405 for a method the route does not take, 401 without a valid API key (the
/// probes need none), then the route's handler.
void route_request(const std::shared_ptr<Exchange>& ex, Server::Impl& srv, const RequestView& req);

/// The engine, when the server takes new work; otherwise answers 503 (shutting down, or the model
/// is still loading) and returns null.
EngineLoop* serving_engine(Exchange& ex, Server::Impl& srv);
/// Answers 503 with Retry-After: the model (and with it the index) is not attached yet.
void reply_not_ready(Exchange& ex);
/// Answers 429 with Retry-After and counts the rejection; `what` says what is full.
void reply_queue_full(Exchange& ex, Server::Impl& srv, const std::string& what);

}  // namespace cepe::server
