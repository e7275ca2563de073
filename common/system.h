// What the machine has to give: memory the kernel and this process's cgroup would still grant,
// CPU features the compilers' builtins do not all name, and what a process uses (procfs).
#pragma once

#include <cstdint>
#include <optional>
#include <string>

namespace cepe {

/// Where the memory figures are read: procfs and the cgroup mount (tests point them at a tree
/// of their own).
struct SystemRoots {
  std::string proc = "/proc";             ///< procfs: meminfo, self/cgroup
  std::string cgroup = "/sys/fs/cgroup";  ///< the cgroup mount: v1 controllers below it, or v2
};

/// Bytes this process could still allocate without the kernel reclaiming memory in use: the
/// smaller of /proc/meminfo's MemAvailable and, under a cgroup memory limit (v1 or v2, the
/// process's own cgroup's or an ancestor's), the limit minus the cgroup's usage other than
/// file pages (which the kernel reclaims first, as MemAvailable counts them). Empty when neither
/// can be read.
std::optional<uint64_t> available_memory_bytes(const SystemRoots& roots = {});

/// The machine's memory (/proc/meminfo's MemTotal), or the cgroup limit when lower. Empty when
/// neither can be read.
std::optional<uint64_t> total_memory_bytes(const SystemRoots& roots = {});

/// What a process uses, from procfs; a figure whose file cannot be read stays 0.
struct ProcessStats {
  uint64_t resident_bytes = 0;       ///< resident memory now (VmRSS)
  uint64_t peak_resident_bytes = 0;  ///< the most it has been resident (VmHWM)
  uint64_t virtual_bytes = 0;        ///< address space mapped (VmSize)
  double cpu_seconds = 0;            ///< user + system CPU time
  double start_time_unix = 0;        ///< when it started, in seconds since the epoch
  int64_t open_fds = 0;              ///< open file descriptors
  int64_t max_fds = 0;               ///< the soft limit on them (RLIMIT_NOFILE)
};

/// The figures of process `pid` (0: this process) under `roots.proc`.
ProcessStats process_stats(int pid = 0, const SystemRoots& roots = {});

/// Whether the CPU and OS run AVX with F16C (half <-> single conversions). Clang's
/// __builtin_cpu_supports has no "f16c", so the cpuid bit is read directly.
bool cpu_has_f16c();

/// Whether the CPU has AMX with 8-bit integer and bf16 tiles and this process may use them: the OS
/// saves the tile state (XCR0) and, on Linux, granted the tile data to the process (arch_prctl,
/// asked once, on the first call).
bool cpu_has_amx();

}  // namespace cepe
