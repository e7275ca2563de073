#include "engine/cpu/cpu_backend.h"

#include <cblas.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <mutex>
#include <optional>
#include <span>
#include <vector>

#include "common/error.h"
#include "common/system.h"
#include "engine/cpu/kernels.h"
#include "engine/quant.h"

namespace cepe {
namespace {

// Rows of activations up to which a 16-bit or block linear runs as dot products of each weight row
// with each activation row (decode steps, small batches); beyond it the weights are widened a
// block at a time and multiplied by all rows with a GEMM (the panel GEMMs on AVX-512, widened
// tiles and OpenBLAS below), which amortises the widening over the rows.
constexpr int64_t kDotRows = 16;

void check_cpu(const Tensor& t, const char* what) {
  CEPE_CHECK(t.device() == Device::CPU,
             what << " is on " << device_name(t.device()) << ", the CPU backend needs CPU tensors");
}

void check_f32(const Tensor& t, const char* what) {
  check_cpu(t, what);
  CEPE_CHECK(t.dtype() == DType::F32,
             what << " must be F32 on the CPU backend, got " << dtype_name(t.dtype()));
}

// One weight of a linear op (several for linears()) and the output its columns go to.
struct Part {
  const Tensor* weight;  // [n, k]
  float* out;            // [m, n]
  int64_t n;
};

// Calls fn(part, u0, u1) for each part's share of the units [begin, end) of the parts laid end
// to end, part p spanning units(p) units: how a fused op's columns, groups or blocks are split
// between threads as if they were one weight.
template <typename Units, typename Fn>
void for_each_piece(std::span<const Part> parts, Units units, int64_t begin, int64_t end, Fn fn) {
  int64_t base = 0;
  for (const Part& part : parts) {
    const int64_t count = units(part);
    const int64_t lo = std::max(begin, base), hi = std::min(end, base + count);
    if (lo < hi) fn(part, lo - base, hi - base);
    base += count;
  }
}

template <typename Units>
int64_t total_units(std::span<const Part> parts, Units units) {
  int64_t total = 0;
  for (const Part& part : parts) total += units(part);
  return total;
}

// One thread pool owns the cores: every parallel region below names its team size, so the
// backend's thread count holds on whichever thread calls it (a server's engine thread included,
// where omp_set_num_threads on the constructing thread would not apply), and OpenBLAS, whose
// pthreads build keeps its own pool, is set to one thread once for the process and only ever
// called from inside our regions on slices of the work. Nothing is flipped per call.
// The pthreads build starts its pool when the library loads, and its workers spin on
// sched_yield for ~0.1 s before they sleep: on a 2-core machine that took a core from our own
// first parallel region (a 2-token prefill of stories260K: 80-110 ms in 7 runs of 10, 0.4 ms
// otherwise). With one thread set the pool is never used, so it is shut down; builds without
// that entry point (serial, or OpenMP whose pool is ours) have nothing to stop.
extern "C" int blas_thread_shutdown_(void) __attribute__((weak));

void blas_single_threaded_once() {
  static std::once_flag once;
  std::call_once(once, [] {
    openblas_set_num_threads(1);
    if (blas_thread_shutdown_) blas_thread_shutdown_();
  });
}

class CpuBackend final : public Backend {
 public:
  explicit CpuBackend(const BackendOptions& options)
      : threads_(options.threads > 0 ? options.threads : omp_get_num_procs()),
        weights_(options.weights),
        kernels_(cpu::active_kernels()),
        bf16_pairs_(options.bf16_activations && kernels_.gemm_bf16_pairs != nullptr),
        copy_reserve_(
            options.stored_copy_reserve_bytes
                ? options.stored_copy_reserve_bytes
                : std::max<uint64_t>(uint64_t{1} << 30,
                                     total_memory_bytes(options.system).value_or(0) / 10)),
        stored_weights_(options.stored_weights),
        system_(options.system) {
    blas_single_threaded_once();
  }

  Device device() const override { return Device::CPU; }
  std::string describe() const override {
    return "cpu (" + std::to_string(threads_) + " threads, OpenBLAS, " + kernels_.name +
           " kernels, weights " + weight_kind_name(weights_) +
           (bf16_pairs_
                ? std::string(", bf16 weights: ") +
                      (kernels_.path == cpu::KernelPath::Amx ? "AMX TDPBF16PS" : "VDPBF16PS") +
                      " GEMM"
                : "") +
           (mapped_bytes_ ? ", " + mapped_mb() + " MB of stored weights " +
                                (stored_weights_ == StoredWeights::Mapped
                                     ? "read in place from the file mapping"
                                     : "left in the file mapping for want of memory")
                          : "") +
           ")";
  }

  Tensor empty(std::vector<int64_t> shape, DType dtype) override {
    return Tensor::empty(std::move(shape), dtype);
  }

  Tensor load_weight(const Tensor& host, WeightUse use) override {
    check_cpu(host, "weight");
    if (use == WeightUse::Vector) return to_host_f32(host);
    // Stored weights leave the file mapping for memory of their own: from a copy on huge pages
    // F32 decode steps took 11-22 % less time than from the page cache's 4 KB pages (median step
    // times, alternating runs). Loading reads the file once either way; the copy costs a memcpy.
    // A table is read a few rows a step and stays a view: a copy would make all of it resident.
    if (weights_ == WeightKind::Stored) {
      if (!host.file_backed() || use != WeightUse::Matrix) return host;
      // Only while the copy leaves room to spare: a checkpoint larger than the memory is read
      // through the page cache (slowly) rather than killed for memory midway through its load.
      // The matrices already left mapped count as taken: their pages are page cache, which the
      // room counts as free, but every step reads them.
      bool keep_mapped = stored_weights_ == StoredWeights::Mapped;
      if (!keep_mapped) {
        const std::optional<uint64_t> room = available_memory_bytes(system_);
        keep_mapped = room && *room < host.nbytes() + copy_reserve_ + mapped_bytes_;
      }
      if (keep_mapped) {
        mapped_bytes_ += host.nbytes();
        return host;
      }
      return copy_weight(host, threads_);
    }
    // One matrix at a time, row by row: the mapped source pages are dropped as they are used.
    // Block matrices are laid in groups of 16 rows for the packed kernels (decode and prefill
    // alike), straight from the source rows.
    const DType target = weight_kind_dtype(weights_, host.dtype());
    // A converted matrix has no file behind it: when it cannot fit, say so rather than be killed
    // for memory midway through the load.
    const uint64_t need = host.rank() >= 1 && host.dim(-1) > 0
                              ? dtype_row_bytes(target, host.dim(-1)) *
                                    static_cast<uint64_t>(host.numel() / host.dim(-1))
                              : 0;
    const std::optional<uint64_t> room = available_memory_bytes(system_);
    CEPE_CHECK(!room || target == host.dtype() || need + kConvertReserve <= *room,
               "--weights " << weight_kind_name(weights_) << ": out of memory converting a "
                            << host.shape_string() << " " << dtype_name(host.dtype()) << " matrix ("
                            << (need >> 20) << " MB as " << dtype_name(target) << ", "
                            << (*room >> 20)
                            << " MB available): use a smaller kind (q8_0, q4_0) or "
                               "--weights stored, which reads through the file mapping");
    if (dtype_is_block(target) && host.rank() == 2 && host.dim(0) >= kPackRows)
      return convert_weight(host, target == DType::Q8_0 ? DType::Q8_0x16 : DType::Q4_0x16,
                            threads_);
    return convert_weight(host, target, threads_);
  }

  Tensor to_device(const Tensor& host) override {
    check_cpu(host, "tensor");
    return host;
  }

  Tensor to_host_f32(const Tensor& t) override {
    check_cpu(t, "tensor");
    if (t.dtype() == DType::F32) return t;
    Tensor out = Tensor::empty(t.shape(), DType::F32);
    const int64_t width = t.rank() ? t.dim(-1) : 1;
    const int64_t rows = width ? t.numel() / width : 0;
    for (int64_t r = 0; r < rows; ++r) weight_row(t, r, out.data<float>() + r * width);
    return out;
  }

  void embedding(const Tensor& table, const std::vector<int32_t>& ids, Tensor& out) override {
    check_cpu(table, "embedding table");
    check_f32(out, "embedding output");
    op_checks::embedding(table, ids, out);
    const int64_t width = table.dim(1);
#pragma omp parallel for num_threads(threads_) schedule(static) if (ids.size() > 16)
    for (size_t i = 0; i < ids.size(); ++i)
      weight_row(table, ids[i], out.data<float>() + i * width);
  }

