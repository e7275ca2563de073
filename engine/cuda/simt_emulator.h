// A small SIMT emulator: runs the kernels of kernels.cuh on the host, one fiber per CUDA thread,
// so the exact kernel code the GPU runs is also exercised by the tests on machines without a GPU.
// Block barriers, warp barriers and shuffles are real synchronisation points between the fibers:
// divergent barriers deadlock here as they would hang (or corrupt) on a GPU, and are reported.
// Shared memory starts as NaN bytes and carries a canary, so reads of unwritten or out-of-range
// shared memory show up in the results. Only included by simt.h when not compiling with nvcc.
#pragma once

#include <ucontext.h>

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <exception>
#include <functional>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

namespace cepe::simt {
inline namespace emulated {

/// Grid or block extent (CUDA's dim3).
struct Dim3 {
  unsigned x = 1, y = 1, z = 1;  ///< extents; unused dimensions stay 1
};

/// Stand-in for cudaStream_t: the emulator runs every launch to completion at once.
using Stream = void*;

/// Four 32-bit words loaded together (CUDA's uint4).
struct U32x4 {
  uint32_t x, y, z, w;  ///< the words in memory order
};

/// Four floats loaded together (CUDA's float4).
struct F32x4 {
  float x, y, z, w;  ///< the floats in memory order
};

namespace emu {

constexpr int kWarpSize = 32;
constexpr size_t kStackBytes = 128 * 1024;
constexpr size_t kCanaryBytes = 256;
constexpr unsigned char kCanary = 0xA5;

enum class Wait { None, Warp, Block };

struct Thread {
  ucontext_t context;
  Dim3 index;
  Wait wait = Wait::None;
  bool done = false;
  unsigned shuffles = 0;  // selects the shuffle slot bank; see shuffle()
};

struct Block {
  Dim3 grid, block, index;
  std::vector<Thread> threads;
  std::unique_ptr<char[]> stacks;
  std::vector<unsigned char> shared;
  size_t shared_bytes = 0;
  // Two banks of 32 slots per warp: lanes publish in one bank while laggards may still read the
  // other, which is safe because a lane cannot get two shuffles ahead of its slowest peer.
  std::vector<uint64_t> slots;
  const std::function<void()>* body = nullptr;
  ucontext_t scheduler;
  int current = -1;
  std::exception_ptr error;  // thrown inside a fiber; rethrown by the scheduler
};

inline Block*& current_block() {
  static thread_local Block* block = nullptr;
  return block;
}

inline Thread& self() {
  Block* b = current_block();
  return b->threads[static_cast<size_t>(b->current)];
}

inline void suspend(Wait wait) {
  Block* b = current_block();
  Thread& t = self();
  t.wait = wait;
  swapcontext(&t.context, &b->scheduler);
}

inline void fiber_entry() {
  Block* b = current_block();
  // An exception cannot unwind past a fiber's first frame, so it is handed to the scheduler.
  try {
    (*b->body)();
  } catch (...) {
    b->error = std::current_exception();
  }
  self().done = true;  // returning resumes the scheduler through uc_link
}

template <typename T>
T shuffle(T value, int source_lane) {
  static_assert(sizeof(T) <= sizeof(uint64_t), "shuffle of a type wider than 64 bits");
  Block* b = current_block();
  const int tid = b->current, warp = tid / kWarpSize, lane = tid % kWarpSize;
  Thread& t = self();
  uint64_t* bank = &b->slots[(static_cast<size_t>(warp) * 2 + (t.shuffles++ & 1u)) * kWarpSize];
  std::memcpy(&bank[lane], &value, sizeof(T));
  suspend(Wait::Warp);
  T out;
  std::memcpy(&out, &bank[source_lane & (kWarpSize - 1)], sizeof(T));
  return out;
}

inline void run_block(Block& b) {
  const size_t n = b.threads.size();
  for (size_t i = 0; i < n; ++i) {
    Thread& t = b.threads[i];
    t.wait = Wait::None;
    t.done = false;
    t.shuffles = 0;
    t.index.x = static_cast<unsigned>(i % b.block.x);
    t.index.y = static_cast<unsigned>(i / b.block.x % b.block.y);
    t.index.z = static_cast<unsigned>(i / (static_cast<size_t>(b.block.x) * b.block.y));
    getcontext(&t.context);
    t.context.uc_stack.ss_sp = b.stacks.get() + i * kStackBytes;
    t.context.uc_stack.ss_size = kStackBytes;
    t.context.uc_link = &b.scheduler;
    makecontext(&t.context, fiber_entry, 0);
  }
  std::memset(b.shared.data(), 0xFF, b.shared_bytes);  // NaN floats: unwritten reads show
  std::memset(b.shared.data() + b.shared_bytes, kCanary, kCanaryBytes);
  const size_t warps = (n + kWarpSize - 1) / kWarpSize;
  for (;;) {
    bool progressed = false;
    for (size_t i = 0; i < n; ++i) {
      if (b.threads[i].done || b.threads[i].wait != Wait::None) continue;
      b.current = static_cast<int>(i);
      swapcontext(&b.scheduler, &b.threads[i].context);
      if (b.error) std::rethrow_exception(b.error);
      progressed = true;
    }
    size_t live = 0, at_block = 0;
    for (size_t w = 0; w < warps; ++w) {
      size_t warp_live = 0, at_warp = 0;
      for (size_t i = w * kWarpSize; i < n && i < (w + 1) * kWarpSize; ++i) {
        if (b.threads[i].done) continue;
        ++warp_live;
        at_warp += b.threads[i].wait == Wait::Warp;
        at_block += b.threads[i].wait == Wait::Block;
      }
      live += warp_live;
      if (at_warp > 0 && at_warp == warp_live) {
        for (size_t i = w * kWarpSize; i < n && i < (w + 1) * kWarpSize; ++i)
          b.threads[i].wait = Wait::None;
        progressed = true;
      }
    }
    if (live == 0) break;
    if (at_block > 0 && at_block == live) {
      for (Thread& t : b.threads) t.wait = Wait::None;
      progressed = true;
    }
    if (!progressed)
      throw std::logic_error(
          "SIMT emulator: block (" + std::to_string(b.index.x) + ", " + std::to_string(b.index.y) +
          ", " + std::to_string(b.index.z) +
          ") deadlocked: its threads wait at different barriers (divergent __syncthreads, "
          "__syncwarp or shuffle)");
  }
  for (size_t i = 0; i < kCanaryBytes; ++i)
    if (b.shared[b.shared_bytes + i] != kCanary)
      throw std::logic_error("SIMT emulator: a kernel wrote past its " +
                             std::to_string(b.shared_bytes) + " bytes of shared memory");
}

/// Runs `body` as a kernel over `grid` x `block` threads with `shared_bytes` of shared memory.
inline void launch(Dim3 grid, Dim3 block, size_t shared_bytes, const std::function<void()>& body) {
  const size_t n = static_cast<size_t>(block.x) * block.y * block.z;
  if (n == 0 || n > 1024) throw std::logic_error("SIMT emulator: bad block size");
  if (grid.x == 0 || grid.y == 0 || grid.z == 0 || grid.y > 65535 || grid.z > 65535)
    throw std::logic_error("SIMT emulator: bad grid size");
  if (shared_bytes > 48 * 1024)
    throw std::logic_error(
        "SIMT emulator: more than 48 KiB of dynamic shared memory needs an "
        "explicit opt-in on the GPU");
  Block b;
  b.grid = grid;
  b.block = block;
  b.threads.resize(n);
  b.stacks.reset(new char[n * kStackBytes]);
  b.shared.resize(shared_bytes + kCanaryBytes);
  b.shared_bytes = shared_bytes;
  b.slots.assign((n + kWarpSize - 1) / kWarpSize * 2 * kWarpSize, 0);
  b.body = &body;
  Block* saved = current_block();
  current_block() = &b;
  try {
    for (unsigned z = 0; z < grid.z; ++z)
      for (unsigned y = 0; y < grid.y; ++y)
        for (unsigned x = 0; x < grid.x; ++x) {
          b.index = {x, y, z};
          run_block(b);
        }
  } catch (...) {
    current_block() = saved;
    throw;
  }
  current_block() = saved;
}

}  // namespace emu

/// threadIdx.x
inline unsigned thread_x() {
  return emu::self().index.x;
}
/// blockIdx.x / .y / .z
inline unsigned block_x() {
  return emu::current_block()->index.x;
}
inline unsigned block_y() {
  return emu::current_block()->index.y;
}
inline unsigned block_z() {
  return emu::current_block()->index.z;
}
/// blockDim.x
inline unsigned block_dim_x() {
  return emu::current_block()->block.x;
}
/// gridDim.x
inline unsigned grid_dim_x() {
  return emu::current_block()->grid.x;
}
/// __syncthreads()
inline void sync_block() {
  emu::suspend(emu::Wait::Block);
}
/// __syncwarp()
inline void sync_warp() {
  emu::suspend(emu::Wait::Warp);
}
/// __shfl_xor_sync over the full warp.
inline float shfl_xor(float v, int lane_mask) {
  return emu::shuffle(v, (emu::current_block()->current % emu::kWarpSize) ^ lane_mask);
}
/// The block's dynamic shared memory.
inline float* shared_floats() {
  return reinterpret_cast<float*>(emu::current_block()->shared.data());
}
/// 16-byte load (the pointer must be 16-byte aligned, as on the GPU).
inline U32x4 load_u32x4(const void* p) {
  if (reinterpret_cast<uintptr_t>(p) % 16 != 0)
    throw std::logic_error("SIMT emulator: misaligned 16-byte load");
  U32x4 v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
/// 16-byte load of four floats (16-byte aligned).
inline F32x4 load_f32x4(const float* p) {
  if (reinterpret_cast<uintptr_t>(p) % 16 != 0)
    throw std::logic_error("SIMT emulator: misaligned 16-byte load");
  F32x4 v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

}  // namespace emulated
}  // namespace cepe::simt
