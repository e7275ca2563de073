// The C entry points of the CUDA backend plugin, libcepe_cuda.so (engine/cuda/cuda_plugin.cpp),
// which engine/backend.cpp opens with dlopen the first time a CUDA backend is asked for. Keeping
// libcudart and cuBLAS out of the binaries saves CPU users ~150-170 MB of resident memory: their
// relocations are paid at start-up whether a GPU is used or not.
//
// The plugin carries its own copy of the engine's objects it uses (tensors, errors, op checks),
// so both sides must agree on their layout: cuda_plugin_abi() folds the version below and the
// sizes of the types that cross the boundary into one number the loader compares.
#pragma once

#include <cstddef>
#include <cstdint>

#include "engine/backend.h"

namespace cepe {

/// Bumped whenever the entry points below or the types they pass change meaning.
constexpr uint64_t kCudaPluginVersion = 1;

/// The number both sides of the plugin boundary must compute alike.
constexpr uint64_t cuda_plugin_abi() {
  return (kCudaPluginVersion << 48) ^ (uint64_t(sizeof(Tensor)) << 32) ^
         (uint64_t(sizeof(BackendOptions)) << 24) ^ (uint64_t(sizeof(BackendMemory)) << 16) ^
         (uint64_t(sizeof(AttentionSegment)) << 4) ^ uint64_t(sizeof(Error));
}

/// File name of the plugin, looked for beside the executable and in ../lib/cepe/.
constexpr const char* kCudaPluginFileName = "libcepe_cuda.so";

}  // namespace cepe

extern "C" {
/// cuda_plugin_abi() as the plugin was built.
uint64_t cepe_cuda_plugin_abi();
/// 1 when a CUDA driver and at least one GPU are present; never throws.
int cepe_cuda_device_available();
/// A new CUDA backend, or nullptr with the reason in `error` (NUL-terminated, truncated).
cepe::Backend* cepe_cuda_make_backend(const cepe::BackendOptions* options, char* error,
                                      size_t error_size);
/// Fills `out` for a backend the plugin made; 0 on success, else -1 with the reason in `error`.
int cepe_cuda_backend_memory(cepe::Backend* backend, int reset_peak, cepe::BackendMemory* out,
                             char* error, size_t error_size);
}