  void rms_norm(const Tensor& x, const Tensor& weight, float eps, Tensor& out) override {
    check_f32(x, "rms_norm input");
    check_f32(weight, "rms_norm weight");
    check_f32(out, "rms_norm output");
    op_checks::rms_norm(x, weight, out);
    const int64_t width = x.dim(-1), rows = x.numel() / std::max<int64_t>(width, 1);
    const float* w = weight.data<float>();
#pragma omp parallel for num_threads(threads_) schedule(static) if (rows > 4)
    for (int64_t r = 0; r < rows; ++r) {
      const float* xr = x.data<float>() + r * width;
      float* yr = out.data<float>() + r * width;
      float ss = 0.0f;
#pragma omp simd reduction(+ : ss)
      for (int64_t i = 0; i < width; ++i) ss += xr[i] * xr[i];
      const float inv = 1.0f / std::sqrt(ss / static_cast<float>(width) + eps);
      for (int64_t i = 0; i < width; ++i) yr[i] = w[i] * (xr[i] * inv);
    }
  }

  void linear(const Tensor& x, const Tensor& weight, Tensor& out, bool accumulate) override {
    check_f32(x, "linear input");
    check_f32(out, "linear output");
    check_cpu(weight, "linear weight");
    op_checks::linear(x, weight, out);
    const Part part{&weight, out.data<float>(), weight.dim(0)};
    run_linear(x.data<float>(), std::span<const Part>(&part, 1), x.numel() / weight.dim(1),
               weight.dim(1), accumulate);
  }

  void linears(const Tensor& x, std::span<const LinearTarget> targets) override {
    check_f32(x, "linears input");
    std::vector<Part> parts;
    for (const LinearTarget& target : targets) {
      check_f32(*target.out, "linears output");
      check_cpu(*target.weight, "linears weight");
      op_checks::linear(x, *target.weight, *target.out);
      parts.push_back({target.weight, target.out->data<float>(), target.weight->dim(0)});
    }
    if (parts.empty()) return;
    // One pass over the input serves every weight when they share a dtype (and so a path);
    // otherwise each is its own op.
    const DType type = parts[0].weight->dtype();
    const bool shared = std::all_of(parts.begin(), parts.end(),
                                    [&](const Part& p) { return p.weight->dtype() == type; });
    const int64_t k = parts[0].weight->dim(1);
    if (shared) {
      run_linear(x.data<float>(), parts, x.numel() / k, k, false);
    } else {
      for (const Part& part : parts)
        run_linear(x.data<float>(), std::span<const Part>(&part, 1), x.numel() / k, k, false);
    }
  }

  void head_linear(const Tensor& x, const Tensor& weight, int heads, int groups, bool transposed,
                   Tensor& out) override {
    check_f32(x, "head_linear input");
    check_f32(out, "head_linear output");
    check_cpu(weight, "head_linear weight");
    op_checks::head_linear(x, weight, heads, groups, transposed, out);
    const int64_t rows = x.dim(0), a = weight.dim(0) / groups, b = weight.dim(1);
    const int64_t in = transposed ? b : a, out_width = transposed ? a : b;
    const int per_group = heads / groups;
    if (rows == 0) return;
      // One group per work item: its weight block is widened once (narrower weights) into a
      // per-thread buffer, then every head of the group is one GEMM against it.
#pragma omp parallel num_threads(threads_)
    {
      std::vector<float> block;
#pragma omp for schedule(dynamic)
      for (int g = 0; g < groups; ++g) {
        const float* w = nullptr;
        if (weight.dtype() == DType::F32) {
          w = weight.data<float>() + static_cast<int64_t>(g) * a * b;
        } else {
          block.resize(static_cast<size_t>(a * b));
          for (int64_t r = 0; r < a; ++r) weight_row(weight, g * a + r, block.data() + r * b);
          w = block.data();
        }
        for (int j = 0; j < per_group; ++j) {
          const int64_t h = static_cast<int64_t>(g) * per_group + j;
          cblas_sgemm(CblasRowMajor, CblasNoTrans, transposed ? CblasTrans : CblasNoTrans, rows,
                      out_width, in, 1.0f, x.data<float>() + h * in, heads * in, w, b, 0.0f,
                      out.data<float>() + h * out_width, heads * out_width);
        }
      }
    }
  }

  void rope(Tensor& x, int heads, int head_dim, const Tensor& cos, const Tensor& sin) override {
    check_f32(x, "rope input");
    op_checks::rope(x, heads, head_dim, cos, sin);
    const int64_t t_len = x.numel() / (static_cast<int64_t>(heads) * head_dim);
    const int half = head_dim / 2;
    const float* c = cos.data<float>();
    const float* s = sin.data<float>();
#pragma omp parallel for num_threads(threads_) schedule(static) if (t_len > 4)
    for (int64_t t = 0; t < t_len; ++t) {
      for (int h = 0; h < heads; ++h) {
        float* v = x.data<float>() + (t * heads + h) * head_dim;
        const float* ct = c + t * half;
        const float* st = s + t * half;
        for (int i = 0; i < half; ++i) {
          const float a = v[i], b = v[i + half];
          v[i] = a * ct[i] - b * st[i];
          v[i + half] = b * ct[i] + a * st[i];
        }
      }
    }
  }

  void copy_rows(const Tensor& src, int64_t src_row, Tensor& dst, int64_t dst_row,
                 int64_t count) override {
    check_cpu(src, "copy source");
    check_cpu(dst, "copy destination");
    op_checks::copy_rows(src, src_row, dst, dst_row, count);
    const int64_t width = src.dim(-1);
    const bool narrow = src.dtype() != dst.dtype();  // F32 into F16 (op_checks allows no other)
    const size_t row_bytes = dtype_row_bytes(src.dtype(), width);
    // A prefill's K/V rows (512 x 768 per layer) are split between the threads: run by one, the
    // other waited for it in the next op's barrier.
    const int64_t parts = count * width > 65536 ? threads_ : 1;
    const cpu::Kernels& kr = kernels_;
#pragma omp parallel for num_threads(threads_) schedule(static) if (parts > 1)
    for (int64_t p = 0; p < parts; ++p) {
      const int64_t r0 = count * p / parts, rows = count * (p + 1) / parts - r0;
      if (narrow)
        kr.narrow_f16(src.data<float>() + (src_row + r0) * width,
                      static_cast<uint16_t*>(dst.raw()) + (dst_row + r0) * width, rows * width);
      else
        std::memcpy(static_cast<char*>(dst.raw()) + (dst_row + r0) * row_bytes,
                    static_cast<const char*>(src.raw()) + (src_row + r0) * row_bytes,
                    rows * row_bytes);
    }
  }

  void silu_mul(Tensor& gate, const Tensor& up) override {
    check_f32(gate, "silu_mul gate");
    check_f32(up, "silu_mul up");
    op_checks::silu_mul(gate, up);
    float* g = gate.data<float>();
    const float* u = up.data<float>();
    const int64_t n = gate.numel();
    const int64_t parts = n > 65536 ? threads_ : 1;
    const cpu::Kernels& kr = kernels_;
#pragma omp parallel for num_threads(threads_) schedule(static) if (parts > 1)
    for (int64_t p = 0; p < parts; ++p) {
      const int64_t i0 = n * p / parts, i1 = n * (p + 1) / parts;
      kr.silu_mul(g + i0, u + i0, i1 - i0);
    }
  }

  void layer_norm(const Tensor& x, const Tensor& weight, const Tensor& bias, float eps,
                  Tensor& out) override {
    check_f32(x, "layer_norm input");
    check_f32(weight, "layer_norm weight");
    check_f32(bias, "layer_norm bias");
    check_f32(out, "layer_norm output");
    op_checks::layer_norm(x, weight, bias, out);
    const int64_t width = x.dim(-1), rows = x.numel() / std::max<int64_t>(width, 1);
    if (width == 0) return;
    const float* w = weight.data<float>();
    const float* b = bias.data<float>();
#pragma omp parallel for num_threads(threads_) schedule(static) if (rows > 4)
    for (int64_t r = 0; r < rows; ++r) {
      const float* xr = x.data<float>() + r * width;
      float* yr = out.data<float>() + r * width;
      // Two passes (mean, then squared deviations): no cancellation for rows far from zero.
      float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
      for (int64_t i = 0; i < width; ++i) sum += xr[i];
      const float mean = sum / static_cast<float>(width);
      float ss = 0.0f;
#pragma omp simd reduction(+ : ss)
      for (int64_t i = 0; i < width; ++i) ss += (xr[i] - mean) * (xr[i] - mean);
      const float inv = 1.0f / std::sqrt(ss / static_cast<float>(width) + eps);
      for (int64_t i = 0; i < width; ++i) yr[i] = (xr[i] - mean) * inv * w[i] + b[i];
    }
  }

