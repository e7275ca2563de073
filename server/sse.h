// Server-Sent Events framing: `event: NAME` (optional) and `data: JSON` lines ending in a blank
// line. The HTTP side sends each event as one chunk of Beast's chunk API.
#pragma once

#include <string>
#include <string_view>

namespace cepe::server {

/// One event; `name` null makes a data-only event (the OpenAI streams).
std::string sse_event(const char* name, std::string_view data);

}  // namespace cepe::server
