// CUDA implementation of the backend: cuBLAS for GEMMs, kernels.cuh for everything else, all on
// one stream. Activations are F32 (as on the CPU); weights keep their checkpoint dtype and 16-bit
// ones are multiplied with F32 accumulation. Memory comes from a stream-ordered pool that keeps
// freed blocks for reuse, so per-layer scratch never reaches cudaMalloc in steady state.
#include "engine/cuda/cuda_backend.h"

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <atomic>
#include <climits>
#include <cstdio>
#include <cstring>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "common/error.h"
#include "engine/cuda/cuda_check.h"
#include "engine/cuda/kernels.cuh"

namespace cepe {
namespace {

namespace kern = cuda_kernels;

std::string format_bytes(size_t bytes) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.2f GiB (%zu bytes)", bytes / 1073741824.0, bytes);
  return buf;
}

// Why no device can be used, as the runtime puts it ("" when one can).
std::string cuda_unavailable_reason() {
  int count = 0;
  const cudaError_t err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess) {
    cudaGetLastError();  // clear it so later runtime calls start clean
    return std::string(cudaGetErrorName(err)) + " (" + cudaGetErrorString(err) + ")";
  }
  return count > 0 ? "" : "the driver reports no GPU";
}

// Device state shared by the backend and every tensor it hands out: a tensor's deleter returns
// its memory to the pool in stream order, so this lives until the last tensor is gone.
class CudaContext : public std::enable_shared_from_this<CudaContext> {
 public:
  explicit CudaContext(const BackendOptions& options) : budget_(options.memory_budget_bytes) {
    CEPE_CUDA_CHECK(cudaGetDevice(&device_));
    CEPE_CUDA_CHECK(cudaGetDeviceProperties(&props_, device_));
    CEPE_CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
    int pools = 0;
    CEPE_CUDA_CHECK(cudaDeviceGetAttribute(&pools, cudaDevAttrMemoryPoolsSupported, device_));
    if (pools) {
      cudaMemPoolProps p{};
      p.allocType = cudaMemAllocationTypePinned;
      p.location.type = cudaMemLocationTypeDevice;
      p.location.id = device_;
      CEPE_CUDA_CHECK(cudaMemPoolCreate(&pool_, &p));
      // Keep freed memory in the pool instead of returning it at every synchronisation.
      uint64_t keep = UINT64_MAX;
      CEPE_CUDA_CHECK(cudaMemPoolSetAttribute(pool_, cudaMemPoolAttrReleaseThreshold, &keep));
    }
    CEPE_CUBLAS_CHECK(cublasCreate(&blas_));
    CEPE_CUBLAS_CHECK(cublasSetStream(blas_, stream_));
    // Plain FP32 for F32 GEMMs (no TF32), so F32 checkpoints match the CPU backend closely.
    CEPE_CUBLAS_CHECK(cublasSetMathMode(blas_, CUBLAS_DEFAULT_MATH));
  }

  ~CudaContext() {
    // Errors are ignored: a destructor cannot report them, and at process exit the runtime may
    // already be unloading.
    cudaStreamSynchronize(stream_);
    for (int i = 0; i < 2; ++i) {
      if (staging_[i]) cudaFreeHost(staging_[i]);
      if (staged_[i]) cudaEventDestroy(staged_[i]);
    }
    if (blas_) cublasDestroy(blas_);
    if (pool_) cudaMemPoolDestroy(pool_);
    cudaStreamDestroy(stream_);
    cudaGetLastError();
  }

  CudaContext(const CudaContext&) = delete;
  CudaContext& operator=(const CudaContext&) = delete;

  cudaStream_t stream() const { return stream_; }
  cublasHandle_t blas() const { return blas_; }
  const cudaDeviceProp& props() const { return props_; }