  void add_bias(Tensor& x, const Tensor& bias) override {
    check_f32(x, "add_bias input");
    check_f32(bias, "add_bias bias");
    op_checks::add_bias(x, bias);
    const int64_t width = x.dim(-1), rows = x.numel() / std::max<int64_t>(width, 1);
    const float* b = bias.data<float>();
#pragma omp parallel for num_threads(threads_) schedule(static) if (rows * width > 65536)
    for (int64_t r = 0; r < rows; ++r) {
      float* xr = x.data<float>() + r * width;
#pragma omp simd
      for (int64_t i = 0; i < width; ++i) xr[i] += b[i];
    }
  }

  void add(Tensor& x, const Tensor& y) override {
    check_f32(x, "add destination");
    check_f32(y, "add operand");
    op_checks::add(x, y);
    float* xp = x.data<float>();
    const float* yp = y.data<float>();
    const int64_t n = x.numel();
#pragma omp parallel for simd num_threads(threads_) schedule(static) if (n > 65536)
    for (int64_t i = 0; i < n; ++i) xp[i] += yp[i];
  }

  void gelu(Tensor& x) override {
    check_f32(x, "gelu input");
    float* xp = x.data<float>();
    const int64_t n = x.numel();
    constexpr float kInvSqrt2 = 0.70710678118654752f;
#pragma omp parallel for num_threads(threads_) schedule(static) if (n > 16384)
    for (int64_t i = 0; i < n; ++i) xp[i] = 0.5f * xp[i] * (1.0f + std::erf(xp[i] * kInvSqrt2));
  }

  void attention(const Tensor& q, const std::vector<AttentionSegment>& segments,
                 const AttentionShape& shape, Tensor& out) override {
    check_f32(q, "attention queries");
    check_f32(out, "attention output");
    op_checks::attention(q, segments, shape, out);
    const int64_t q_stride = static_cast<int64_t>(shape.heads) * shape.head_dim;
    const int64_t kv_stride = static_cast<int64_t>(shape.kv_heads) * shape.head_dim;
    // Work items: (segment, head, tile of query rows). Tiles bound the score buffer's size; they
    // shrink until there are a few items per thread (e.g. absorbed cross-attention: one wide
    // query block per segment), since every BLAS call runs on one thread.
    int64_t tile = 64;
    auto item_count = [&](int64_t t) {
      int64_t c = 0;
      for (const auto& sg : segments) c += shape.heads * ((sg.q_len + t - 1) / t);
      return c;
    };
    while (tile > 8 && item_count(tile) < 2 * threads_) tile /= 2;
    const int64_t kTile = tile;
    const int group = shape.heads / shape.kv_heads;
    const int hd = shape.head_dim;
    const std::vector<std::vector<KeyBlock>> blocks = key_blocks(segments);
    bool few_rows = true;
    for (const auto& sg : segments) few_rows = few_rows && sg.q_len <= 4;
    if (few_rows) {
      attention_few_rows(q, segments, blocks, shape, out);
      return;
    }
    // Non-causal segments (cross-attention) are split by keys instead, when their partial
    // results fit a bound.
    std::vector<bool> handled = attention_by_keys(q, segments, blocks, shape, out);
    // The rest go through the panel kernels where this CPU has them (keys in one block), else
    // through the BLAS tiles below.
    if (kernels_.attention_rows) {
      std::vector<bool> panel_segments(segments.size(), false);
      for (size_t s = 0; s < segments.size(); ++s)
        panel_segments[s] = !handled[s] && blocks[s].size() == 1;
      attention_panels(q, segments, blocks, shape, panel_segments, out);
      for (size_t s = 0; s < segments.size(); ++s) handled[s] = handled[s] || panel_segments[s];
    }
    struct Item {
      int seg, head;
      int64_t row0, rows;
    };
    std::vector<Item> items;
    for (size_t s = 0; s < segments.size(); ++s) {
      if (handled[s]) continue;
      const AttentionSegment& sg = segments[s];
      for (int h = 0; h < shape.heads; ++h)
        for (int64_t r = 0; r < sg.q_len; r += kTile)
          items.push_back({static_cast<int>(s), h, r, std::min(kTile, sg.q_len - r)});
    }
    if (items.empty()) return;
    auto run_item = [&](size_t it, std::vector<float>& scores, std::vector<float>& widened) {
      const Item& item = items[it];
      const AttentionSegment& sg = segments[item.seg];
      const int kvh = item.head / group;
      const int64_t k_len = sg.key_count();
      // Causal: the last query of the tile sees keys up to causal_offset + row.
      const int64_t k_used =
          sg.causal ? std::min(k_len, sg.causal_offset + item.row0 + item.rows) : k_len;
      float* o = out.data<float>() + (sg.q_begin + item.row0) * q_stride + item.head * hd;
      if (k_used <= 0) {
        for (int64_t r = 0; r < item.rows; ++r)
          std::fill(o + r * q_stride, o + r * q_stride + hd, 0.f);
        return;
      }
      scores.resize(static_cast<size_t>(item.rows * k_used));
      const float* qp = q.data<float>() + (sg.q_begin + item.row0) * q_stride + item.head * hd;
      // Scores of each key block land side by side in one row, so the softmax spans them all.
      int64_t off = 0;
      for (const KeyBlock& kb : blocks[item.seg]) {
        const int64_t n = std::min(kb.keys, k_used - off);
        if (n <= 0) break;
        int64_t ld = 0;
        const float* kh = head_rows_f32(kb, kb.k, n, kvh, hd, kv_stride, widened, &ld);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, item.rows, n, hd, shape.scale, qp,
                    q_stride, kh, ld, 0.0f, scores.data() + off, k_used);
        off += n;
      }
      for (int64_t r = 0; r < item.rows; ++r) {
        float* srow = scores.data() + r * k_used;
        // Rows before the first visible key (negative offsets) see nothing and output zeros.
        const int64_t visible = std::max<int64_t>(
            0, sg.causal ? std::min(k_used, sg.causal_offset + item.row0 + r + 1) : k_used);
        if (visible == 0) {
          std::fill(srow, srow + k_used, 0.0f);
          continue;
        }
        float mx;
        const float sum = kernels_.softmax_exp(srow, visible, &mx);
        const float inv = 1.0f / sum;
        for (int64_t j = 0; j < visible; ++j) srow[j] *= inv;
        for (int64_t j = visible; j < k_used; ++j) srow[j] = 0.0f;
      }
      off = 0;
      for (const KeyBlock& kb : blocks[item.seg]) {
        const int64_t n = std::min(kb.keys, k_used - off);
        if (n <= 0) break;
        int64_t ld = 0;
        const float* vh = head_rows_f32(kb, kb.v, n, kvh, hd, kv_stride, widened, &ld);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, item.rows, hd, n, 1.0f,
                    scores.data() + off, k_used, vh, ld, off == 0 ? 0.0f : 1.0f, o, q_stride);
        off += n;
      }
    };
#pragma omp parallel num_threads(threads_)
    {
      std::vector<float> scores, widened;
#pragma omp for schedule(dynamic)
      for (size_t it = 0; it < items.size(); ++it) run_item(it, scores, widened);
    }
  }

 private:
  // A run of keys and their values: a segment's k/v, or one of its parts. Rows are F32, or F16
  // (the F16 KV cache), widened to F32 as they are read, so the arithmetic is that of F32 keys
  // and values holding the rounded numbers.
  struct KeyBlock {
    const char* k;
    const char* v;
    int64_t keys;
    bool f16;
    size_t element_bytes() const { return f16 ? 2 : 4; }
  };
  std::vector<std::vector<KeyBlock>> key_blocks(const std::vector<AttentionSegment>& segments) {
    auto block_of = [](const Tensor& k, const Tensor& v) {
      check_cpu(k, "attention keys");
      check_cpu(v, "attention values");
      CEPE_CHECK((k.dtype() == DType::F32 || k.dtype() == DType::F16) && v.dtype() == k.dtype(),
                 "attention keys and values must be both F32 or both F16 on the CPU backend, got "
                     << dtype_name(k.dtype()) << " and " << dtype_name(v.dtype()));
      return KeyBlock{static_cast<const char*>(k.raw()), static_cast<const char*>(v.raw()),
                      k.dim(0), k.dtype() == DType::F16};
    };
    std::vector<std::vector<KeyBlock>> blocks(segments.size());
    for (size_t s = 0; s < segments.size(); ++s) {
      const AttentionSegment& sg = segments[s];
      if (sg.k_parts.empty()) {
        blocks[s].push_back(block_of(sg.k, sg.v));
        continue;
      }
      for (size_t i = 0; i < sg.k_parts.size(); ++i)
        blocks[s].push_back(block_of(sg.k_parts[i], sg.v_parts[i]));
    }
    return blocks;
  }

