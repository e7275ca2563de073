// CPU implementation of the backend: OpenBLAS for GEMMs, OpenMP threads for everything else.
#pragma once

#include <memory>

#include "engine/backend.h"

namespace cepe {

/// Creates the CPU backend.
std::unique_ptr<Backend> make_cpu_backend(const BackendOptions& options);

}  // namespace cepe
