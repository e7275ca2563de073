// The ops the model code calls, behind one interface per device (CPU here, CUDA in engine/cuda/).
// Activations are F32 on the CPU; weights keep their stored dtype (F32, F16 or BF16) and are
// converted on the fly, so a bf16 checkpoint is never widened to a second full-size copy.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "common/error.h"
#include "common/system.h"
#include "engine/quant.h"
#include "engine/tensor.h"

namespace cepe {

/// One independent attention problem inside a packed batch of queries.
struct AttentionSegment {
  int64_t q_begin = 0;  ///< first query row of this segment in the packed query tensor
  int64_t q_len = 0;    ///< number of query rows
  Tensor k;             ///< keys [k_len, kv_heads * head_dim] (a view; may be a KV-cache prefix)
  Tensor v;             ///< values, same shape as k
  bool causal = false;  ///< query i sees keys j <= causal_offset + i only
  int64_t causal_offset = 0;  ///< keys that precede the first query (cached tokens)
  /// Keys and values in several row blocks, attended as one range in order (CPU only; not
  /// causal); when set, k and v are unused. A request's passages are read where they lie (a
  /// mapped encoder-state store, a cache entry, an encoder pass) instead of being joined first.
  std::vector<Tensor> k_parts, v_parts;
  /// Number of keys: k's rows, or the parts' together.
  int64_t key_count() const;
};

/// Head layout shared by all segments of one attention call.
struct AttentionShape {
  int heads = 0;       ///< query heads
  int kv_heads = 0;    ///< key/value heads (heads / kv_heads queries share one)
  int head_dim = 0;    ///< per-head width
  float scale = 1.0f;  ///< multiplies q·k before the softmax (1/sqrt(head_dim))
};

/// How the ops read a checkpoint tensor, which decides what load_weight makes of it.
enum class WeightUse {
  Matrix,  ///< read whole by every step (linears, a tied output head)
  Table,   ///< a few rows per step (embedding tables)
  Vector,  ///< small vectors (norm weights), always widened to F32
};

/// Construction options common to all backends.
struct BackendOptions {
  int threads = 0;                 ///< worker threads (0: all cores)
  size_t memory_budget_bytes = 0;  ///< device memory the backend may hold (0: no limit; CUDA)
  /// What load_weight makes of every matrix (linears and embedding tables; norms stay F32).
  /// Anything but Stored is CPU-only for now.
  WeightKind weights = WeightKind::Stored;
  /// Whether a GEMM over bf16 weights may round its activations to bf16 (CPU with AVX-512 BF16:
  /// VDPBF16PS, twice the multiply-adds of F32 FMAs, 2^-9 relative per product, as llama.cpp and
  /// the CUDA backend's bf16 GEMMs). False keeps F32 activations: exact F32 arithmetic on the
  /// bf16 weights. Decode steps (a few rows) never round.
  bool bf16_activations = true;
  /// CPU, weights Stored: a matrix is copied out of the file mapping (see load_weight) only
  /// while at least this many bytes of memory would stay available after the copy; past that
  /// it stays mapped (read through the page cache: slower, but the load never runs the machine
  /// out of memory). 0: 1 GiB or a tenth of the machine's memory, whichever is more.
  uint64_t stored_copy_reserve_bytes = 0;
  /// CPU, weights Stored: Mapped reads every matrix in place whatever the memory (see above).
  StoredWeights stored_weights = StoredWeights::Auto;
  /// CPU: where the memory figures behind the two guards above are read (tests point it at a
  /// fake procfs and cgroup tree).
  SystemRoots system;
};

/// One weight of Backend::linears() and the output it writes (out = x · weightᵀ).
struct LinearTarget {
  const Tensor* weight;  ///< [N, K], as load_weight made it
  Tensor* out;           ///< [M, N] F32
};

/// Device memory held by a backend, in bytes (all zero for the CPU backend).
struct BackendMemory {
  size_t in_use = 0;        ///< held by live tensors and scratch
  size_t peak_in_use = 0;   ///< most held at once since creation or the last reset
  size_t device_free = 0;   ///< free on the device (cudaMemGetInfo)
  size_t device_total = 0;  ///< the device's capacity
};

/// Device-specific implementation of the model's ops. Tensors passed in live on device(). Every
/// op is pure virtual: a backend that lacks one does not compile (CPU and CUDA implement all).
class Backend {
 public:
  virtual ~Backend() = default;

