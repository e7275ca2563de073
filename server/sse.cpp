#include "server/sse.h"

#include <cstdio>

namespace cepe::server {

std::string sse_event(const char* name, std::string_view data, bool chunked) {
  std::string ev = name ? std::string("event: ") + name + "\n" : std::string();
  ev += "data: ";
  ev += data;
  ev += "\n\n";
  if (!chunked) return ev;
  char size[24];
  std::snprintf(size, sizeof size, "%zx\r\n", ev.size());
  return size + ev + "\r\n";
}

}  // namespace cepe::server
