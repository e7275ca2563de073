#include "common/system.h"

#include <cpuid.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <string_view>

namespace cepe {

namespace {

// A /proc/meminfo field ("MemAvailable:   123456 kB") in bytes.
std::optional<uint64_t> meminfo_bytes(const SystemRoots& roots, const std::string& field) {
  std::ifstream in(roots.proc + "/meminfo");
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

std::optional<uint64_t> smaller(std::optional<uint64_t> a, std::optional<uint64_t> b) {
  if (a && b) return std::min(*a, *b);
  return a ? a : b;
}

// This process's cgroup memory limit and usage: cgroup v2 (memory.max, memory.current) or v1
// (memory.limit_in_bytes, memory.usage_in_bytes; a limit near 2^63 means none). The usage
// counts the file pages the cgroup has read, which the kernel reclaims before it fails an
// allocation: `file_cache` is their share (memory.stat's active and inactive file pages).
struct CgroupMemory {
  std::optional<uint64_t> limit, usage;
  uint64_t file_cache = 0;
};

// What this reader takes from a memory.stat ("key value" lines), read in one pass.
struct MemoryStat {
  std::optional<uint64_t> hierarchical_limit;  // v1: the least limit of the cgroup and ancestors
  uint64_t file_pages = 0;                     // active plus inactive file pages
};

// `file_prefix` is "total_" for v1's figures of the cgroup and its children (as its usage counts
// them), "" for v2, whose figures are its subtree's.
MemoryStat memory_stat_in(const std::string& path, const std::string& file_prefix) {
  std::ifstream in(path);
  std::string name;
  uint64_t value = 0;
  MemoryStat stat;
  while (in >> name >> value) {
    if (name == "hierarchical_memory_limit")
      stat.hierarchical_limit = value;
    else if (name == file_prefix + "active_file" || name == file_prefix + "inactive_file")
      stat.file_pages += value;
  }
  return stat;
}

// The directory of the cgroup at `path` (from /proc/self/cgroup) below the mount `base`. A
// container without its own cgroup namespace sees the host's path there while its mount shows
// only its own cgroup, at the mount's root: that root is then the directory.
std::string cgroup_dir(const std::string& base, const std::string& path) {
  std::error_code ec;
  if (std::filesystem::is_directory(base + path, ec)) return base + path;
  return base;
}

CgroupMemory cgroup_memory(const SystemRoots& roots) {
  std::ifstream self(roots.proc + "/self/cgroup");
  std::string line;
  std::optional<std::string> v1, v2;
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
  const auto real_limit = [](std::optional<uint64_t> v) {
    return v && *v < (uint64_t{1} << 62) ? v : std::nullopt;
  };
  if (v1) {
    // memory.stat's hierarchical_memory_limit is the least limit of the cgroup and its ancestors.
    const std::string dir = cgroup_dir(roots.cgroup + "/memory", *v1 == "/" ? "" : *v1) + "/";
    const MemoryStat stat = memory_stat_in(dir + "memory.stat", "total_");
    m.limit = smaller(real_limit(number_in(dir + "memory.limit_in_bytes")),
                      real_limit(stat.hierarchical_limit));
    m.usage = number_in(dir + "memory.usage_in_bytes");
    m.file_cache = stat.file_pages;
  } else if (v2) {
    // v2 has no such figure: the ancestors' memory.max, up to the mount, are read in turn.
    const std::string leaf = cgroup_dir(roots.cgroup, *v2 == "/" ? "" : *v2);
    m.usage = number_in(leaf + "/memory.current");
    m.file_cache = memory_stat_in(leaf + "/memory.stat", "").file_pages;
    for (std::string dir = leaf; dir.size() >= roots.cgroup.size();) {
      m.limit = smaller(m.limit, number_in(dir + "/memory.max"));
      const size_t slash = dir.rfind('/');
      if (dir.size() == roots.cgroup.size() || slash == std::string::npos) break;
      dir.resize(slash);
    }
  }
  return m;
}

// A "Name:   123 kB" line of /proc/PID/status, in bytes.
uint64_t status_kb_field(const std::string& status, const std::string& name) {
  const size_t at = status.find("\n" + name + ":");
  if (at == std::string::npos) return 0;
  std::istringstream fields(status.substr(at + name.size() + 2, 64));
  uint64_t kb = 0;
  fields >> kb;
  return kb * 1024;
}

// The file's text after a '\n', so that its first line is found as "\nName" too ("\n" when it
// cannot be read).
std::string lines_of(const std::string& path) {
  std::ifstream in(path);
  std::ostringstream text;
  text << '\n' << in.rdbuf();
  return text.str();
}

}  // namespace

ProcessStats process_stats(int pid, const SystemRoots& roots) {
  ProcessStats st;
  const std::string dir = roots.proc + "/" + (pid == 0 ? std::string("self") : std::to_string(pid));
  const std::string status = lines_of(dir + "/status");
  st.resident_bytes = status_kb_field(status, "VmRSS");
  st.peak_resident_bytes = status_kb_field(status, "VmHWM");
  st.virtual_bytes = status_kb_field(status, "VmSize");

  // /proc/PID/stat: "pid (comm) state ..." where comm may hold spaces and parentheses, so the
  // fields are counted from the last ')': utime and stime are fields 14 and 15, starttime 22
  // (clock ticks since boot, as is /proc/stat's btime in seconds).
  const std::string stat = lines_of(dir + "/stat");
  const long ticks = sysconf(_SC_CLK_TCK);
  if (const size_t close = stat.rfind(')'); close != std::string::npos && ticks > 0) {
    std::istringstream fields(stat.substr(close + 1));
    std::string field;
    uint64_t utime = 0, stime = 0, start = 0;
    for (int n = 3; fields >> field && n <= 22; ++n) {
      if (n == 14) utime = std::strtoull(field.c_str(), nullptr, 10);
      if (n == 15) stime = std::strtoull(field.c_str(), nullptr, 10);
      if (n == 22) start = std::strtoull(field.c_str(), nullptr, 10);
    }
    st.cpu_seconds = static_cast<double>(utime + stime) / static_cast<double>(ticks);
    const std::string boot = lines_of(roots.proc + "/stat");
    if (const size_t at = boot.find("\nbtime "); at != std::string::npos && start > 0) {
      const double btime = std::strtod(boot.c_str() + at + 7, nullptr);
      st.start_time_unix = btime + static_cast<double>(start) / static_cast<double>(ticks);
    }
  }

  std::error_code ec;
  for (std::filesystem::directory_iterator it(dir + "/fd", ec), end; !ec && it != end;
       it.increment(ec))
    ++st.open_fds;
  // /proc/PID/limits: "Max open files            1024                 4096                 files"
  const std::string limits = lines_of(dir + "/limits");
  if (const size_t at = limits.find("Max open files"); at != std::string::npos)
    st.max_fds = std::strtoll(limits.c_str() + at + 14, nullptr, 10);
  return st;
}

std::optional<uint64_t> available_memory_bytes(const SystemRoots& roots) {
  std::optional<uint64_t> cgroup_room;
  const CgroupMemory cg = cgroup_memory(roots);
  if (cg.limit && cg.usage) {
    // As MemAvailable counts the page cache as available, so does the room under a limit: a
    // model file read once (by this load, or by the process before) must not read as memory
    // taken.
    const uint64_t in_use = *cg.usage - std::min(*cg.usage, cg.file_cache);
    cgroup_room = *cg.limit > in_use ? *cg.limit - in_use : 0;
  }
  return smaller(meminfo_bytes(roots, "MemAvailable"), cgroup_room);
}

std::optional<uint64_t> total_memory_bytes(const SystemRoots& roots) {
  return smaller(meminfo_bytes(roots, "MemTotal"), cgroup_memory(roots).limit);
}

bool cpu_has_f16c() {
  unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
  if (!__get_cpuid(1, &eax, &ebx, &ecx, &edx)) return false;
  __builtin_cpu_init();  // may run before the constructors that would have set it up
  // The builtin's "avx" also checks that the OS saves the YMM state (XGETBV).
  return (ecx & bit_F16C) != 0 && __builtin_cpu_supports("avx");
}

bool cpu_has_amx() {
  static const bool usable = [] {
    unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
    if (!__get_cpuid(1, &eax, &ebx, &ecx, &edx) || !(ecx & bit_OSXSAVE)) return false;
    if (!__get_cpuid_count(7, 0, &eax, &ebx, &ecx, &edx)) return false;
    constexpr unsigned kAmxBf16 = 1u << 22, kAmxTile = 1u << 24, kAmxInt8 = 1u << 25;
    if ((edx & kAmxTile) == 0 || (edx & kAmxInt8) == 0 || (edx & kAmxBf16) == 0) return false;
    // XCR0 bits 17 (tile configuration) and 18 (tile data): the OS saves the tile state.
    unsigned lo = 0, hi = 0;
    asm volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    constexpr unsigned kTileState = (1u << 17) | (1u << 18);
    if ((lo & kTileState) != kTileState) return false;
#if defined(__linux__) && defined(SYS_arch_prctl)
    // Linux hands the tile data to a process only when asked (ARCH_REQ_XCOMP_PERM, feature 18).
    constexpr long kReqXcompPerm = 0x1023, kXtileData = 18;
    return syscall(SYS_arch_prctl, kReqXcompPerm, kXtileData) == 0;
#else
    return false;
#endif
  }();
  return usable;
}

}  // namespace cepe
