#include "common/system.h"

#include <algorithm>
#include <fstream>
#include <sstream>
#include <string>
#include <string_view>

namespace cepe {

namespace {

// A /proc/meminfo field ("MemAvailable:   123456 kB") in bytes.
std::optional<uint64_t> meminfo_bytes(const std::string& field) {
  std::ifstream in("/proc/meminfo");
  std::string line;
  while (std::getline(in, line)) {
    if (line.compare(0, field.size() + 1, field + ":") != 0) continue;
    std::istringstream fields(line.substr(field.size() + 1));
    uint64_t kb = 0;
    if (fields >> kb) return kb * 1024;
    return std::nullopt;
  }
  return std::nullopt;
}

// A number in a file; empty for "max" (cgroup v2's no limit) or when unreadable.
std::optional<uint64_t> number_in(const std::string& path) {
  std::ifstream in(path);
  uint64_t value = 0;
  if (in >> value) return value;
  return std::nullopt;
}

// This process's cgroup memory limit and usage: cgroup v2 (memory.max, memory.current) or v1
// (memory.limit_in_bytes, memory.usage_in_bytes; a limit near 2^63 means none).
struct CgroupMemory {
  std::optional<uint64_t> limit, usage;
};

CgroupMemory cgroup_memory() {
  std::ifstream self("/proc/self/cgroup");
  std::string line, v1, v2;
  while (std::getline(self, line)) {
    // "hierarchy-id:controller,controller:path"; cgroup v2's line has no controllers.
    const std::string_view l(line);
    const size_t a = l.find(':'), b = a == l.npos ? a : l.find(':', a + 1);
    if (b == l.npos) continue;
    const std::string_view controllers = l.substr(a + 1, b - a - 1);
    if (controllers.empty()) v2 = std::string(l.substr(b + 1));
    for (size_t at = 0; at <= controllers.size();) {
      const size_t end = std::min(controllers.find(',', at), controllers.size());
      if (controllers.substr(at, end - at) == "memory") v1 = std::string(l.substr(b + 1));
      at = end + 1;
    }
  }
  CgroupMemory m;
  if (!v1.empty()) {
    const std::string dir = "/sys/fs/cgroup/memory" + v1 + "/";
    m.limit = number_in(dir + "memory.limit_in_bytes");
    if (m.limit && *m.limit >= (uint64_t{1} << 62)) m.limit.reset();
    m.usage = number_in(dir + "memory.usage_in_bytes");
  } else if (!v2.empty()) {
    const std::string dir = "/sys/fs/cgroup" + v2 + "/";
    m.limit = number_in(dir + "memory.max");
    m.usage = number_in(dir + "memory.current");
  }
  return m;
}

std::optional<uint64_t> smaller(std::optional<uint64_t> a, std::optional<uint64_t> b) {
  if (a && b) return std::min(*a, *b);
  return a ? a : b;
}

}  // namespace

std::optional<uint64_t> available_memory_bytes() {
  std::optional<uint64_t> cgroup_room;
  const CgroupMemory cg = cgroup_memory();
  if (cg.limit && cg.usage) cgroup_room = *cg.limit > *cg.usage ? *cg.limit - *cg.usage : 0;
  return smaller(meminfo_bytes("MemAvailable"), cgroup_room);
}

std::optional<uint64_t> total_memory_bytes() {
  return smaller(meminfo_bytes("MemTotal"), cgroup_memory().limit);
}

}  // namespace cepe