  // Device memory owned by the returned pointer; `what` names it in a "does not fit" error.
  std::shared_ptr<void> allocate(size_t bytes, const std::string& what) {
    if (bytes == 0) return nullptr;
    const size_t held = in_use_.load();
    if (budget_ && held + bytes > budget_)
      CEPE_THROW("model does not fit: " << what << " needs " << format_bytes(bytes) << " but only "
                                        << format_bytes(budget_ - std::min(held, budget_))
                                        << " of the memory budget of " << format_bytes(budget_)
                                        << " are available");
    void* p = nullptr;
    cudaError_t err = raw_allocate(&p, bytes);
    if (err == cudaErrorMemoryAllocation) {
      cudaGetLastError();
      // Blocks freed to the pool but too small for this request go back to the device first.
      CEPE_CUDA_CHECK(cudaStreamSynchronize(stream_));
      if (pool_) CEPE_CUDA_CHECK(cudaMemPoolTrimTo(pool_, 0));
      err = raw_allocate(&p, bytes);
    }
    if (err == cudaErrorMemoryAllocation) {
      cudaGetLastError();
      size_t free_bytes = 0, total = 0;
      cudaMemGetInfo(&free_bytes, &total);
      CEPE_THROW("model does not fit: "
                 << what << " needs " << format_bytes(bytes) << " but the GPU (" << props_.name
                 << ") has only " << format_bytes(free_bytes) << " free of " << format_bytes(total)
                 << " (this backend holds " << format_bytes(held) << ")");
    }
    CEPE_CUDA_CHECK(err);
    const size_t now = in_use_.fetch_add(bytes) + bytes;
    size_t peak = peak_.load();
    while (now > peak && !peak_.compare_exchange_weak(peak, now)) {
    }
    // Should making the owner throw, shared_ptr runs the deleter on p itself.
    std::shared_ptr<CudaContext> self = shared_from_this();
    return std::shared_ptr<void>(p, [self, bytes](void* q) { self->release(q, bytes); });
  }

  // Host -> device copy. Large copies go through two pinned staging buffers of bounded size, so a
  // memory-mapped checkpoint streams to the GPU without being pinned or copied whole on the host.
  void upload(void* dst, const void* src, size_t bytes) {
    if (bytes == 0) return;
    constexpr size_t kDirect = 1 << 20;
    if (bytes <= kDirect) {
      // Pageable source: the runtime stages it before returning, so `src` may die right after.
      CEPE_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, stream_));
      return;
    }
    std::lock_guard<std::mutex> lock(staging_mutex_);
    if (!staging_[0]) {
      for (int i = 0; i < 2; ++i) {
        CEPE_CUDA_CHECK(cudaHostAlloc(&staging_[i], kStagingBytes, cudaHostAllocDefault));
        CEPE_CUDA_CHECK(cudaEventCreateWithFlags(&staged_[i], cudaEventDisableTiming));
      }
    }
    const char* s = static_cast<const char*>(src);
    char* d = static_cast<char*>(dst);
    for (size_t off = 0, i = 0; off < bytes; off += kStagingBytes, ++i) {
      const int slot = static_cast<int>(i & 1);
      const size_t n = std::min(kStagingBytes, bytes - off);
      // The buffer is free once its previous copy has left it.
      if (pending_[slot]) CEPE_CUDA_CHECK(cudaEventSynchronize(staged_[slot]));
      std::memcpy(staging_[slot], s + off, n);
      CEPE_CUDA_CHECK(cudaMemcpyAsync(d + off, staging_[slot], n, cudaMemcpyHostToDevice, stream_));
      CEPE_CUDA_CHECK(cudaEventRecord(staged_[slot], stream_));
      pending_[slot] = true;
    }
  }

  BackendMemory memory(bool reset_peak) {
    BackendMemory m;
    m.in_use = in_use_.load();
    m.peak_in_use = peak_.load();
    CEPE_CUDA_CHECK(cudaMemGetInfo(&m.device_free, &m.device_total));
    if (reset_peak) peak_.store(m.in_use);
    return m;
  }

 private:
  static constexpr size_t kStagingBytes = 32u << 20;

  cudaError_t raw_allocate(void** p, size_t bytes) {
    return pool_ ? cudaMallocFromPoolAsync(p, bytes, pool_, stream_) : cudaMalloc(p, bytes);
  }

  void release(void* p, size_t bytes) noexcept {
    // Stream order makes the memory reusable only after the work queued so far has used it.
    if (pool_)
      cudaFreeAsync(p, stream_);
    else
      cudaFree(p);
    in_use_.fetch_sub(bytes);
  }

  int device_ = 0;
  cudaDeviceProp props_{};
  cudaStream_t stream_ = nullptr;
  cudaMemPool_t pool_ = nullptr;
  cublasHandle_t blas_ = nullptr;
  size_t budget_ = 0;
  std::atomic<size_t> in_use_{0};
  std::atomic<size_t> peak_{0};
  std::mutex staging_mutex_;
  void* staging_[2] = {nullptr, nullptr};
  cudaEvent_t staged_[2] = {nullptr, nullptr};
  bool pending_[2] = {false, false};
};

