// The CUDA backend (engine/cuda/cuda_backend.cu). This header has no CUDA types, so host code
// includes it whether or not it is built with nvcc; it is only compiled in when nvcc was found.
#pragma once

#include <memory>

#include "engine/backend.h"

namespace cepe {

/// True when a CUDA driver and at least one GPU are present; never throws.
bool cuda_device_available();

/// Creates the CUDA backend on the current device (device 0 unless CUDA_VISIBLE_DEVICES says
/// otherwise); throws cepe::Error ("no CUDA device: ...") when there is none.
std::unique_ptr<Backend> make_cuda_backend(const BackendOptions& options);

/// Memory figures of a backend made by make_cuda_backend; `reset_peak` restarts the peak.
BackendMemory cuda_backend_memory(Backend& backend, bool reset_peak);

}  // namespace cepe
