// What the machine has to give: memory the kernel and this process's cgroup would still grant.
#pragma once

#include <cstdint>
#include <optional>

namespace cepe {

/// Bytes this process could still allocate without the kernel reclaiming memory in use: the
/// smaller of /proc/meminfo's MemAvailable and, under a cgroup memory limit (v1 or v2), the
/// limit minus the cgroup's usage. Empty when neither can be read.
std::optional<uint64_t> available_memory_bytes();

/// The machine's memory (/proc/meminfo's MemTotal), or the cgroup limit when lower. Empty when
/// neither can be read.
std::optional<uint64_t> total_memory_bytes();

}  // namespace cepe
