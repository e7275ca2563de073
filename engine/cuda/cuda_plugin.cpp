// The plugin's side of engine/cuda/cuda_plugin.h: C entry points around cuda_backend.h. Errors
// come back as text, not exceptions, so nothing unwinds through the dlopen boundary.
#include "engine/cuda/cuda_plugin.h"

#include <cstring>
#include <exception>

#include "engine/cuda/cuda_backend.h"

namespace {
void write_error(const char* what, char* error, size_t error_size) {
  if (error == nullptr || error_size == 0) return;
  std::strncpy(error, what, error_size - 1);
  error[error_size - 1] = '\0';
}
}  // namespace

extern "C" {

__attribute__((visibility("default"))) uint64_t cepe_cuda_plugin_abi() {
  return cepe::cuda_plugin_abi();
}

__attribute__((visibility("default"))) int cepe_cuda_device_available() {
  return cepe::cuda_device_available() ? 1 : 0;
}

__attribute__((visibility("default"))) cepe::Backend* cepe_cuda_make_backend(
    const cepe::BackendOptions* options, char* error, size_t error_size) {
  try {
    return cepe::make_cuda_backend(*options).release();
  } catch (const std::exception& e) {
    write_error(e.what(), error, error_size);
  } catch (...) {
    write_error("unknown error while creating the CUDA backend", error, error_size);
  }
  return nullptr;
}

__attribute__((visibility("default"))) int cepe_cuda_backend_memory(cepe::Backend* backend,
                                                                    int reset_peak,
                                                                    cepe::BackendMemory* out,
                                                                    char* error,
                                                                    size_t error_size) {
  try {
    *out = cepe::cuda_backend_memory(*backend, reset_peak != 0);
    return 0;
  } catch (const std::exception& e) {
    write_error(e.what(), error, error_size);
  } catch (...) {
    write_error("unknown error while reading CUDA memory figures", error, error_size);
  }
  return -1;
}

}  // extern "C"
