// Who may call the server: API keys (Authorization: Bearer or X-API-Key, compared in constant
// time) and CORS origins.
#pragma once

#include <string>
#include <string_view>
#include <vector>

namespace cepe::server {

/// True when the two keys are equal; compares every byte whatever the first difference, so
/// response timing does not reveal how much of a key was right. An empty `expected` never matches.
bool same_key(std::string_view given, std::string_view expected);
/// The key a request carries: the `Authorization: Bearer KEY` value, else `X-API-Key`.
std::string_view request_key(std::string_view authorization, std::string_view x_api_key);
/// True when no keys are configured, or `key` is one of them (every key compared).
bool key_allowed(std::string_view key, const std::vector<std::string>& keys);
/// True when `origin` (non-empty) is listed in `allowed` or `allowed` holds "*".
bool origin_allowed(std::string_view origin, const std::vector<std::string>& allowed);

}  // namespace cepe::server