void check_cuda(const Tensor& t, const char* what) {
  CEPE_CHECK(t.device() == Device::CUDA, what << " is on " << device_name(t.device())
                                              << ", the CUDA backend needs CUDA tensors");
}

void check_f32(const Tensor& t, const char* what) {
  check_cuda(t, what);
  CEPE_CHECK(t.dtype() == DType::F32,
             what << " must be F32 on the CUDA backend, got " << dtype_name(t.dtype()));
}

kern::ElemType elem_type(DType t, const char* what) {
  switch (t) {
    case DType::F32:
      return kern::ElemType::F32;
    case DType::F16:
      return kern::ElemType::F16;
    case DType::BF16:
      return kern::ElemType::BF16;
    default:
      CEPE_THROW(what << ": unsupported dtype " << dtype_name(t));
  }
}

int to_int(int64_t v, const char* what) {
  CEPE_CHECK(v >= 0 && v <= INT_MAX, what << " (" << v << ") is too large for cuBLAS");
  return static_cast<int>(v);
}

class CudaBackend final : public Backend {
 public:
  explicit CudaBackend(const BackendOptions& options)
      : ctx_(std::make_shared<CudaContext>(options)) {}

  ~CudaBackend() override {
    try {
      synchronize();
    } catch (...) {  // an earlier kernel failure was already reported where it surfaced
    }
  }

  Device device() const override { return Device::CUDA; }

  std::string describe() const override {
    const cudaDeviceProp& p = ctx_->props();
    char buf[sizeof p.name + 128];
    std::snprintf(buf, sizeof buf, "cuda (%s, sm_%d%d, %d SMs, %.1f GiB, cuBLAS)", p.name, p.major,
                  p.minor, p.multiProcessorCount, p.totalGlobalMem / 1073741824.0);
    return buf;
  }

  Tensor empty(std::vector<int64_t> shape, DType dtype) override {
    for (int64_t d : shape)
      CEPE_CHECK(d >= 0, "negative dimension in shape " << shape_to_string(shape));
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    const size_t bytes = static_cast<size_t>(n) * dtype_size(dtype);
    std::shared_ptr<void> mem = ctx_->allocate(
        bytes, std::string("a ") + shape_to_string(shape) + " " + dtype_name(dtype) + " tensor");
    void* p = mem.get();
    return Tensor::wrap(p, std::move(shape), dtype, Device::CUDA, std::move(mem));
  }

  Tensor load_weight(const Tensor& host, WeightUse use) override {
    CEPE_CHECK(host.device() == Device::CPU,
               "load_weight expects a host (checkpoint) tensor, got one on "
                   << device_name(host.device()));
    if (use == WeightUse::Vector && host.dtype() != DType::F32) {
      // Norm weights: small vectors, widened on the host.
      Tensor wide = Tensor::empty(host.shape(), DType::F32);
      convert_to_f32(host.raw(), host.dtype(), wide.data<float>(), host.numel());
      return to_device(wide);
    }
    Tensor out = empty(host.shape(), host.dtype());
    ctx_->upload(out.raw(), host.raw(), host.nbytes());
    return out;
  }

