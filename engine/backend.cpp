#include "engine/backend.h"

#include "engine/common/error.h"
#include "engine/cpu/cpu_backend.h"
#ifdef CEPE_HAVE_CUDA
#include "engine/cuda/cuda_backend.h"
#endif

namespace cepe {

std::unique_ptr<Backend> make_backend(Device device, const BackendOptions& options) {
  if (device == Device::CPU) return make_cpu_backend(options);
#ifdef CEPE_HAVE_CUDA
  return make_cuda_backend(options);
#else
  CEPE_THROW("this build of cepe has no CUDA backend (nvcc was not found at build time)");
#endif
}

bool backend_available(Device device) {
  if (device == Device::CPU) return true;
#ifdef CEPE_HAVE_CUDA
  return cuda_device_available();
#else
  return false;
#endif
}

BackendMemory backend_memory(Backend& backend, bool reset_peak) {
#ifdef CEPE_HAVE_CUDA
  if (backend.device() == Device::CUDA) return cuda_backend_memory(backend, reset_peak);
#endif
  (void)reset_peak;
  (void)backend;
  return {};
}

Device parse_device(const std::string& name) {
  if (name == "cpu") return Device::CPU;
  if (name == "cuda" || name == "gpu") return Device::CUDA;
  CEPE_THROW("unknown device '" << name << "' (expected cpu or cuda)");
}

}  // namespace cepe
