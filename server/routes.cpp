#include "server/routes.h"

#include "common/strings.h"

namespace cepe::server {

std::string_view request_path(std::string_view target) {
  for (std::string_view scheme : {"http://", "https://"}) {
    if (!starts_with_ascii_nocase(target, scheme)) continue;
    const size_t slash = target.find_first_of("/?", scheme.size());
    target = slash == std::string_view::npos || target[slash] == '?' ? std::string_view("/")
                                                                     : target.substr(slash);
    break;
  }
  return target.substr(0, target.find('?'));
}

std::string route_of(std::string_view path) {
  for (const char* r : {"/ask", "/healthz", "/readyz", "/metrics", "/v1/info", kChatRoute,
                        kCompletionsRoute, kModelsRoute, kSearchRoute})
    if (path == r) return r;
  return "other";
}

std::optional<Api> generate_api(std::string_view route) {
  if (route == "/ask") return Api::Ask;
  if (route == kChatRoute) return Api::Chat;
  if (route == kCompletionsRoute) return Api::Completion;
  return std::nullopt;
}

bool post_route(std::string_view route) {
  return generate_api(route).has_value() || route == kSearchRoute;
}

bool openai_route(std::string_view route) {
  return route == kChatRoute || route == kCompletionsRoute || route == kModelsRoute;
}

bool probe_route(std::string_view route) {
  return route == "/healthz" || route == "/readyz" || route == "/metrics";
}

}  // namespace cepe::server
