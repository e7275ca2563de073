// The Date header: RFC 9110 requires an origin server with a clock to send one with every 2xx,
// 3xx and 4xx response, in the IMF-fixdate form.
#pragma once

#include <cstdint>
#include <string>

namespace cepe::server {

/// `unix_seconds` as an IMF-fixdate ("Sun, 06 Nov 1994 08:49:37 GMT"), in English whatever the
/// locale.
std::string http_date(int64_t unix_seconds);

/// http_date of the current second, formatted once a second per thread.
const std::string& http_date_now();

}  // namespace cepe::server
