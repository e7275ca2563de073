#include "server/routes.h"

namespace cepe::server {

std::string route_of(std::string_view path) {
  for (const char* r : {"/ask", "/healthz", "/readyz", "/metrics", "/v1/info", kChatRoute,
                        kCompletionsRoute, kModelsRoute})
    if (path == r) return r;
  return "other";
}

std::optional<Api> generate_api(const std::string& route) {
  if (route == "/ask") return Api::Ask;
  if (route == kChatRoute) return Api::Chat;
  if (route == kCompletionsRoute) return Api::Completion;
  return std::nullopt;
}

bool openai_route(const std::string& route) {
  return route == kChatRoute || route == kCompletionsRoute || route == kModelsRoute;
}

bool probe_route(const std::string& route) {
  return route == "/healthz" || route == "/readyz" || route == "/metrics";
}

}  // namespace cepe::server
