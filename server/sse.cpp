#include "server/sse.h"

namespace cepe::server {

std::string sse_event(const char* name, std::string_view data) {
  std::string ev = name ? std::string("event: ") + name + "\n" : std::string();
  ev += "data: ";
  ev += data;
  ev += "\n\n";
  return ev;
}

}  // namespace cepe::server
