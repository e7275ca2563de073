#include "engine/backend.h"

#include <dlfcn.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <vector>

#include "common/error.h"
#include "engine/cpu/cpu_backend.h"
#include "engine/cuda/cuda_plugin.h"

namespace cepe {

int64_t AttentionSegment::key_count() const {
  if (k_parts.empty()) return k.dim(0);
  int64_t n = 0;
  for (const Tensor& part : k_parts) n += part.dim(0);
  return n;
}

namespace op_checks {

namespace {
int64_t width_of(const Tensor& x) {
  return x.rank() > 0 ? x.dim(-1) : 0;
}
}  // namespace

void embedding(const Tensor& table, const std::vector<int32_t>& ids, const Tensor& out) {
  CEPE_CHECK(table.rank() == 2, "embedding table must be 2-D, got " << table.shape_string());
  const int64_t rows = table.dim(0), width = table.dim(1);
  CEPE_CHECK(
      out.rank() == 2 && out.dim(0) == static_cast<int64_t>(ids.size()) && out.dim(1) == width,
      "embedding output " << out.shape_string() << " does not fit " << ids.size()
                          << " ids of width " << width);
  for (size_t i = 0; i < ids.size(); ++i)
    CEPE_CHECK(ids[i] >= 0 && ids[i] < rows, "token id " << ids[i] << " at position " << i
                                                         << " is outside the vocabulary [0, "
                                                         << rows << ")");
}

void linear(const Tensor& x, const Tensor& weight, const Tensor& out) {
  CEPE_CHECK(weight.rank() == 2, "linear weight must be 2-D, got " << weight.shape_string());
  const int64_t k = weight.dim(1), n = weight.dim(0);
  CEPE_CHECK(k > 0, "linear weight " << weight.shape_string() << " has no columns");
  const int64_t m = x.numel() / k;
  CEPE_CHECK(x.dim(-1) == k && out.numel() == m * n && out.dim(-1) == n,
             "linear: input " << x.shape_string() << " · weight " << weight.shape_string()
                              << "ᵀ does not fit output " << out.shape_string());
}

void rope(const Tensor& x, int heads, int head_dim, const Tensor& cos, const Tensor& sin) {
  CEPE_CHECK(heads > 0 && head_dim > 0 && head_dim % 2 == 0 && x.dim(-1) == heads * head_dim,
             "rope: input " << x.shape_string() << " is not " << heads << " heads of " << head_dim);
  const int64_t t_len = x.numel() / (static_cast<int64_t>(heads) * head_dim);
  const int64_t half = head_dim / 2;
  CEPE_CHECK(cos.numel() == t_len * half && sin.numel() == t_len * half,
             "rope tables " << cos.shape_string() << " do not match " << t_len
                            << " rows of head_dim " << head_dim);
}

void copy_rows(const Tensor& src, int64_t src_row, const Tensor& dst, int64_t dst_row,
               int64_t count) {
  const bool narrowing = src.dtype() == DType::F32 && dst.dtype() == DType::F16;
  CEPE_CHECK(src.dtype() == dst.dtype() || narrowing,
             "copy_rows: cannot copy " << dtype_name(src.dtype()) << " rows into a "
                                       << dtype_name(dst.dtype()) << " tensor");
  CEPE_CHECK(dst.dim(-1) == src.dim(-1) && src_row >= 0 && dst_row >= 0 && count >= 0 &&
                 src_row + count <= src.dim(0) && dst_row + count <= dst.dim(0),
             "copy_rows: cannot copy rows [" << src_row << ", " << src_row + count << ") of "
                                             << src.shape_string() << " to row " << dst_row
                                             << " of " << dst.shape_string());
}

void rms_norm(const Tensor& x, const Tensor& weight, const Tensor& out) {
  const int64_t width = width_of(x);
  CEPE_CHECK(weight.numel() == width,
             "rms_norm weight has " << weight.numel() << " elements, input width is " << width);
  CEPE_CHECK(out.numel() == x.numel(),
             "rms_norm output " << out.shape_string() << " vs input " << x.shape_string());
}

void layer_norm(const Tensor& x, const Tensor& weight, const Tensor& bias, const Tensor& out) {
  const int64_t width = width_of(x);
  CEPE_CHECK(weight.numel() == width && bias.numel() == width,
             "layer_norm weight/bias have " << weight.numel() << "/" << bias.numel()
                                            << " elements, input width is " << width);
  CEPE_CHECK(out.numel() == x.numel(),
             "layer_norm output " << out.shape_string() << " vs input " << x.shape_string());
}

void add_bias(const Tensor& x, const Tensor& bias) {
  const int64_t width = width_of(x);
  CEPE_CHECK(bias.numel() == width,
             "add_bias: bias has " << bias.numel() << " elements, input width is " << width);
}

void add(const Tensor& x, const Tensor& y) {
  CEPE_CHECK(x.numel() == y.numel(), "add: " << x.shape_string() << " += " << y.shape_string());
}

void silu_mul(const Tensor& gate, const Tensor& up) {
  CEPE_CHECK(gate.numel() == up.numel(),
             "silu_mul: gate " << gate.shape_string() << " vs up " << up.shape_string());
}

void head_linear(const Tensor& x, const Tensor& weight, int heads, int groups, bool transposed,
                 const Tensor& out) {
  CEPE_CHECK(heads > 0 && groups > 0 && heads % groups == 0,
             "head_linear: " << heads << " heads do not split into " << groups << " groups");
  CEPE_CHECK(
      weight.rank() == 2 && weight.dim(0) > 0 && weight.dim(1) > 0 && weight.dim(0) % groups == 0,
      "head_linear: weight " << weight.shape_string() << " does not split into " << groups
                             << " row blocks");
  const int64_t a = weight.dim(0) / groups, b = weight.dim(1);
  const int64_t in = transposed ? b : a, out_width = transposed ? a : b;
  CEPE_CHECK(x.rank() == 2 && x.dim(1) == heads * in, "head_linear: input "
                                                          << x.shape_string() << " is not rows x "
                                                          << heads << " heads of " << in);
  CEPE_CHECK(out.rank() == 2 && out.dim(0) == x.dim(0) && out.dim(1) == heads * out_width,
             "head_linear: output " << out.shape_string() << " is not " << x.dim(0) << " x "
                                    << heads << " heads of " << out_width);
}

void attention(const Tensor& q, const std::vector<AttentionSegment>& segments,
               const AttentionShape& shape, const Tensor& out) {
  CEPE_CHECK(shape.heads > 0 && shape.kv_heads > 0 && shape.head_dim > 0 &&
                 shape.heads % shape.kv_heads == 0,
             "attention: " << shape.heads << " heads of " << shape.head_dim << " over "
                           << shape.kv_heads << " key/value heads");
  const int64_t q_stride = static_cast<int64_t>(shape.heads) * shape.head_dim;
  const int64_t kv_stride = static_cast<int64_t>(shape.kv_heads) * shape.head_dim;
  CEPE_CHECK(q.rank() == 2 && out.rank() == 2 && q.dim(-1) == q_stride && out.dim(-1) == q_stride &&
                 out.dim(0) == q.dim(0),
             "attention: queries " << q.shape_string() << " / output " << out.shape_string()
                                   << ", expected [rows, " << q_stride << "]");
  for (const AttentionSegment& sg : segments) {
    CEPE_CHECK(sg.k_parts.size() == sg.v_parts.size(),
               "attention: " << sg.k_parts.size() << " key parts for " << sg.v_parts.size()
                             << " value parts");
    CEPE_CHECK(sg.k_parts.empty() || !sg.causal, "attention: keys in parts cannot be causal");
    for (size_t i = 0; i < std::max<size_t>(1, sg.k_parts.size()); ++i) {
      const Tensor& k = sg.k_parts.empty() ? sg.k : sg.k_parts[i];
      const Tensor& v = sg.k_parts.empty() ? sg.v : sg.v_parts[i];
      CEPE_CHECK(k.rank() == 2 && v.rank() == 2 && k.dim(-1) == kv_stride &&
                     v.dim(-1) == kv_stride && k.dim(0) == v.dim(0),
                 "attention: keys " << k.shape_string() << " / values " << v.shape_string()
                                    << " do not match " << shape.kv_heads << " heads of "
                                    << shape.head_dim);
    }
    CEPE_CHECK(sg.q_begin >= 0 && sg.q_len >= 0 && sg.q_begin + sg.q_len <= q.dim(0),
               "attention: segment rows [" << sg.q_begin << ", " << sg.q_begin + sg.q_len
                                           << ") out of range for " << q.dim(0) << " queries");
  }
}

}  // namespace op_checks

namespace {

// The CUDA backend lives in a plugin (engine/cuda/cuda_plugin.h), opened once, on first use, and
// never closed: backends and tensors it made may outlive any caller.
struct CudaPlugin {
  std::string error;  // why it cannot be used ("" when it can)
  decltype(&cepe_cuda_device_available) device_available = nullptr;
  decltype(&cepe_cuda_make_backend) make_backend = nullptr;
  decltype(&cepe_cuda_backend_memory) backend_memory = nullptr;
};

std::vector<std::string> cuda_plugin_candidates() {
  if (const char* path = std::getenv("CEPE_CUDA_PLUGIN"); path != nullptr && *path != '\0')
    return {path};
  std::vector<std::string> candidates;
  std::error_code ec;
  const std::filesystem::path exe = std::filesystem::read_symlink("/proc/self/exe", ec);
  if (!ec) {
    candidates.push_back((exe.parent_path() / kCudaPluginFileName).string());
    candidates.push_back(
        (exe.parent_path() / ".." / "lib" / "cepe" / kCudaPluginFileName).string());
  }
#ifdef CEPE_CUDA_PLUGIN_BUILD_PATH
  candidates.push_back(CEPE_CUDA_PLUGIN_BUILD_PATH);  // tests and benchmarks in the build tree
#endif
  return candidates;
}

CudaPlugin load_cuda_plugin() {
  CudaPlugin plugin;
  const std::vector<std::string> candidates = cuda_plugin_candidates();
  std::string path;
  for (const std::string& candidate : candidates) {
    if (access(candidate.c_str(), F_OK) == 0) {
      path = candidate;
      break;
    }
  }
  if (path.empty()) {
    std::string looked;
    for (const std::string& c : candidates) looked += (looked.empty() ? "" : ", ") + c;
    plugin.error = std::string("the CUDA backend plugin ") + kCudaPluginFileName +
                   " was not found (looked for " + looked +
                   "; set CEPE_CUDA_PLUGIN to its path, or build with nvcc present)";
    return plugin;
  }
  void* handle = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (handle == nullptr) {
    const char* why = dlerror();
    plugin.error = "cannot load the CUDA backend plugin " + path + ": " + (why ? why : "?");
    return plugin;
  }
  auto symbol = [&](const char* name) {
    void* found = dlsym(handle, name);
    if (found == nullptr && plugin.error.empty())
      plugin.error = "the CUDA backend plugin " + path + " lacks the entry point " + name;
    return found;
  };
  auto abi = reinterpret_cast<decltype(&cepe_cuda_plugin_abi)>(symbol("cepe_cuda_plugin_abi"));
  plugin.device_available =
      reinterpret_cast<decltype(plugin.device_available)>(symbol("cepe_cuda_device_available"));
  plugin.make_backend =
      reinterpret_cast<decltype(plugin.make_backend)>(symbol("cepe_cuda_make_backend"));
  plugin.backend_memory =
      reinterpret_cast<decltype(plugin.backend_memory)>(symbol("cepe_cuda_backend_memory"));
  if (plugin.error.empty() && abi() != cuda_plugin_abi())
    plugin.error = "the CUDA backend plugin " + path +
                   " was built from other sources than this binary (ABI mismatch); rebuild both";
  return plugin;
}

const CudaPlugin& cuda_plugin() {
  static const CudaPlugin plugin = load_cuda_plugin();
  return plugin;
}

}  // namespace

std::unique_ptr<Backend> make_backend(Device device, const BackendOptions& options) {
  if (device == Device::CPU) return make_cpu_backend(options);
  CEPE_CHECK(options.weights == WeightKind::Stored,
             "weights '" << weight_kind_name(options.weights) << "' is supported on the cpu "
                         << "backend only; on " << device_name(device)
                         << " use 'stored' (re-type the checkpoint with `cepe convert weights` "
                            "for bf16 or f16)");
  const CudaPlugin& plugin = cuda_plugin();
  CEPE_CHECK(plugin.error.empty(), "no CUDA backend: " << plugin.error);
  char error[1024] = "";
  Backend* backend = plugin.make_backend(&options, error, sizeof error);
  CEPE_CHECK(backend != nullptr, error);
  return std::unique_ptr<Backend>(backend);
}

bool backend_available(Device device) {
  if (device == Device::CPU) return true;
  const CudaPlugin& plugin = cuda_plugin();
  return plugin.error.empty() && plugin.device_available() != 0;
}

BackendMemory backend_memory(Backend& backend, bool reset_peak) {
  BackendMemory memory;
  if (backend.device() != Device::CUDA) return memory;
  const CudaPlugin& plugin = cuda_plugin();
  CEPE_CHECK(plugin.error.empty(), "no CUDA backend: " << plugin.error);
  char error[1024] = "";
  CEPE_CHECK(plugin.backend_memory(&backend, reset_peak ? 1 : 0, &memory, error, sizeof error) == 0,
             error);
  return memory;
}

Device parse_device(const std::string& name) {
  if (name == "cpu") return Device::CPU;
  if (name == "cuda" || name == "gpu") return Device::CUDA;
  CEPE_THROW("unknown device '" << name << "' (expected cpu or cuda)");
}

}  // namespace cepe
