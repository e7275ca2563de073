// The server's routes: which paths exist, which generate an answer (and in which API), and which
// answer errors in OpenAI's shape.
#pragma once

#include <optional>
#include <string>
#include <string_view>

#include "server/openai.h"

namespace cepe::server {

/// POST: OpenAI chat completions.
inline constexpr const char* kChatRoute = "/v1/chat/completions";
/// POST: OpenAI completions.
inline constexpr const char* kCompletionsRoute = "/v1/completions";
/// GET: OpenAI model list.
inline constexpr const char* kModelsRoute = "/v1/models";
/// POST: retrieval alone (the passages /ask would retrieve, no generation).
inline constexpr const char* kSearchRoute = "/search";

/// The path of a request target: the query dropped, and for the absolute form
/// ("http://host:port/path", which servers must accept: RFC 9112 3.2.2) the scheme and authority.
std::string_view request_path(std::string_view target);
/// The route a request path names, or "other" (so metrics never label by client-chosen paths).
std::string route_of(std::string_view path);
/// The API a generating (POST) route speaks; nullopt for the other routes.
std::optional<Api> generate_api(std::string_view route);
/// True for the routes that take a POST body (the generating routes and /search).
bool post_route(std::string_view route);
/// True for routes whose errors take OpenAI's shape, so OpenAI clients can read them.
bool openai_route(std::string_view route);
/// True for the probes (/healthz, /readyz, /metrics), which need no API key.
bool probe_route(std::string_view route);

}  // namespace cepe::server
