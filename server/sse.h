// Server-Sent Events framing: `event: NAME` (optional) and `data: JSON` lines, each event in its
// own HTTP/1.1 chunk when the response is chunked.
#pragma once

#include <string>
#include <string_view>

namespace cepe::server {

/// One event as it goes on the wire; `name` null makes a data-only event (the OpenAI streams).
std::string sse_event(const char* name, std::string_view data, bool chunked);
/// The chunked body's terminating chunk.
inline constexpr const char* kLastChunk = "0\r\n\r\n";

}  // namespace cepe::server
