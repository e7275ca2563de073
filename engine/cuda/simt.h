// The few CUDA features the kernels in kernels.cuh use, behind one small interface. Under nvcc it
// is CUDA itself; under a host compiler it is simt_emulator.h, which runs every thread of a block
// as a fiber, so the tests check the very same kernel code on machines without a GPU.
// Everything lives in an inline namespace named after the mode, so an emulated copy compiled into
// a test never collides with the nvcc-compiled one in the library (no ODR clash at link time).
#pragma once

#include <cstdint>
#include <cstring>

#if defined(__CUDACC__)
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "engine/cuda/cuda_check.h"

#define CEPE_SIMT_ABI nvcc
#define CEPE_GLOBAL __global__
#define CEPE_DEVICE __device__ __forceinline__
#define CEPE_HOST_DEVICE __host__ __device__ __forceinline__
#define CEPE_UNROLL _Pragma("unroll")
#define CEPE_UNROLL4 _Pragma("unroll 4")

namespace cepe::simt {
inline namespace nvcc {

/// Grid or block extent.
struct Dim3 {
  unsigned x = 1, y = 1, z = 1;  ///< extents; unused dimensions stay 1
};
/// The stream kernels are queued on.
using Stream = cudaStream_t;
/// Four 32-bit words loaded together.
using U32x4 = uint4;
/// Four floats loaded together.
using F32x4 = float4;

CEPE_DEVICE unsigned thread_x() {
  return threadIdx.x;
}
CEPE_DEVICE unsigned block_x() {
  return blockIdx.x;
}
CEPE_DEVICE unsigned block_y() {
  return blockIdx.y;
}
CEPE_DEVICE unsigned block_z() {
  return blockIdx.z;
}
CEPE_DEVICE unsigned block_dim_x() {
  return blockDim.x;
}
CEPE_DEVICE unsigned grid_dim_x() {
  return gridDim.x;
}
CEPE_DEVICE void sync_block() {
  __syncthreads();
}
CEPE_DEVICE void sync_warp() {
  __syncwarp();
}
CEPE_DEVICE float shfl_xor(float v, int lane_mask) {
  return __shfl_xor_sync(0xffffffffu, v, lane_mask);
}
CEPE_DEVICE float* shared_floats() {
  extern __shared__ float cepe_shared_floats[];
  return cepe_shared_floats;
}
CEPE_DEVICE U32x4 load_u32x4(const void* p) {
  return *static_cast<const uint4*>(p);
}
CEPE_DEVICE F32x4 load_f32x4(const float* p) {
  return *reinterpret_cast<const float4*>(p);
}

/// Widens a bfloat16 bit pattern.
CEPE_DEVICE float bf16_bits_to_float(uint16_t h) {
  return __uint_as_float(uint32_t(h) << 16);
}
/// Widens an IEEE half bit pattern.
CEPE_DEVICE float f16_bits_to_float(uint16_t h) {
  return __half2float(__ushort_as_half(h));
}
/// Rounds to bfloat16 (nearest even).
CEPE_DEVICE uint16_t float_to_bf16_bits(float f) {
  return __bfloat16_as_ushort(__float2bfloat16_rn(f));
}
/// Rounds to IEEE half (nearest even).
CEPE_DEVICE uint16_t float_to_f16_bits(float f) {
  return __half_as_ushort(__float2half_rn(f));
}

}  // namespace nvcc
}  // namespace cepe::simt

/// Launches a kernel and checks the launch (not its completion: errors of the run itself surface
/// at the next synchronising call).
#define CEPE_LAUNCH(kernel, grid, block, shared_bytes, stream, ...)                     \
  do {                                                                                  \
    kernel<<<dim3((grid).x, (grid).y, (grid).z), dim3((block).x, (block).y, (block).z), \
             (shared_bytes), (stream)>>>(__VA_ARGS__);                                  \
    CEPE_CUDA_CHECK(cudaGetLastError());                                                \
  } while (0)

#else  // host compiler: the emulator

#include "engine/cuda/simt_emulator.h"
#include "engine/dtype.h"

#define CEPE_SIMT_ABI emulated
#define CEPE_GLOBAL inline
#define CEPE_DEVICE inline
#define CEPE_HOST_DEVICE inline
#define CEPE_UNROLL
#define CEPE_UNROLL4

namespace cepe::simt {
inline namespace emulated {

/// Widens a bfloat16 bit pattern.
inline float bf16_bits_to_float(uint16_t h) {
  return ::cepe::bf16_to_f32(h);
}
/// Widens an IEEE half bit pattern.
inline float f16_bits_to_float(uint16_t h) {
  return ::cepe::f16_to_f32(h);
}
/// Rounds to bfloat16 (nearest even).
inline uint16_t float_to_bf16_bits(float f) {
  return ::cepe::f32_to_bf16(f);
}
/// Rounds to IEEE half (nearest even).
inline uint16_t float_to_f16_bits(float f) {
  return ::cepe::f32_to_f16(f);
}

}  // namespace emulated
}  // namespace cepe::simt

#define CEPE_LAUNCH(kernel, grid, block, shared_bytes, stream, ...)                           \
  do {                                                                                        \
    (void)(stream);                                                                           \
    ::cepe::simt::emu::launch((grid), (block), (shared_bytes), [&] { kernel(__VA_ARGS__); }); \
  } while (0)

#endif