  Tensor to_device(const Tensor& host) override {
    CEPE_CHECK(host.device() == Device::CPU,
               "to_device expects a host tensor, got one on " << device_name(host.device()));
    Tensor out = empty(host.shape(), host.dtype());
    ctx_->upload(out.raw(), host.raw(), host.nbytes());
    return out;
  }

  Tensor to_host_f32(const Tensor& t) override {
    check_cuda(t, "tensor");
    Tensor raw = Tensor::empty(t.shape(), t.dtype());
    if (t.nbytes())
      CEPE_CUDA_CHECK(
          cudaMemcpyAsync(raw.raw(), t.raw(), t.nbytes(), cudaMemcpyDeviceToHost, stream()));
    synchronize();
    if (t.dtype() == DType::F32) return raw;
    Tensor out = Tensor::empty(t.shape(), DType::F32);
    convert_to_f32(raw.raw(), t.dtype(), out.data<float>(), t.numel());
    return out;
  }

  void embedding(const Tensor& table, const std::vector<int32_t>& ids, Tensor& out) override {
    check_cuda(table, "embedding table");
    check_f32(out, "embedding output");
    op_checks::embedding(table, ids, out);
    const int64_t rows = table.dim(0), width = table.dim(1);
    if (ids.empty()) return;
    const kern::ElemType type = elem_type(table.dtype(), "embedding table");
    std::shared_ptr<void> dev_ids = ctx_->allocate(ids.size() * sizeof(int32_t), "token ids");
    ctx_->upload(dev_ids.get(), ids.data(), ids.size() * sizeof(int32_t));
    kern::launch_embedding(table.raw(), type, static_cast<const int32_t*>(dev_ids.get()),
                           static_cast<int64_t>(ids.size()), width, out.data<float>(), stream());
  }

  void rms_norm(const Tensor& x, const Tensor& weight, float eps, Tensor& out) override {
    check_f32(x, "rms_norm input");
    check_f32(weight, "rms_norm weight");
    check_f32(out, "rms_norm output");
    op_checks::rms_norm(x, weight, out);
    const int64_t width = x.dim(-1), rows = x.numel() / std::max<int64_t>(width, 1);
    kern::launch_rms_norm(x.data<float>(), weight.data<float>(), eps, rows, width,
                          out.data<float>(), stream());
  }