  // One thread's buffers for the attention panel kernels: a key/value head laid out by
  // pack_attention_kv and attention_rows' scratch, sized for `keys` keys (kept between calls).
  struct PanelHead {
    std::vector<float> keys_t, values, scratch;
    // Lays out head `kv_head` of `keys` rows of k and v (rows kv_stride elements apart).
    void lay_out(const cpu::Kernels& kr, const char* k, const char* v, bool f16, int64_t keys,
                 int64_t kv_head, int64_t hd, int64_t kv_stride) {
      keys_t.resize(static_cast<size_t>(cpu::attention_keys_floats(keys, hd)));
      values.resize(static_cast<size_t>(cpu::attention_values_floats(keys, hd)));
      scratch.resize(static_cast<size_t>(cpu::attention_scratch_floats(keys, hd)));
      const int64_t head_bytes = kv_head * hd * (f16 ? 2 : 4);
      kr.pack_attention_kv(k + head_bytes, v + head_bytes, f16 ? DType::F16 : DType::F32, keys,
                           kv_stride, hd, keys_t.data(), values.data());
    }
  };

  // Attention of the segments marked in `chosen` (keys in one block, F32 or F16) with the panel
  // kernels: work items are (segment, key/value head, range of query rows); each lays out the
  // keys and values its rows can see once (widening F16 cache rows) and then runs every query
  // head of the group over them, kF32PanelRows rows at a time. Ranges split a segment's rows
  // only as far as needed to give every thread a few items, so keys are laid out once per head
  // in a prefill.
  void attention_panels(const Tensor& q, const std::vector<AttentionSegment>& segments,
                        const std::vector<std::vector<KeyBlock>>& blocks,
                        const AttentionShape& shape, const std::vector<bool>& chosen, Tensor& out) {
    const int group = shape.heads / shape.kv_heads;
    const int64_t hd = shape.head_dim;
    const int64_t q_stride = static_cast<int64_t>(shape.heads) * hd;
    const int64_t kv_stride = static_cast<int64_t>(shape.kv_heads) * hd;
    int64_t base_items = 0;
    for (size_t s = 0; s < segments.size(); ++s)
      if (chosen[s] && segments[s].q_len > 0) base_items += shape.kv_heads;
    if (base_items == 0) return;
    const int64_t splits = std::max<int64_t>(1, (4 * threads_ + base_items - 1) / base_items);
    struct Item {
      int seg, kv_head;
      int64_t row0, rows;
    };
    std::vector<Item> items;
    for (size_t s = 0; s < segments.size(); ++s) {
      const int64_t q_len = segments[s].q_len;
      if (!chosen[s] || q_len == 0) continue;
      const int64_t panels = (q_len + cpu::kF32PanelRows - 1) / cpu::kF32PanelRows;
      const int64_t parts = std::min(splits, panels);
      for (int kvh = 0; kvh < shape.kv_heads; ++kvh)
        for (int64_t p = 0; p < parts; ++p) {
          const int64_t r0 = panels * p / parts * cpu::kF32PanelRows;
          const int64_t r1 = std::min(q_len, panels * (p + 1) / parts * cpu::kF32PanelRows);
          if (r1 > r0) items.push_back({static_cast<int>(s), kvh, r0, r1 - r0});
        }
    }
    // Causal ranges later in a segment see more keys: the costliest go out first.
    std::stable_sort(items.begin(), items.end(),
                     [](const Item& a, const Item& b) { return a.row0 > b.row0; });
    const cpu::Kernels& kr = kernels_;
#pragma omp parallel num_threads(threads_)
    {
      thread_local PanelHead head;
#pragma omp for schedule(dynamic)
      for (size_t i = 0; i < items.size(); ++i) {
        const Item& item = items[i];
        const AttentionSegment& sg = segments[item.seg];
        const KeyBlock& kb = blocks[item.seg][0];
        const int64_t row1 = item.row0 + item.rows;
        const int64_t keys =
            sg.causal ? std::clamp<int64_t>(sg.causal_offset + row1, 0, kb.keys) : kb.keys;
        head.lay_out(kr, kb.k, kb.v, kb.f16, keys, item.kv_head, hd, kv_stride);
        for (int h = item.kv_head * group; h < (item.kv_head + 1) * group; ++h)
          for (int64_t r0 = item.row0; r0 < row1; r0 += cpu::kF32PanelRows) {
            const int64_t rows = std::min(cpu::kF32PanelRows, row1 - r0);
            int64_t visible[cpu::kF32PanelRows];
            for (int64_t r = 0; r < rows; ++r)
              visible[r] = sg.causal ? sg.causal_offset + r0 + r + 1 : keys;
            const int64_t at = (sg.q_begin + r0) * q_stride + h * hd;
            kr.attention_rows(q.data<float>() + at, q_stride, rows, hd, head.keys_t.data(),
                              head.values.data(), keys, visible, shape.scale,
                              out.data<float>() + at, q_stride, nullptr, head.scratch.data());
          }
      }
    }
  }

  // Head `kvh`'s slice [n, hd] of n cache rows `kv_stride` apart, as F32: the rows themselves
  // when they are F32 (`ld` = kv_stride), else widened into `buffer` (`ld` = hd).
  const float* head_rows_f32(const KeyBlock& kb, const char* rows, int64_t n, int kvh, int64_t hd,
                             int64_t kv_stride, std::vector<float>& buffer, int64_t* ld) const {
    if (!kb.f16) {
      *ld = kv_stride;
      return reinterpret_cast<const float*>(rows) + kvh * hd;
    }
    buffer.resize(static_cast<size_t>(n * hd));
    const uint16_t* h = reinterpret_cast<const uint16_t*>(rows) + kvh * hd;
    for (int64_t j = 0; j < n; ++j)
      kernels_.widen_f16(h + j * kv_stride, buffer.data() + j * hd, hd);
    *ld = hd;
    return buffer.data();
  }

  // One query row and head: joins `blocks` partial softmaxes, block b's (max, sum of
  // exponentials, unnormalised output row of `width`) starting at part_of(b), each rescaled to
  // the overall max. No block (no visible key) gives zeros.
  template <class PartOf>
  static void merge_softmax_blocks(size_t blocks, PartOf part_of, int64_t width, float* out) {
    std::fill(out, out + width, 0.0f);
    if (blocks == 0) return;
    float mx = -INFINITY;
    for (size_t b = 0; b < blocks; ++b) mx = std::max(mx, part_of(b)[0]);
    float sum = 0.0f;
    for (size_t b = 0; b < blocks; ++b) {
      const float* part = part_of(b);
      const float w = std::exp(part[0] - mx);
      sum += w * part[1];
#pragma omp simd
      for (int64_t c = 0; c < width; ++c) out[c] += w * part[2 + c];
    }
    const float inv = 1.0f / sum;
    for (int64_t c = 0; c < width; ++c) out[c] *= inv;
  }

