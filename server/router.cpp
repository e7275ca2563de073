#include "server/router.h"

#include <boost/asio/post.hpp>
#include <optional>

#include "server/access.h"
#include "server/ask.h"
#include "server/generate.h"
#include "server/openai.h"
#include "server/routes.h"

namespace cepe::server {

namespace {

// The Allow header of a route: GET routes answer HEAD too.
const char* allowed_methods(std::string_view route) {
  return post_route(route) ? "POST, OPTIONS" : "GET, HEAD, OPTIONS";
}

bool authorized(const Server::Impl& srv, const RequestView& req) {
  return key_allowed(request_key(req.authorization, req.api_key), *srv.api_keys());
}

// OPTIONS: a CORS preflight when the request names an origin, else the route's Allow list.
void preflight(Exchange& ex, const Server::Impl& srv, const RequestView& req) {
  if (req.origin.empty())
    return ex.reply(204, "", "text/plain", {{"Allow", allowed_methods(req.route)}});
  if (!origin_allowed(req.origin, srv.cfg.cors_origins)) {
    return ex.reply_error(403, "origin_not_allowed",
                          "origin " + std::string(req.origin) + " is not allowed");
  }
  ex.reply(
      204, "", "text/plain",
      {{"Access-Control-Allow-Methods", "GET, POST, OPTIONS"},
       {"Access-Control-Allow-Headers", "Content-Type, Authorization, X-API-Key, X-Request-Id"},
       {"Access-Control-Max-Age", "600"}});
}

// POST /search: retrieval alone, on the retrieval pool.
void handle_search(const std::shared_ptr<Exchange>& ex, Server::Impl& srv, std::string_view body) {
  if (!serving_engine(*ex, srv)) return;  // the index is attached with the model
  auto req = std::make_shared<AskRequest>();
  try {
    *req = parse_search_request(body, srv.limits);
  } catch (const ApiError& e) {
    return ex->reply_api_error(e);
  }
  std::shared_ptr<const index::IndexRetriever> retriever = srv.retriever();
  if (!retriever) return ex->reply_error(400, "no_index", "this server has no index");
  // Searches waiting for the retrieval pool are bounded like generating requests.
  if (srv.searches.fetch_add(1) >= srv.cfg.max_queue) {
    srv.searches.fetch_sub(1);
    return reply_queue_full(
        *ex, srv, "too many searches in progress (" + std::to_string(srv.cfg.max_queue) + ")");
  }
  const auto deadline = ex->arrived() + std::chrono::milliseconds(srv.cfg.request_timeout_ms);
  boost::asio::post(*srv.pool, [ex, &srv, req, retriever, deadline, request_id = ex->request_id()] {
    std::string json;
    std::optional<ApiError> error;
    try {
      if (Clock::now() >= deadline) {
        throw ApiError(
            504, "deadline_exceeded",
            "the search waited longer than " + std::to_string(srv.cfg.request_timeout_ms) + " ms");
      }
      json = search_json(*req, *retriever, srv.cfg, srv.metrics, request_id);
    } catch (const ApiError& e) {
      error = e;
    } catch (const std::exception& e) {
      error = ApiError(500, "internal", std::string("the search failed: ") + e.what());
    }
    srv.searches.fetch_sub(1);
    ex->post([ex, json = std::move(json), error]() mutable {
      if (error) return ex->reply_api_error(*error);
      ex->reply_json(200, std::move(json));
    });
  });
}

}  // namespace

void route_request(const std::shared_ptr<Exchange>& ex, Server::Impl& srv, const RequestView& req) {
  if (req.method == "OPTIONS") return preflight(*ex, srv, req);
  if (req.route == "other") {
    return ex->reply_error(404, "not_found", "no route for " + std::string(req.path));
  }
  const bool post = post_route(req.route);
  const bool allowed = post ? req.method == "POST" : req.method == "GET" || req.method == "HEAD";
  if (!allowed) {
    return ex->reply_error(405, "method_not_allowed",
                           std::string(req.method) + " is not allowed on " +
                               std::string(req.route) + " (use " + (post ? "POST" : "GET") + ")",
                           {{"Allow", allowed_methods(req.route)}});
  }
  if (!probe_route(req.route) && !authorized(srv, req)) {
    return ex->reply_error(401, "unauthorized",
                           "a valid API key is required (Authorization: Bearer KEY or X-API-Key)",
                           {{"WWW-Authenticate", "Bearer"}});
  }
  if (req.route == "/healthz") return ex->reply_json(200, "{\"status\":\"ok\"}");
  if (req.route == "/readyz") {
    std::string why;
    if (srv.ready(&why)) return ex->reply_json(200, "{\"status\":\"ready\"}");
    return ex->reply_error(503, "not_ready", why);
  }
  if (req.route == "/metrics") {
    std::string why;
    srv.metrics.ready.store(srv.ready(&why) ? 1 : 0);
    return ex->reply(200, srv.metrics.render(), "text/plain; version=0.0.4");
  }
  if (req.route == "/v1/info") return ex->reply_json(200, srv.info_json());
  if (req.route == kModelsRoute) {
    // The name is known once the model is attached (acquire, as for /v1/info).
    if (!srv.engine()) return reply_not_ready(*ex);
    return ex->reply_json(200, openai_models_json(srv.res.model_name, srv.started_unix));
  }
  if (req.route == kSearchRoute) return handle_search(ex, srv, req.body);
  start_generation(ex, srv, *generate_api(req.route), req.body);
}

EngineLoop* serving_engine(Exchange& ex, Server::Impl& srv) {
  if (srv.draining.load()) {
    ex.reply_error(503, "shutting_down", "the server is shutting down", {}, true);
    return nullptr;
  }
  EngineLoop* engine = srv.engine();
  if (!engine) reply_not_ready(ex);
  return engine;
}

void reply_not_ready(Exchange& ex) {
  ex.reply_error(503, "not_ready", "the model is still loading", {{"Retry-After", "5"}});
}

void reply_queue_full(Exchange& ex, Server::Impl& srv, const std::string& what) {
  srv.metrics.rejected.fetch_add(1);
  ex.reply_error(429, "queue_full", what + "; retry later",
                 {{"Retry-After", std::to_string(srv.cfg.retry_after_s)}});
}

}  // namespace cepe::server
