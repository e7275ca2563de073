#include "server/access.h"

#include "common/strings.h"

namespace cepe::server {

bool same_key(std::string_view given, std::string_view expected) {
  unsigned char diff = given.size() == expected.size() ? 0 : 1;
  for (size_t i = 0; i < given.size(); ++i)
    diff |= given[i] ^ expected[i % (expected.empty() ? 1 : expected.size())];
  return diff == 0 && !expected.empty();
}

std::string_view request_key(std::string_view authorization, std::string_view x_api_key) {
  constexpr std::string_view kBearer = "bearer ";
  if (authorization.size() > kBearer.size() && starts_with_ascii_nocase(authorization, kBearer))
    return authorization.substr(kBearer.size());
  return x_api_key;
}

bool key_allowed(std::string_view key, const std::vector<std::string>& keys) {
  if (keys.empty()) return true;
  bool ok = false;
  for (const auto& k : keys) ok |= same_key(key, k);
  return ok;
}

bool origin_allowed(std::string_view origin, const std::vector<std::string>& allowed) {
  if (origin.empty()) return false;
  for (const auto& o : allowed)
    if (o == "*" || o == origin) return true;
  return false;
}

}  // namespace cepe::server