  /// Device this backend computes on.
  virtual Device device() const = 0;
  /// Human-readable description ("cpu (8 threads, OpenBLAS)").
  virtual std::string describe() const = 0;

  /// Uninitialised tensor on the device.
  virtual Tensor empty(std::vector<int64_t> shape, DType dtype) = 0;
  /// Makes a checkpoint tensor usable by the ops. Matrices and tables keep their dtype unless
  /// BackendOptions::weights asks for another one, to which they are converted one at a time;
  /// on the CPU a stored matrix is copied out of the file mapping (copy_weight) and a stored
  /// table stays a view of it; vectors are widened to F32.
  virtual Tensor load_weight(const Tensor& host, WeightUse use) = 0;
  /// Copies a host F32 tensor to the device (the CPU returns it unchanged).
  virtual Tensor to_device(const Tensor& host) = 0;
  /// Copies a device tensor to host memory as F32.
  virtual Tensor to_host_f32(const Tensor& t) = 0;

  /// out[i] = table[ids[i]] widened to F32; ids are checked against the table's rows.
  virtual void embedding(const Tensor& table, const std::vector<int32_t>& ids, Tensor& out) = 0;
  /// out = weight * x / sqrt(mean(x^2) + eps), row by row, in F32.
  virtual void rms_norm(const Tensor& x, const Tensor& weight, float eps, Tensor& out) = 0;
  /// out = x · weightᵀ (+ out when accumulate) for x [M, K] and weight [N, K] (torch layout).
  virtual void linear(const Tensor& x, const Tensor& weight, Tensor& out,
                      bool accumulate = false) = 0;
  /// out_i = x · weight_iᵀ for several weights over one input (the attention's q, k and v, the
  /// MLP's gate and up): the results of one linear() each, with the input prepared (packed,
  /// quantized) once and one parallel pass where the weights share a dtype.
  virtual void linears(const Tensor& x, std::span<const LinearTarget> targets) = 0;
  /// Rotates pairs (i, i + head_dim/2) of every head of x [T, heads * head_dim] in place, by the
  /// per-row angles whose cos/sin are given as [T, head_dim / 2] (HuggingFace's rotate_half).
  virtual void rope(Tensor& x, int heads, int head_dim, const Tensor& cos, const Tensor& sin) = 0;
  /// Copies `count` rows of src (from src_row) into dst (from dst_row); same row width, and same
  /// dtype or (CPU) F32 rows rounded into an F16 tensor.
  virtual void copy_rows(const Tensor& src, int64_t src_row, Tensor& dst, int64_t dst_row,
                         int64_t count) = 0;
  /// gate = silu(gate) * up, elementwise (SwiGLU).
  virtual void silu_mul(Tensor& gate, const Tensor& up) = 0;
  /// Scaled-dot-product attention with an F32 softmax for every segment:
  /// out[q rows of s] = softmax(q·kᵀ·scale, masked) · v, grouped-query aware.
  virtual void attention(const Tensor& q, const std::vector<AttentionSegment>& segments,
                         const AttentionShape& shape, Tensor& out) = 0;
  /// Per-head products with one weight block per key/value group, for cross-attention with the
  /// projections absorbed (q' = W_kᵀq scored against the encoder states, out = W_v·c). x is
  /// [rows, heads * in], weight [groups * a, b]; head h uses block g = h / (heads / groups),
  /// W_g = rows [g * a, (g + 1) * a). `transposed`: out_h = W_g x_h (in = b, out = a); otherwise
  /// out_h = W_gᵀ x_h (in = a, out = b). out is [rows, heads * out]; the weight keeps its dtype.
  virtual void head_linear(const Tensor& x, const Tensor& weight, int heads, int groups,
                           bool transposed, Tensor& out) = 0;
  /// out = (x - mean) / sqrt(var + eps) * weight + bias, row by row in F32 (out may be x).
  virtual void layer_norm(const Tensor& x, const Tensor& weight, const Tensor& bias, float eps,
                          Tensor& out) = 0;
  /// x[r, :] += bias for every row r of x (bias: F32, as wide as x's last dimension).
  virtual void add_bias(Tensor& x, const Tensor& bias) = 0;
  /// x += y elementwise (residual connections); both F32 with the same number of elements.
  virtual void add(Tensor& x, const Tensor& y) = 0;
  /// x = 0.5 x (1 + erf(x / sqrt(2))) in place: the exact GELU (HuggingFace "gelu").
  virtual void gelu(Tensor& x) = 0;
  /// Waits for queued device work (a no-op on the CPU).
  virtual void synchronize() {}
};

/// Shape checks shared by every backend's ops, so that each op accepts exactly the same
/// arguments on every device (device and dtype checks stay with the backend). Each throws a
/// message naming the op and the mismatch.
namespace op_checks {
/// embedding: a 2-D table, an output of [ids, width], every id inside the vocabulary.
void embedding(const Tensor& table, const std::vector<int32_t>& ids, const Tensor& out);
/// linear: a 2-D weight [n, k] with k > 0, input [..., k], output [..., n].
void linear(const Tensor& x, const Tensor& weight, const Tensor& out);
/// rope: the input is rows of `heads` x even `head_dim`; the tables hold half a head per row.
void rope(const Tensor& x, int heads, int head_dim, const Tensor& cos, const Tensor& sin);
/// copy_rows: same width, same dtype or F32 rows into F16 (the F16 KV cache), both row ranges
/// inside their tensors.
void copy_rows(const Tensor& src, int64_t src_row, const Tensor& dst, int64_t dst_row,
               int64_t count);
/// rms_norm: the weight has the input's width; the output has the input's size.
void rms_norm(const Tensor& x, const Tensor& weight, const Tensor& out);
/// layer_norm: weight and bias have the input's width; the output has the input's size.
void layer_norm(const Tensor& x, const Tensor& weight, const Tensor& bias, const Tensor& out);
/// add_bias: the bias has the input's width.
void add_bias(const Tensor& x, const Tensor& bias);
/// add: both operands have the same number of elements.
void add(const Tensor& x, const Tensor& y);
/// silu_mul: gate and up have the same number of elements.
void silu_mul(const Tensor& gate, const Tensor& up);
/// head_linear: a weight of any weight dtype, heads and weight rows split evenly into groups,
/// matching widths.
void head_linear(const Tensor& x, const Tensor& weight, int heads, int groups, bool transposed,
                 const Tensor& out);
/// attention: head layout, query/output widths, and every segment's rows and key/value shapes.
void attention(const Tensor& q, const std::vector<AttentionSegment>& segments,
               const AttentionShape& shape, const Tensor& out);
}  // namespace op_checks

/// Creates the backend for a device; throws when the device is unavailable (e.g. no GPU).
std::unique_ptr<Backend> make_backend(Device device, const BackendOptions& options = {});

/// True when make_backend(device) can succeed here (CUDA: compiled in, driver and GPU present).
bool backend_available(Device device);

/// Memory figures of a backend; `reset_peak` restarts its peak from the current use.
BackendMemory backend_memory(Backend& backend, bool reset_peak = false);

/// Parses "cpu" / "cuda" (the error names the flag value).
Device parse_device(const std::string& name);

}  // namespace cepe