  // Attention of non-causal segments split by key blocks: each work unit scores one tile of
  // query rows of one head against one block of keys and keeps its partial softmax (row max,
  // sum of exponentials, unnormalised output); a second pass merges a row's blocks in block
  // order. Each key block is read (and packed by BLAS) once per tile of up to 256 rows rather
  // than once per 64-row tile, and the blocks spread a single wide segment (absorbed
  // cross-attention: heads x prompt rows against every passage's states) over all threads.
  // The merge order is fixed, so results do not depend on the thread count. Returns which
  // segments it handled (those whose partials stay under 64 MiB).
  std::vector<bool> attention_by_keys(const Tensor& q,
                                      const std::vector<AttentionSegment>& segments,
                                      const std::vector<std::vector<KeyBlock>>& runs,
                                      const AttentionShape& shape, Tensor& out) {
    const int group = shape.heads / shape.kv_heads;
    const int64_t hd = shape.head_dim;
    const int64_t q_stride = static_cast<int64_t>(shape.heads) * hd;
    const int64_t kv_stride = static_cast<int64_t>(shape.kv_heads) * hd;
    constexpr int64_t kRowTile = 256, kKeyBlock = 512;
    constexpr size_t kMaxPartialFloats = size_t(16) << 20;
    const int64_t partial_width = hd + 2;  // max, sum, output row
    struct Tile {
      int seg, head;
      int64_t row0, rows;
      size_t first_block, blocks;  // this tile's units, in key order
    };
    struct Unit {
      size_t tile;
      const char *k, *v;  // the block's first key and value rows
      bool f16;
      int64_t keys;
      size_t partial;  // first float of its partials
    };
    std::vector<bool> handled(segments.size(), false);
    std::vector<Tile> tiles;
    std::vector<Unit> units;
    size_t floats = 0;
    for (size_t s = 0; s < segments.size(); ++s) {
      const AttentionSegment& sg = segments[s];
      // F16 keys (an F16 cache) need the panel kernels, which widen them as they lay them out;
      // without those they go the tile path.
      const bool any_f16 =
          std::any_of(runs[s].begin(), runs[s].end(), [](const KeyBlock& b) { return b.f16; });
      if (sg.causal || sg.q_len == 0 || (any_f16 && !kernels_.attention_rows)) continue;
      size_t seg_blocks = 0;
      for (const KeyBlock& run : runs[s]) seg_blocks += (run.keys + kKeyBlock - 1) / kKeyBlock;
      const size_t seg_floats =
          seg_blocks * static_cast<size_t>(shape.heads * sg.q_len * partial_width);
      if (seg_blocks == 0 || floats + seg_floats > kMaxPartialFloats) continue;
      handled[s] = true;
      floats += seg_floats;
      for (int h = 0; h < shape.heads; ++h)
        for (int64_t r = 0; r < sg.q_len; r += kRowTile) {
          Tile tile{static_cast<int>(s), h, r, std::min(kRowTile, sg.q_len - r), units.size(), 0};
          for (const KeyBlock& run : runs[s])
            for (int64_t key0 = 0; key0 < run.keys; key0 += kKeyBlock) {
              units.push_back({tiles.size(), run.k + key0 * kv_stride * run.element_bytes(),
                               run.v + key0 * kv_stride * run.element_bytes(), run.f16,
                               std::min(kKeyBlock, run.keys - key0), 0});
              ++tile.blocks;
            }
          tiles.push_back(tile);
        }
    }
    if (units.empty()) return handled;
    size_t at = 0;
    for (Unit& u : units) {
      u.partial = at;
      at += static_cast<size_t>(tiles[u.tile].rows * partial_width);
    }
    // Kept per thread between calls: a prompt against 8192 encoder states needs ~26 MB of
    // partials per cross layer, which a fresh vector zeroed and glibc mmapped and unmapped again
    // every call (perf: a CEPE prefill spent 12 % in page faults and the kernel's page
    // clearing). Every partial is written before it is read.
    thread_local std::vector<float> scratch_partials;
    if (scratch_partials.size() < at) scratch_partials.resize(at);
    float* const partials = scratch_partials.data();
    const cpu::Kernels& kr = kernels_;
#pragma omp parallel num_threads(threads_)
    {
      thread_local std::vector<float> scores;
      thread_local PanelHead head;
#pragma omp for schedule(dynamic)
      for (size_t i = 0; i < units.size(); ++i) {
        const Unit& u = units[i];
        const Tile& t = tiles[u.tile];
        const AttentionSegment& sg = segments[t.seg];
        const int64_t kv_off = static_cast<int64_t>(t.head / group) * hd;
        const float* qp = q.data<float>() + (sg.q_begin + t.row0) * q_stride + t.head * hd;
        float* part = partials + u.partial;
        if (u.f16) {
          // F16 blocks (an F16 cross-attention cache) through the panel kernels (AVX-512): this
          // head's slice of the block widened and laid out once, then partial softmaxes of
          // kF32PanelRows rows at a time. F32 blocks stay with BLAS, which reads them in place:
          // the panel kernels measured no faster there (absorbed decode, a dozen rows against
          // keys of encoder width; a 512-token prompt against 8192 encoder states).
          head.lay_out(kr, u.k, u.v, /*f16=*/true, u.keys, t.head / group, hd, kv_stride);
          int64_t visible[cpu::kF32PanelRows];
          std::fill(visible, visible + cpu::kF32PanelRows, u.keys);
          for (int64_t r0 = 0; r0 < t.rows; r0 += cpu::kF32PanelRows)
            kr.attention_rows(qp + r0 * q_stride, q_stride,
                              std::min(cpu::kF32PanelRows, t.rows - r0), hd, head.keys_t.data(),
                              head.values.data(), u.keys, visible, shape.scale,
                              part + r0 * partial_width + 2, partial_width,
                              part + r0 * partial_width, head.scratch.data());
          continue;
        }
        scores.resize(static_cast<size_t>(t.rows * u.keys));
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, t.rows, u.keys, hd, shape.scale, qp,
                    q_stride, reinterpret_cast<const float*>(u.k) + kv_off, kv_stride, 0.0f,
                    scores.data(), u.keys);
        for (int64_t r = 0; r < t.rows; ++r) {
          float* srow = scores.data() + r * u.keys;
          float mx;
          const float sum = kernels_.softmax_exp(srow, u.keys, &mx);
          part[r * partial_width] = mx;
          part[r * partial_width + 1] = sum;
        }
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, t.rows, hd, u.keys, 1.0f,
                    scores.data(), u.keys, reinterpret_cast<const float*>(u.v) + kv_off, kv_stride,
                    0.0f, part + 2, partial_width);
      }
      // Merge each row's blocks, rescaled to the row's overall max.
#pragma omp for schedule(static)
      for (size_t ti = 0; ti < tiles.size(); ++ti) {
        const Tile& t = tiles[ti];
        const AttentionSegment& sg = segments[t.seg];
        for (int64_t r = 0; r < t.rows; ++r)
          merge_softmax_blocks(
              t.blocks,
              [&](size_t b) {
                return partials + units[t.first_block + b].partial + r * partial_width;
              },
              hd, out.data<float>() + (sg.q_begin + t.row0 + r) * q_stride + t.head * hd);
      }
    }
    return handled;
  }

  // Row r of a weight matrix of any dtype, widened to F32 (packed rows are gathered from their
  // group first).
  void weight_row(const Tensor& w, int64_t r, float* out) const {
    const int64_t width = w.dim(-1);
    if (dtype_is_packed(w.dtype())) {
      const DType plain = dtype_unpacked(w.dtype());
      thread_local std::vector<char> row;
      row.resize(dtype_row_bytes(plain, width));
      unpack_row16(w, r, row.data());
      cpu::dequantize_row(kernels_, row.data(), plain, out, width);
      return;
    }
    cpu::dequantize_row(kernels_,
                        static_cast<const char*>(w.raw()) + r * dtype_row_bytes(w.dtype(), width),
                        w.dtype(), out, width);
  }

  // Decode steps (a few query rows per segment): plain vector loops, no BLAS calls, so the
  // per-token cost is one read of K and V and nothing else. Keys are visited row by row with
  // all heads at once: a cache row [kv_heads * head_dim] is contiguous, so memory is streamed in
  // order (per-head passes stride through it and stall on a page miss per key). Long key ranges
  // are split into blocks whose partial softmaxes are merged (max, sum, weighted values), so
  // every thread has work even for a single sequence.
  void attention_few_rows(const Tensor& q, const std::vector<AttentionSegment>& segments,
                          const std::vector<std::vector<KeyBlock>>& key_runs,
                          const AttentionShape& shape, Tensor& out) {
    const int heads = shape.heads;
    const int group = shape.heads / shape.kv_heads;
    const int64_t hd = shape.head_dim;
    const int64_t q_stride = static_cast<int64_t>(heads) * hd;
    const int64_t kv_stride = static_cast<int64_t>(shape.kv_heads) * hd;
    // Key blocks of at most 512 keys, made smaller (in steps of 16, the kernel's batch) when
    // there are fewer than two per thread: one short sequence would otherwise be one block for
    // one thread, and blocks sized by halving left threads uneven shares (560 keys in blocks of
    // 128: 384 keys for one thread, 176 for the other). Every block streams whole cache rows (all
    // heads), which the prefetcher follows; splitting by heads instead reads a strided slice of
    // each row and measured slower. Blocks never straddle two key runs.
    int64_t total_keys = 0;
    for (const auto& sg : segments) total_keys += sg.q_len * sg.key_count();
    const int64_t want_blocks = 2 * threads_;
    int64_t kBlock = 512;
    if ((total_keys + kBlock - 1) / kBlock < want_blocks)
      kBlock = std::max<int64_t>(16, ((total_keys + want_blocks - 1) / want_blocks + 15) / 16 * 16);
    struct Unit {
      int seg;
      int64_t row;          // query row in the segment
      const char *kp, *vp;  // this block's first key and value row
      int64_t keys;
      bool f16;
      size_t block;  // index into `partials`
    };
    std::vector<Unit> units;
    struct RowRef {
      int seg;
      int64_t row;
      size_t first, blocks;
    };
    std::vector<RowRef> rows;
    size_t n_blocks = 0;
    for (size_t s = 0; s < segments.size(); ++s) {
      const AttentionSegment& sg = segments[s];
      for (int64_t r = 0; r < sg.q_len; ++r) {
        const int64_t visible = std::max<int64_t>(
            0, sg.causal ? std::min(sg.key_count(), sg.causal_offset + r + 1) : sg.key_count());
        const size_t first = n_blocks;
        int64_t seen = 0;
        for (const KeyBlock& run : key_runs[s]) {
          const int64_t in_run = std::min(run.keys, visible - seen);
          for (int64_t key0 = 0; key0 < in_run; key0 += kBlock)
            units.push_back({static_cast<int>(s), r, run.k + key0 * kv_stride * run.element_bytes(),
                             run.v + key0 * kv_stride * run.element_bytes(),
                             std::min(kBlock, in_run - key0), run.f16, n_blocks++});
          seen += std::max<int64_t>(in_run, 0);
          if (seen >= visible) break;
        }
        rows.push_back({static_cast<int>(s), r, first, n_blocks - first});
      }
    }
    // Per block and head: running max, sum of exponentials, and the unnormalised output.
    const int64_t partial_width = 2 + hd;
    std::vector<float> partials(n_blocks * heads * partial_width);
    // Decode steps' kernel where the head width suits it; otherwise the loops below.
    const auto attend_block = hd % 8 == 0 ? kernels_.attend_row_block : nullptr;
#pragma omp parallel num_threads(threads_)
    {
      // `widened` serves the loops' F16 rows; the kernel widens as it loads.
      std::vector<float> scores, widened(attend_block ? 0 : static_cast<size_t>(kv_stride));
      // Cache row j of a unit as F32: in place, or an F16 row widened into `widened`.
      auto row_f32 = [&](const Unit& unit, const char* base, int64_t j) -> const float* {
        if (!unit.f16) return reinterpret_cast<const float*>(base) + j * kv_stride;
        kernels_.widen_f16(reinterpret_cast<const uint16_t*>(base) + j * kv_stride, widened.data(),
                           kv_stride);
        return widened.data();
      };
#pragma omp for schedule(dynamic)
      for (size_t u = 0; u < units.size(); ++u) {
        const Unit& unit = units[u];
        const AttentionSegment& sg = segments[unit.seg];
        const float* qr = q.data<float>() + (sg.q_begin + unit.row) * q_stride;
        const int64_t n = unit.keys;
        scores.resize(static_cast<size_t>(heads * n));
        float* part = partials.data() + unit.block * heads * partial_width;
        if (attend_block) {
          attend_block(qr, unit.kp, unit.vp, unit.f16, n, kv_stride, heads, group, hd, shape.scale,
                       scores.data(), part, partial_width);
          continue;
        }
        for (int64_t j = 0; j < n; ++j) {
          const float* kr = row_f32(unit, unit.kp, j);
          for (int h = 0; h < heads; ++h) {
            const float* qh = qr + h * hd;
            const float* kh = kr + (h / group) * hd;
            float d = 0.0f;
#pragma omp simd reduction(+ : d)
            for (int64_t t = 0; t < hd; ++t) d += qh[t] * kh[t];
            scores[h * n + j] = d * shape.scale;
          }
        }
        for (int h = 0; h < heads; ++h) {
          float* sh = scores.data() + h * n;
          float mx;
          const float sum = kernels_.softmax_exp(sh, n, &mx);
          part[h * partial_width] = mx;
          part[h * partial_width + 1] = sum;
          std::fill(part + h * partial_width + 2, part + (h + 1) * partial_width, 0.0f);
        }
        for (int64_t j = 0; j < n; ++j) {
          const float* vr = row_f32(unit, unit.vp, j);
          for (int h = 0; h < heads; ++h) {
            const float p = scores[h * n + j];
            const float* vh = vr + (h / group) * hd;
            float* acc = part + h * partial_width + 2;
#pragma omp simd
            for (int64_t t = 0; t < hd; ++t) acc[t] += p * vh[t];
          }
        }
      }
      // Merge the blocks of each row: rescale every block to the row's overall max.
#pragma omp for schedule(static)
      for (size_t i = 0; i < rows.size(); ++i) {
        const RowRef& rr = rows[i];
        const AttentionSegment& sg = segments[rr.seg];
        float* o = out.data<float>() + (sg.q_begin + rr.row) * q_stride;
        for (int h = 0; h < heads; ++h)
          merge_softmax_blocks(
              rr.blocks,
              [&](size_t b) {
                return partials.data() + ((rr.first + b) * heads + h) * partial_width;
              },
              hd, o + h * hd);
      }
    }
  }

  // The linear op's paths, chosen by the weights' dtype (the parts share one) and the rows.
  void run_linear(const float* x, std::span<const Part> parts, int64_t m, int64_t k,
                  bool accumulate) {
    if (m == 0) return;
    const DType type = parts[0].weight->dtype();
    switch (type) {
      case DType::F32:
        if (m <= kFewRowsF32) {
          linear_f32(x, parts, m, k, accumulate);
        } else if (kernels_.gemm_f32_panels) {
          linear_f32_panels(x, parts, m, k, accumulate);
        } else {
          // OpenBLAS's results depend on how the columns are sliced between its calls, so each
          // weight keeps the slicing it gets alone.
          for (const Part& part : parts)
            linear_f32(x, std::span<const Part>(&part, 1), m, k, accumulate);
        }
        return;
      case DType::Q8_0x16:
      case DType::Q4_0x16:
        linear_packed(x, parts, m, k, accumulate);
        return;
      case DType::BF16:
        if (m > kDotRows && bf16_pairs_) {
          linear_bf16_pairs(x, parts, m, k, accumulate);
          return;
        }
        [[fallthrough]];
      case DType::F16:
        if (m > kDotRows && kernels_.gemm_f32_panels) {
          linear_f32_panels(x, parts, m, k, accumulate);
          return;
        }
        [[fallthrough]];
      case DType::Q8_0:
      case DType::Q4_0:
        if (m <= kDotRows) {
          linear_dots(x, parts, m, k, accumulate);
        } else {
          for (const Part& part : parts) linear_tiles(x, part, m, k, accumulate);
        }
        return;
      default:
        CEPE_THROW("linear: unsupported weight dtype " << dtype_name(type));
    }
  }

  static int64_t columns(const Part& part) {
    return part.n;
  }

  // Up to this many rows an F32 linear reads its weights in place (gemm_f32_rows) instead of
  // calling SGEMM, which packs them first.
  static constexpr int64_t kFewRowsF32 = 32;

  // F32 weights: the rows of the weight are split into one slice per thread and each slice is
  // a single-threaded call on the weight in place (dot kernel for one row, the row kernel for a
  // few, BLAS GEMM otherwise).
  void linear_f32(const float* x, std::span<const Part> parts, int64_t m, int64_t k,
                  bool accumulate) {
    const float beta = accumulate ? 1.0f : 0.0f;
    const int64_t n_all = total_units(parts, columns);
    const int64_t slices =
        n_all * k * m < 32768 ? 1 : std::min<int64_t>(threads_, (n_all + 15) / 16);
    const int64_t slice = ((n_all + slices - 1) / slices + 15) / 16 * 16;
#pragma omp parallel for num_threads(threads_) schedule(static) if (slices > 1)
    for (int64_t s = 0; s < slices; ++s) {
      for_each_piece(parts, columns, s * slice, std::min(n_all, (s + 1) * slice),
                     [&](const Part& part, int64_t j0, int64_t j1) {
                       const float* w = part.weight->data<float>();
                       float* out = part.out;
                       const int64_t n = part.n, nj = j1 - j0;
                       if (m == 1) {
                         // Decode steps: the dispatched dot kernel streams each row once
                         // (OpenBLAS's SGEMV reached ~75 % of this box's read bandwidth, the dot
                         // kernel ~90 %).
                         for (int64_t j = j0; j < j1; ++j) {
                           const float v = kernels_.dot_f32(w + j * k, x, k);
                           out[j] = accumulate ? out[j] + v : v;
                         }
                       } else if (m <= kFewRowsF32) {
                         // A short prompt: OpenBLAS would pack the whole weight slice for a few
                         // rows (the copy took more time than the multiply at 20 rows); the row
                         // kernel reads it in place.
                         kernels_.gemm_f32_rows(x, m, w + j0 * k, nj, k, out + j0, n, accumulate);
                       } else {
                         cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, m, nj, k, 1.0f, x, k,
                                     w + j0 * k, k, beta, out + j0, n);
                       }
                     });
    }
  }

  // Few rows against 16-bit or block-quantized weights (decode steps): every weight row is read
  // once and dotted with each activation row by the dispatched kernels, no copy of the weight is
  // made. Block weights are dotted with the activations quantized to Q8_0 (as GGUF does): exact
  // integer products per block, one F32 multiply-add per block.
  void linear_dots(const float* x, std::span<const Part> parts, int64_t m, int64_t k,
                   bool accumulate) {
    const DType type = parts[0].weight->dtype();
    const size_t row_bytes = dtype_row_bytes(type, k);
    const int64_t blocks = (k + 31) / 32, n_all = total_units(parts, columns);
    std::vector<BlockQ8_0> xq;
    if (dtype_is_block(type)) {
      xq.resize(static_cast<size_t>(m * blocks));
      for (int64_t i = 0; i < m; ++i) kernels_.quantize_q8_0(x + i * k, xq.data() + i * blocks, k);
    }
    const cpu::Kernels& kr = kernels_;
#pragma omp parallel num_threads(threads_) if (n_all * k > 16384)
    {
      const int t = omp_get_thread_num(), nt = omp_get_num_threads();
      for_each_piece(parts, columns, n_all * t / nt, n_all * (t + 1) / nt,
                     [&](const Part& part, int64_t j0, int64_t j1) {
                       const char* w = static_cast<const char*>(part.weight->raw());
                       float* out = part.out;
                       const int64_t n = part.n;
                       for (int64_t j = j0; j < j1; ++j) {
                         const void* row = w + j * row_bytes;
                         for (int64_t i = 0; i < m; ++i) {
                           float v;
                           switch (type) {
                             case DType::F16:
                               v = kr.dot_f16(static_cast<const uint16_t*>(row), x + i * k, k);
                               break;
                             case DType::BF16:
                               v = kr.dot_bf16(static_cast<const uint16_t*>(row), x + i * k, k);
                               break;
                             case DType::Q8_0:
                               v = kr.dot_q8_0(static_cast<const BlockQ8_0*>(row),
                                               xq.data() + i * blocks, blocks);
                               break;
                             default:
                               v = kr.dot_q4_0(static_cast<const BlockQ4_0*>(row),
                                               xq.data() + i * blocks, blocks);
                           }
                           out[i * n + j] = accumulate ? out[i * n + j] + v : v;
                         }
                       }
                     });
    }
  }

  // Activation tiles per chunk of the tiled packed GEMM: up to the level's q8_chunk_bytes of
  // them, so a chunk stays in L2 while the thread's groups meet it.
  static int64_t q8_tiles_per_chunk(const cpu::Kernels& kr, int64_t blocks) {
    return std::max<int64_t>(
        1, kr.q8_chunk_bytes / (blocks * cpu::q8_tile_block_bytes(kr.q8_tile_rows)));
  }

  // Packed block weights, any number of rows: the activations are quantized to Q8_0 once (with
  // each block's F32 scale and quant sum), then every group of 16 weight rows is one kernel call
  // over the activation rows (a chunk of them at a time in the tiled layout), groups split
  // evenly between the threads; one parallel region for the whole op. Decode steps and prefill
  // share the arithmetic, so a row's result does not depend on how many rows came with it. Rows
  // past the last whole group are row-major and go through the row dot kernels.
  void linear_packed(const float* x, std::span<const Part> parts, int64_t m, int64_t k,
                     bool accumulate) {
    const DType type = parts[0].weight->dtype();
    const bool q4 = type == DType::Q4_0x16;
    const int64_t blocks = (k + 31) / 32;
    const size_t group_bytes = static_cast<size_t>(blocks * kPackRows) * dtype_block_bytes(type);
    const size_t row_bytes = dtype_row_bytes(type, k);
    const auto whole_groups = [](const Part& part) { return part.n / kPackRows; };
    const int64_t groups = total_units(parts, whole_groups), n_all = total_units(parts, columns);
    const bool partial_group =
        std::any_of(parts.begin(), parts.end(), [](const Part& p) { return p.n % kPackRows != 0; });
    const cpu::Kernels& kr = kernels_;
    const auto gemm = q4 ? kr.gemm_q4_0x16 : kr.gemm_q8_0x16;
    // A tile of rows or more goes through the tiled layout where the level has it (the same
    // results bit for bit; decode steps keep the row-major form, which needs no copy). The row
    // dot kernels of a partial last group read the row-major blocks.
    const auto gemm_tiles = q4 ? kr.gemm_q4_0x16_tiles : kr.gemm_q8_0x16_tiles;
    const int64_t tile_rows = kr.q8_tile_rows;
    const bool tiled = gemm_tiles != nullptr && m >= tile_rows;
    const bool row_major = !tiled || partial_group;
    const int64_t tiles = (m + tile_rows - 1) / tile_rows;
    // Kept per calling thread between calls (no allocation per decode step; a backend may be
    // shared by threads that each run their own ops).
    thread_local std::vector<BlockQ8_0> scratch_q;
    thread_local std::vector<float> scratch_d;
    thread_local std::vector<int32_t> scratch_s;
    thread_local std::vector<uint8_t> scratch_tiles;
    if (row_major) {
      scratch_q.resize(static_cast<size_t>(m * blocks));
      scratch_d.resize(static_cast<size_t>(m * blocks));
      scratch_s.resize(static_cast<size_t>(m * blocks));
    }
    if (tiled) scratch_tiles.resize(static_cast<size_t>(cpu::q8_tile_bytes(m, blocks, tile_rows)));
    BlockQ8_0* xq = scratch_q.data();
    float* xd = scratch_d.data();
    int32_t* xs = scratch_s.data();
    uint8_t* xt = scratch_tiles.data();
    const int team = n_all * k * m < 65536 ? 1 : threads_;
#pragma omp parallel num_threads(team)
    {
      const int t = omp_get_thread_num(), nt = omp_get_num_threads();
      // Rows quantized in contiguous slices (whole tiles), then a barrier: every group reads
      // every row.
      const int64_t tile0 = tiles * t / nt, tile1 = tiles * (t + 1) / nt;
      const int64_t r0 = std::min(m, tile0 * tile_rows);
      const int64_t r1 = std::min(m, tile1 * tile_rows);
      if (tiled) cpu::quantize_q8_tiles(kr, x, m, k, q4 ? 8 : 128, tile0, tile1, xt);
      if (row_major)
        cpu::quantize_rows_q8_0(kr, x + r0 * k, r1 - r0, k, xq + r0 * blocks, xd + r0 * blocks,
                                xs + r0 * blocks);
#pragma omp barrier
      // Tiled, the activation tiles are taken in chunks that stay in L2 while the thread's
      // groups meet them (all of them at once would stream from L3 for every group: 2.6 MB at
      // k = 4096 and 512 rows). VNNI at 512 KB chunks: 4096 x 4096 in 20.4 ms against 23.1
      // unchunked; AMX at 1 MB: 13.0-15.9 ms against 16.8-17.0 at 256 KB (its per-call setup,
      // the signed block copy, wants the larger chunks), 2 threads, docs/benchmarks.md.
      const int64_t chunk_tiles = tiled ? q8_tiles_per_chunk(kr, blocks) : tiles;
      for (int64_t c0 = 0; c0 < tiles; c0 += chunk_tiles) {
        const int64_t c1 = std::min(tiles, c0 + chunk_tiles);
        const int64_t row0 = c0 * tile_rows;
        const int64_t rows = tiled ? std::min(m, c1 * tile_rows) - row0 : m;
        for_each_piece(parts, whole_groups, groups * t / nt, groups * (t + 1) / nt,
                       [&](const Part& part, int64_t g0, int64_t g1) {
                         const uint8_t* w = static_cast<const uint8_t*>(part.weight->raw());
                         for (int64_t g = g0; g < g1; ++g) {
                           float* out = part.out + row0 * part.n + g * kPackRows;
                           if (tiled)
                             gemm_tiles(w + g * group_bytes,
                                        xt + c0 * blocks * cpu::q8_tile_block_bytes(tile_rows),
                                        rows, blocks, out, part.n, accumulate);
                           else
                             gemm(w + g * group_bytes, xq, xd, xs, m, blocks, out, part.n,
                                  accumulate);
                         }
                       });
      }
      if (t == nt - 1)
        for (const Part& part : parts) {
          const uint8_t* w = static_cast<const uint8_t*>(part.weight->raw());
          for (int64_t j = part.n / kPackRows * kPackRows; j < part.n; ++j) {
            const uint8_t* row = w + j * row_bytes;
            for (int64_t i = 0; i < m; ++i) {
              const float v =
                  q4 ? kr.dot_q4_0(reinterpret_cast<const BlockQ4_0*>(row), xq + i * blocks, blocks)
                     : kr.dot_q8_0(reinterpret_cast<const BlockQ8_0*>(row), xq + i * blocks,
                                   blocks);
              float& o = part.out[i * part.n + j];
              o = accumulate ? o + v : v;
            }
          }
        }
    }
  }

  // Many rows (prefill, encoder) where no panel GEMM applies (CPUs without AVX-512, row-major
  // block weights): a tile of weight rows at a time is widened into per-thread F32 scratch (tile x
  // K floats, never the whole matrix) and multiplied by every activation row with a
  // single-threaded GEMM; the activations stay F32, so this is as exact as the F32 path on the
  // widened weights.
  void linear_tiles(const float* x, const Part& part, int64_t m, int64_t k, bool accumulate) {
    const Tensor& weight = *part.weight;
    float* out = part.out;
    const int64_t n = part.n;
    int64_t tile = 128;
    while (tile > 32 && (n + tile - 1) / tile < 2 * threads_) tile /= 2;
    const int64_t tiles = (n + tile - 1) / tile;
    const float beta = accumulate ? 1.0f : 0.0f;
    const size_t row_bytes = dtype_row_bytes(weight.dtype(), k);
    const char* w = static_cast<const char*>(weight.raw());
#pragma omp parallel num_threads(threads_)
    {
      std::vector<float> wtile(static_cast<size_t>(tile * k));
#pragma omp for schedule(dynamic)
      for (int64_t t = 0; t < tiles; ++t) {
        const int64_t j0 = t * tile, nj = std::min(tile, n - j0);
        for (int64_t j = 0; j < nj; ++j)
          cpu::dequantize_row(kernels_, w + (j0 + j) * row_bytes, weight.dtype(),
                              wtile.data() + j * k, k);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, m, nj, k, 1.0f, x, k, wtile.data(), k,
                    beta, out + j0, n);
      }
    }
  }

  // Activation rows packed at a time by the panel GEMMs (73 panels of 14): bounds the panels'
  // scratch (an encoder pass has 8192 rows of up to 2048 values: 64 MB of F32 panels at once)
  // while each packed weight block still meets ~1000 rows.
  static constexpr int64_t kPanelChunkRows = 1022;

  // The panel GEMMs' shared plan, for each chunk of rows: the activations are packed into row
  // panels (threads split the panels), then each thread multiplies its share of the weight
  // blocks (the parts' blocks laid end to end) by every panel. `pack(r0, r1, dst)` packs rows
  // [r0, r1); `multiply(part, panels, r0, rows, j0, j1, scratch)` runs the part's weight rows
  // [j0, j1) against rows [r0, r0 + rows).
  template <typename Word, typename Pack, typename Multiply>
  void run_panels(std::span<const Part> parts, int64_t m, int64_t k, int64_t panel_rows,
                  int64_t panel_words, int64_t block_cols, int64_t scratch_words, Pack pack,
                  Multiply multiply) {
    const int64_t chunk_rows = std::min(m, kPanelChunkRows / panel_rows * panel_rows);
    thread_local std::vector<Word> scratch_panels;
    scratch_panels.resize(
        static_cast<size_t>((chunk_rows + panel_rows - 1) / panel_rows * panel_words));
    Word* panels = scratch_panels.data();
    const auto weight_blocks = [&](const Part& p) { return (p.n + block_cols - 1) / block_cols; };
    const int64_t blocks = total_units(parts, weight_blocks);
    const int team = total_units(parts, columns) * k * m < 65536 ? 1 : threads_;
#pragma omp parallel num_threads(team)
    {
      const int t = omp_get_thread_num(), nt = omp_get_num_threads();
      thread_local std::vector<Word> scratch;
      scratch.resize(static_cast<size_t>(scratch_words));
      const int64_t b0 = blocks * t / nt, b1 = blocks * (t + 1) / nt;
      for (int64_t c0 = 0; c0 < m; c0 += chunk_rows) {
        const int64_t rows = std::min(chunk_rows, m - c0);
        const int64_t panel_count = (rows + panel_rows - 1) / panel_rows;
        const int64_t p0 = panel_count * t / nt, p1 = panel_count * (t + 1) / nt;
        if (p1 > p0)
          pack(c0 + p0 * panel_rows, c0 + std::min(rows, p1 * panel_rows),
               panels + p0 * panel_words);
#pragma omp barrier
        for_each_piece(parts, weight_blocks, b0, b1,
                       [&](const Part& part, int64_t first, int64_t last) {
                         multiply(part, panels, c0, rows, first * block_cols,
                                  std::min(part.n, last * block_cols), scratch.data());
                       });
#pragma omp barrier  // the next chunk's packing overwrites these panels
      }
    }
  }

  // bf16 weights, many rows, on CPUs with AVX-512 BF16: activations rounded to bf16 pairs,
  // VDPBF16PS register tiles (gemm_bf16_pairs).
  void linear_bf16_pairs(const float* x, std::span<const Part> parts, int64_t m, int64_t k,
                         bool accumulate) {
    const cpu::Kernels& kr = kernels_;
    run_panels<uint32_t>(
        parts, m, k, kr.bf16_panel_rows, cpu::bf16_panel_words(kr, kr.bf16_panel_rows, k),
        cpu::kBf16BlockCols, cpu::bf16_block_words(kr, k),
        [&](int64_t r0, int64_t r1, uint32_t* dst) {
          kr.pack_bf16_pairs(x + r0 * k, r1 - r0, k, dst);
        },
        [&](const Part& part, const uint32_t* panels, int64_t r0, int64_t rows, int64_t j0,
            int64_t j1, uint32_t* scratch) {
          kr.gemm_bf16_pairs(panels, rows, k, part.weight->data<uint16_t>() + j0 * k, j1 - j0,
                             part.out + r0 * part.n + j0, part.n, accumulate, scratch);
        });
  }

  // F32, F16 or bf16 weights (F32 activations), many rows, on AVX-512 CPUs: F32 FMA register
  // tiles over weight blocks widened as they are packed (gemm_f32_panels).
  void linear_f32_panels(const float* x, std::span<const Part> parts, int64_t m, int64_t k,
                         bool accumulate) {
    const cpu::Kernels& kr = kernels_;
    const DType type = parts[0].weight->dtype();
    const size_t row_bytes = dtype_row_bytes(type, k);
    run_panels<float>(
        parts, m, k, cpu::kF32PanelRows, cpu::f32_panel_floats(cpu::kF32PanelRows, k),
        cpu::kF32BlockCols, cpu::f32_gemm_scratch_floats(k),
        [&](int64_t r0, int64_t r1, float* dst) {
          kr.pack_f32_panels(x + r0 * k, r1 - r0, k, dst);
        },
        [&](const Part& part, const float* panels, int64_t r0, int64_t rows, int64_t j0, int64_t j1,
            float* scratch) {
          kr.gemm_f32_panels(panels, rows, k,
                             static_cast<const char*>(part.weight->raw()) + j0 * row_bytes, type,
                             j1 - j0, part.out + r0 * part.n + j0, part.n, accumulate, scratch);
        });
  }

  int threads_ = 1;
  WeightKind weights_ = WeightKind::Stored;

  const cpu::Kernels& kernels_;
  bool bf16_pairs_ = false;    // bf16 GEMMs round activations (BackendOptions::bf16_activations)
  uint64_t copy_reserve_ = 0;  // BackendOptions::stored_copy_reserve_bytes, resolved
  StoredWeights stored_weights_ = StoredWeights::Auto;
  SystemRoots system_;  // BackendOptions::system
  // Memory a conversion leaves free at the least: the loader's own buffers and the process's
  // other allocations must still fit.
  static constexpr uint64_t kConvertReserve = uint64_t{64} << 20;
  uint64_t mapped_bytes_ = 0;  // stored matrices left in the file mapping
  // Rounded up: a small model's few hundred KB should not read as 0 MB.
  std::string mapped_mb() const {
    return std::to_string((mapped_bytes_ + (1 << 20) - 1) >> 20);
  }
};

}  // namespace

std::unique_ptr<Backend> make_cpu_backend(const BackendOptions& options) {
  return std::make_unique<CpuBackend>(options);
}

}  // namespace cepe