  void linear(const Tensor& x, const Tensor& weight, Tensor& out, bool accumulate) override {
    check_f32(x, "linear input");
    check_f32(out, "linear output");
    check_cuda(weight, "linear weight");
    op_checks::linear(x, weight, out);
    const int64_t k = weight.dim(1), n = weight.dim(0);
    const int64_t m = x.numel() / k;
    if (m == 0 || n == 0) return;
    const float alpha = 1.0f, beta = accumulate ? 1.0f : 0.0f;
    const int mi = to_int(m, "linear rows"), ni = to_int(n, "linear output width"),
              ki = to_int(k, "linear input width");
    // Row-major out[m, n] = x[m, k] · W[n, k]ᵀ is, read column-major, outᵀ = W · xᵀ: cuBLAS sees
    // W as a k x n matrix (ld k) used transposed and x as k x m (ld k).
    switch (weight.dtype()) {
      case DType::F32:
        CEPE_CUBLAS_CHECK(cublasSgemm(ctx_->blas(), CUBLAS_OP_T, CUBLAS_OP_N, ni, mi, ki, &alpha,
                                      weight.data<float>(), ki, x.data<float>(), ki, &beta,
                                      out.data<float>(), ni));
        return;
      case DType::BF16:
      case DType::F16: {
        const bool bf16 = weight.dtype() == DType::BF16;
        if (m <= kern::kGemvMaxRows) {
          // Decode steps: memory-bound, so a GEMV that keeps the activations in F32 costs the
          // same as cuBLAS and loses no precision.
          kern::launch_gemv16(x.data<float>(), weight.data<uint16_t>(), bf16, out.data<float>(), m,
                              n, k, accumulate, stream());
          return;
        }
        // Prefill and encoder: tensor cores need both operands in 16 bits; the activations are
        // rounded to the weight's type and the products accumulate in F32.
        std::shared_ptr<void> x16 =
            ctx_->allocate(static_cast<size_t>(m * k) * 2, "16-bit activations for a GEMM");
        kern::launch_to_16bit(x.data<float>(), static_cast<uint16_t*>(x16.get()), m * k, bf16,
                              stream());
        const cudaDataType_t t = bf16 ? CUDA_R_16BF : CUDA_R_16F;
        CEPE_CUBLAS_CHECK(cublasGemmEx(ctx_->blas(), CUBLAS_OP_T, CUBLAS_OP_N, ni, mi, ki, &alpha,
                                       weight.raw(), t, ki, x16.get(), t, ki, &beta, out.raw(),
                                       CUDA_R_32F, ni, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
        return;
      }
      default:
        CEPE_THROW("linear: unsupported weight dtype " << dtype_name(weight.dtype()));
    }
  }

  // cuBLAS takes one weight per call; the input needs no preparation to share.
  void linears(const Tensor& x, std::span<const LinearTarget> targets) override {
    for (const LinearTarget& target : targets) linear(x, *target.weight, *target.out, false);
  }

  void head_linear(const Tensor& x, const Tensor& weight, int heads, int groups, bool transposed,
                   Tensor& out) override {
    check_f32(x, "head_linear input");
    check_f32(out, "head_linear output");
    check_cuda(weight, "head_linear weight");
    op_checks::head_linear(x, weight, heads, groups, transposed, out);
    const int64_t rows = x.dim(0), a = weight.dim(0) / groups, b = weight.dim(1);
    const int64_t in = transposed ? b : a, out_width = transposed ? a : b;
    if (rows == 0) return;
    const int per_group = heads / groups;
    const int mi = to_int(out_width, "head_linear output width"),
              ni = to_int(rows, "head_linear rows"), ki = to_int(in, "head_linear input width"),
              lda = to_int(b, "head_linear weight width"),
              ldb = to_int(heads * in, "head_linear input row"),
              ldc = to_int(heads * out_width, "head_linear output row");
    // Column-major, the row-major weight block W_g [a, b] is a b x a matrix (ld b): used as is
    // it is W_g's transpose (out_h = x_h W_g), transposed it is W_g (out_h = x_h W_gᵀ). One
    // strided-batched GEMM per position j inside a group, batched over the groups: head
    // g * per_group + j reads block g.
    const cublasOperation_t op_w = transposed ? CUBLAS_OP_T : CUBLAS_OP_N;
    const long long stride_w = a * b, stride_x = per_group * in, stride_out = per_group * out_width;
    const float alpha = 1.0f, beta = 0.0f;
    switch (weight.dtype()) {
      case DType::F32:
        for (int j = 0; j < per_group; ++j)
          CEPE_CUBLAS_CHECK(cublasSgemmStridedBatched(
              ctx_->blas(), op_w, CUBLAS_OP_N, mi, ni, ki, &alpha, weight.data<float>(), lda,
              stride_w, x.data<float>() + j * in, ldb, stride_x, &beta,
              out.data<float>() + j * out_width, ldc, stride_out, groups));
        return;
      case DType::BF16:
      case DType::F16: {
        const bool bf16 = weight.dtype() == DType::BF16;
        std::shared_ptr<void> x16 = ctx_->allocate(static_cast<size_t>(x.numel()) * 2,
                                                   "16-bit activations for head_linear");
        kern::launch_to_16bit(x.data<float>(), static_cast<uint16_t*>(x16.get()), x.numel(), bf16,
                              stream());
        const cudaDataType_t t = bf16 ? CUDA_R_16BF : CUDA_R_16F;
        for (int j = 0; j < per_group; ++j)
          CEPE_CUBLAS_CHECK(cublasGemmStridedBatchedEx(
              ctx_->blas(), op_w, CUBLAS_OP_N, mi, ni, ki, &alpha, weight.raw(), t, lda, stride_w,
              static_cast<const uint16_t*>(x16.get()) + j * in, t, ldb, stride_x, &beta,
              out.data<float>() + j * out_width, CUDA_R_32F, ldc, stride_out, groups,
              CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
        return;
      }
      default:
        CEPE_THROW("head_linear: unsupported weight dtype " << dtype_name(weight.dtype()));
    }
  }

  void rope(Tensor& x, int heads, int head_dim, const Tensor& cos, const Tensor& sin) override {
    check_f32(x, "rope input");
    check_f32(cos, "rope cos table");
    check_f32(sin, "rope sin table");
    op_checks::rope(x, heads, head_dim, cos, sin);
    const int64_t t_len = x.numel() / (static_cast<int64_t>(heads) * head_dim);
    kern::launch_rope(x.data<float>(), t_len, heads, head_dim, cos.data<float>(), sin.data<float>(),
                      stream());
  }

  void copy_rows(const Tensor& src, int64_t src_row, Tensor& dst, int64_t dst_row,
                 int64_t count) override {
    check_cuda(src, "copy source");
    check_cuda(dst, "copy destination");
    op_checks::copy_rows(src, src_row, dst, dst_row, count);
    CEPE_CHECK(src.dtype() == dst.dtype(),
               "copy_rows: rounding F32 rows into F16 (the F16 KV "
               "cache) is CPU-only; use an F32 cache on CUDA");
    const size_t row_bytes = src.dim(0) ? src.nbytes() / src.dim(0) : 0;
    if (count == 0 || row_bytes == 0) return;
    CEPE_CUDA_CHECK(cudaMemcpyAsync(static_cast<char*>(dst.raw()) + dst_row * row_bytes,
                                    static_cast<const char*>(src.raw()) + src_row * row_bytes,
                                    count * row_bytes, cudaMemcpyDeviceToDevice, stream()));
  }

  void silu_mul(Tensor& gate, const Tensor& up) override {
    check_f32(gate, "silu_mul gate");
    check_f32(up, "silu_mul up");
    op_checks::silu_mul(gate, up);
    kern::launch_silu_mul(gate.data<float>(), up.data<float>(), gate.numel(), stream());
  }

  void layer_norm(const Tensor& x, const Tensor& weight, const Tensor& bias, float eps,
                  Tensor& out) override {
    check_f32(x, "layer_norm input");
    check_f32(weight, "layer_norm weight");
    check_f32(bias, "layer_norm bias");
    check_f32(out, "layer_norm output");
    op_checks::layer_norm(x, weight, bias, out);
    const int64_t width = x.dim(-1), rows = x.numel() / std::max<int64_t>(width, 1);
    kern::launch_layer_norm(x.data<float>(), weight.data<float>(), bias.data<float>(), eps, rows,
                            width, out.data<float>(), stream());
  }

  void add_bias(Tensor& x, const Tensor& bias) override {
    check_f32(x, "add_bias input");
    check_f32(bias, "add_bias bias");
    op_checks::add_bias(x, bias);
    const int64_t width = x.dim(-1), rows = x.numel() / std::max<int64_t>(width, 1);
    kern::launch_add_bias(x.data<float>(), bias.data<float>(), rows, width, stream());
  }

  void add(Tensor& x, const Tensor& y) override {
    check_f32(x, "add destination");
    check_f32(y, "add operand");
    op_checks::add(x, y);
    kern::launch_add(x.data<float>(), y.data<float>(), x.numel(), stream());
  }

  void gelu(Tensor& x) override {
    check_f32(x, "gelu input");
    kern::launch_gelu(x.data<float>(), x.numel(), stream());
  }

  void attention(const Tensor& q, const std::vector<AttentionSegment>& segments,
                 const AttentionShape& shape, Tensor& out) override {
    check_f32(q, "attention queries");
    check_f32(out, "attention output");
    op_checks::attention(q, segments, shape, out);
    // The model joins a request's states into one device tensor before they reach CUDA.
    for (const AttentionSegment& sg : segments)
      CEPE_CHECK(sg.k_parts.empty(), "attention: keys in parts are a CPU-only form");
    if (shape.head_dim > kern::kAttnMaxHeadDim) {
      attention_wide(q, segments, shape, out);
      return;
    }
    const int64_t q_stride = static_cast<int64_t>(shape.heads) * shape.head_dim;
    const int64_t kv_stride = static_cast<int64_t>(shape.kv_heads) * shape.head_dim;
    std::vector<kern::AttnSegment> segs;
    segs.reserve(segments.size());
    for (const AttentionSegment& sg : segments) {
      check_f32(sg.k, "attention keys");
      check_f32(sg.v, "attention values");
      kern::AttnSegment s;
      s.k = sg.k.data<float>();
      s.v = sg.v.data<float>();
      s.q_begin = sg.q_begin;
      s.q_len = sg.q_len;
      s.k_len = sg.k.dim(0);
      s.causal = sg.causal ? 1 : 0;
      s.causal_offset = sg.causal_offset;
      segs.push_back(s);
    }
    const kern::AttnPlan plan =
        kern::plan_attention(segs, shape.heads, ctx_->props().multiProcessorCount);
    if (plan.items.empty()) return;
    CEPE_CHECK(static_cast<int64_t>(plan.items.size()) <= INT_MAX && plan.splits <= 65535 &&
                   shape.heads <= 65535,
               "attention: too many query tiles or heads for one launch");

    // Segment descriptors and tiles travel in one upload.
    const size_t seg_bytes = segs.size() * sizeof(kern::AttnSegment);
    const size_t item_bytes = plan.items.size() * sizeof(kern::AttnItem);
    std::vector<char> packed(seg_bytes + item_bytes);
    std::memcpy(packed.data(), segs.data(), seg_bytes);
    std::memcpy(packed.data() + seg_bytes, plan.items.data(), item_bytes);
    std::shared_ptr<void> desc = ctx_->allocate(packed.size(), "attention descriptors");
    ctx_->upload(desc.get(), packed.data(), packed.size());

    kern::AttnParams p;
    p.q = q.data<float>();
    p.out = out.data<float>();
    p.q_stride = q_stride;
    p.kv_stride = kv_stride;
    p.q_rows = q.dim(0);
    p.heads = shape.heads;
    p.kv_heads = shape.kv_heads;
    p.head_dim = shape.head_dim;
    p.scale = shape.scale;
    p.splits = plan.splits;
    std::shared_ptr<void> partials;
    if (plan.splits > 1) {
      const size_t slots = static_cast<size_t>(plan.splits) * q.dim(0) * shape.heads;
      partials =
          ctx_->allocate(slots * (shape.head_dim + 2) * sizeof(float), "attention split partials");
      p.part_o = static_cast<float*>(partials.get());
      p.part_ml = p.part_o + slots * shape.head_dim;
    }
    const char* base = static_cast<const char*>(desc.get());
    kern::launch_attention(p, reinterpret_cast<const kern::AttnSegment*>(base),
                           reinterpret_cast<const kern::AttnItem*>(base + seg_bytes),
                           static_cast<int64_t>(plan.items.size()), stream());
  }

  void synchronize() override { CEPE_CUDA_CHECK(cudaStreamSynchronize(stream())); }

  BackendMemory memory(bool reset_peak) { return ctx_->memory(reset_peak); }

 private:
  // Heads wider than the attention kernel's registers hold (the absorbed cross-attention's
  // encoder-width queries): per segment and head, scores by GEMM, a row softmax, and the
  // weighted sum by GEMM, all F32. Only non-causal segments (cross-attention) take this path.
  void attention_wide(const Tensor& q, const std::vector<AttentionSegment>& segments,
                      const AttentionShape& shape, Tensor& out) {
    const int64_t hd = shape.head_dim;
    const int64_t q_stride = static_cast<int64_t>(shape.heads) * hd;
    const int64_t kv_stride = static_cast<int64_t>(shape.kv_heads) * hd;
    const int group = shape.heads / shape.kv_heads;
    const float zero = 0.0f, one = 1.0f;
    for (const AttentionSegment& sg : segments) {
      check_f32(sg.k, "attention keys");
      check_f32(sg.v, "attention values");
      CEPE_CHECK(!sg.causal, "attention: causal heads wider than "
                                 << kern::kAttnMaxHeadDim << " (head_dim " << hd
                                 << ") are not supported by the CUDA backend");
      const int64_t k_len = sg.k.dim(0);
      if (sg.q_len == 0) continue;
      float* o = out.data<float>() + sg.q_begin * q_stride;
      if (k_len == 0) {  // no key: zeros, as the kernel and the CPU backend give
        CEPE_CUDA_CHECK(cudaMemset2DAsync(o, q_stride * sizeof(float), 0, q_stride * sizeof(float),
                                          sg.q_len, stream()));
        continue;
      }
      const int m_keys = to_int(k_len, "attention keys"),
                n_rows = to_int(sg.q_len, "attention rows"),
                k_dim = to_int(hd, "attention head width"),
                ld_kv = to_int(kv_stride, "attention key row"),
                ld_q = to_int(q_stride, "attention query row");
      std::shared_ptr<void> scores = ctx_->allocate(
          static_cast<size_t>(sg.q_len * k_len) * sizeof(float), "wide-head attention scores");
      float* sp = static_cast<float*>(scores.get());
      for (int h = 0; h < shape.heads; ++h) {
        const int64_t kv_off = static_cast<int64_t>(h / group) * hd;
        const float* qh = q.data<float>() + sg.q_begin * q_stride + h * hd;
        // Column-major: scores (k_len x q_len) = K_g (stored hd x k_len, so transposed) · Q_h
        // (hd x q_len); the softmax then runs along each query's k_len contiguous scores.
        CEPE_CUBLAS_CHECK(cublasSgemm(ctx_->blas(), CUBLAS_OP_T, CUBLAS_OP_N, m_keys, n_rows, k_dim,
                                      &shape.scale, sg.k.data<float>() + kv_off, ld_kv, qh, ld_q,
                                      &zero, sp, m_keys));
        kern::launch_softmax_rows(sp, sg.q_len, k_len, k_len, stream());
        CEPE_CUBLAS_CHECK(cublasSgemm(ctx_->blas(), CUBLAS_OP_N, CUBLAS_OP_N, k_dim, n_rows, m_keys,
                                      &one, sg.v.data<float>() + kv_off, ld_kv, sp, m_keys, &zero,
                                      o + h * hd, ld_q));
      }
    }
  }

  cudaStream_t stream() const { return ctx_->stream(); }

  std::shared_ptr<CudaContext> ctx_;
};

}  // namespace

bool cuda_device_available() {
  try {
    return cuda_unavailable_reason().empty();
  } catch (...) {
    return false;
  }
}

std::unique_ptr<Backend> make_cuda_backend(const BackendOptions& options) {
  const std::string reason = cuda_unavailable_reason();
  CEPE_CHECK(reason.empty(), "no CUDA device: " << reason);
  return std::make_unique<CudaBackend>(options);
}

BackendMemory cuda_backend_memory(Backend& backend, bool reset_peak) {
  auto* cuda = dynamic_cast<CudaBackend*>(&backend);
  CEPE_CHECK(cuda != nullptr, "backend '" << backend.describe() << "' is not the CUDA backend");
  return cuda->memory(reset_peak);
}

}  // namespace cepe
