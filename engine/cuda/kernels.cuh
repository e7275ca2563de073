// The CUDA backend's own kernels (cuBLAS does the large GEMMs): the embedding gather, RMSNorm,
// RoPE, SwiGLU, LayerNorm / bias / residual add / GELU (BERT encoders), the F32 -> 16-bit
// conversion feeding cuBLAS, a GEMV for few-row products against 16-bit weights (decode steps),
// attention with an online softmax, and a row softmax for attention over heads too wide for it.
// Written against simt.h, so the tests run this same code through the SIMT emulator on machines
// without a GPU. Every launcher takes raw device pointers already checked by the backend.
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <vector>

#include "engine/cuda/simt.h"

namespace cepe::cuda_kernels {
inline namespace CEPE_SIMT_ABI {

constexpr int kWarp = 32;
/// Threads per block of the elementwise and row kernels.
constexpr unsigned kThreads = 256;
/// Grid-stride kernels use at most this many blocks; more would only add scheduling work.
constexpr int64_t kMaxStrideBlocks = 8192;

/// Element type of a table or weight the kernels read.
enum class ElemType : int { F32 = 0, F16 = 1, BF16 = 2 };

CEPE_HOST_DEVICE int64_t min64(int64_t a, int64_t b) {
  return a < b ? a : b;
}
CEPE_HOST_DEVICE int64_t max64(int64_t a, int64_t b) {
  return a > b ? a : b;
}

CEPE_DEVICE float warp_sum(float v) {
  CEPE_UNROLL
  for (int m = kWarp / 2; m > 0; m >>= 1) v += simt::shfl_xor(v, m);
  return v;
}

CEPE_DEVICE float warp_max(float v) {
  CEPE_UNROLL
  for (int m = kWarp / 2; m > 0; m >>= 1) v = fmaxf(v, simt::shfl_xor(v, m));
  return v;
}

CEPE_DEVICE float widen(const void* base, int64_t i, ElemType type) {
  switch (type) {
    case ElemType::BF16:
      return simt::bf16_bits_to_float(static_cast<const uint16_t*>(base)[i]);
    case ElemType::F16:
      return simt::f16_bits_to_float(static_cast<const uint16_t*>(base)[i]);
    default:
      return static_cast<const float*>(base)[i];
  }
}

template <bool kBF16>
CEPE_DEVICE float widen16(uint16_t h) {
  return kBF16 ? simt::bf16_bits_to_float(h) : simt::f16_bits_to_float(h);
}

CEPE_DEVICE int64_t global_thread() {
  return static_cast<int64_t>(simt::block_x()) * simt::block_dim_x() + simt::thread_x();
}

CEPE_DEVICE int64_t grid_threads() {
  return static_cast<int64_t>(simt::grid_dim_x()) * simt::block_dim_x();
}

inline simt::Dim3 stride_grid(int64_t n) {
  int64_t blocks = (n + kThreads - 1) / kThreads;
  if (blocks > kMaxStrideBlocks) blocks = kMaxStrideBlocks;
  return simt::Dim3{static_cast<unsigned>(blocks), 1, 1};
}

// ---- kernels ---------------------------------------------------------------------------------

// One block per output row.
CEPE_GLOBAL void embedding_kernel(const void* table, ElemType type, const int32_t* ids,
                                  int64_t width, float* out) {
  const int64_t row = simt::block_x();
  const int64_t base = static_cast<int64_t>(ids[row]) * width;
  for (int64_t c = simt::thread_x(); c < width; c += simt::block_dim_x())
    out[row * width + c] = widen(table, base + c, type);
}

// One block per row; x and out may be the same buffer (each element is read and written by the
// same thread, the write after the block-wide reduction).
CEPE_GLOBAL void rms_norm_kernel(const float* x, const float* weight, float eps, int64_t width,
                                 float* out) {
  float* partial = simt::shared_floats();  // one sum per warp
  const int64_t row = simt::block_x();
  const float* xr = x + row * width;
  float* yr = out + row * width;
  const unsigned tid = simt::thread_x(), threads = simt::block_dim_x();
  float ss = 0.0f;
  for (int64_t c = tid; c < width; c += threads) ss += xr[c] * xr[c];
  ss = warp_sum(ss);
  if (tid % kWarp == 0) partial[tid / kWarp] = ss;
  simt::sync_block();
  // Every thread adds the few warp sums itself, which saves a second barrier.
  float total = 0.0f;
  for (unsigned w = 0; w < threads / kWarp; ++w) total += partial[w];
  const float inv = 1.0f / sqrtf(total / static_cast<float>(width) + eps);
  for (int64_t c = tid; c < width; c += threads) yr[c] = weight[c] * (xr[c] * inv);
}

// HuggingFace rotate_half: pairs (i, i + head_dim/2) of every head of every row.
CEPE_GLOBAL void rope_kernel(float* x, int64_t rows, int heads, int head_dim, const float* cos,
                             const float* sin) {
  const int half = head_dim / 2;
  const int64_t per_row = static_cast<int64_t>(heads) * half;
  const int64_t total = rows * per_row;
  for (int64_t idx = global_thread(); idx < total; idx += grid_threads()) {
    const int64_t t = idx / per_row;
    const int64_t rem = idx % per_row;
    const int64_t h = rem / half, i = rem % half;
    float* v = x + (t * heads + h) * head_dim;
    const float c = cos[t * half + i], s = sin[t * half + i];
    const float a = v[i], b = v[i + half];
    v[i] = a * c - b * s;
    v[i + half] = b * c + a * s;
  }
}

CEPE_GLOBAL void silu_mul_kernel(float* gate, const float* up, int64_t n) {
  for (int64_t i = global_thread(); i < n; i += grid_threads()) {
    const float g = gate[i];
    gate[i] = g / (1.0f + expf(-g)) * up[i];
  }
}

// LayerNorm, one block per row: a block-wide sum for the mean, then one of the squared deviations
// (two passes, like the CPU backend). x and out may be the same buffer: every thread writes only
// the elements it read, after both reductions.
CEPE_GLOBAL void layer_norm_kernel(const float* x, const float* weight, const float* bias,
                                   float eps, int64_t width, float* out) {
  float* partial = simt::shared_floats();  // [2][warps]: sums for the mean, then the variance
  const int64_t row = simt::block_x();
  const float* xr = x + row * width;
  float* yr = out + row * width;
  const unsigned tid = simt::thread_x(), threads = simt::block_dim_x();
  const unsigned warps = threads / kWarp;
  float s = 0.0f;
  for (int64_t c = tid; c < width; c += threads) s += xr[c];
  s = warp_sum(s);
  if (tid % kWarp == 0) partial[tid / kWarp] = s;
  simt::sync_block();
  float total = 0.0f;
  for (unsigned w = 0; w < warps; ++w) total += partial[w];
  const float mean = total / static_cast<float>(width);
  float ss = 0.0f;
  for (int64_t c = tid; c < width; c += threads) ss += (xr[c] - mean) * (xr[c] - mean);
  ss = warp_sum(ss);
  if (tid % kWarp == 0) partial[warps + tid / kWarp] = ss;
  simt::sync_block();
  float var = 0.0f;
  for (unsigned w = 0; w < warps; ++w) var += partial[warps + w];
  const float inv = 1.0f / sqrtf(var / static_cast<float>(width) + eps);
  for (int64_t c = tid; c < width; c += threads) yr[c] = (xr[c] - mean) * inv * weight[c] + bias[c];
}

// x[i] += bias[i % width] over rows * width elements.
CEPE_GLOBAL void add_bias_kernel(float* x, const float* bias, int64_t width, int64_t n) {
  for (int64_t i = global_thread(); i < n; i += grid_threads()) x[i] += bias[i % width];
}

CEPE_GLOBAL void add_kernel(float* x, const float* y, int64_t n) {
  for (int64_t i = global_thread(); i < n; i += grid_threads()) x[i] += y[i];
}

// Exact (erf) GELU in place.
CEPE_GLOBAL void gelu_kernel(float* x, int64_t n) {
  for (int64_t i = global_thread(); i < n; i += grid_threads()) {
    const float v = x[i];
    x[i] = 0.5f * v * (1.0f + erff(v * 0.70710678118654752f));
  }
}

// F32 activations rounded to the weight's 16-bit type, the operand cuBLAS multiplies.
CEPE_GLOBAL void to_16bit_kernel(const float* x, uint16_t* out, int64_t n, int bf16) {
  for (int64_t i = global_thread(); i < n; i += grid_threads())
    out[i] = bf16 ? simt::float_to_bf16_bits(x[i]) : simt::float_to_f16_bits(x[i]);
}

/// Most activation rows for which linear() uses gemv16_kernel instead of cuBLAS.
constexpr int kGemvMaxRows = 8;

// out[M, n] (+)= x[M, k] · w[n, k]ᵀ for M <= kGemvMaxRows: one warp per output column reads its
// weight row once (16 bytes per lane per step) and dots it with every activation row, so decode
// steps stream each weight once at near full bandwidth while the activations stay in F32.
template <int M, bool kBF16>
CEPE_GLOBAL void gemv16_kernel(const float* x, const uint16_t* w, float* out, int64_t n, int64_t k,
                               int accumulate, int vectorized) {
  const int lane = static_cast<int>(simt::thread_x() % kWarp);
  const int64_t col = static_cast<int64_t>(simt::block_x()) * (simt::block_dim_x() / kWarp) +
                      simt::thread_x() / kWarp;
  if (col >= n) return;  // whole warps only: no block barrier below
  const uint16_t* wr = w + col * k;
  float acc[M];
  CEPE_UNROLL
  for (int m = 0; m < M; ++m) acc[m] = 0.0f;
  if (vectorized) {
    CEPE_UNROLL4
    for (int64_t c = static_cast<int64_t>(lane) * 8; c < k; c += kWarp * 8) {
      const simt::U32x4 packed = simt::load_u32x4(wr + c);
      const uint32_t words[4] = {packed.x, packed.y, packed.z, packed.w};
      float wv[8];
      CEPE_UNROLL
      for (int i = 0; i < 4; ++i) {
        wv[2 * i] = widen16<kBF16>(static_cast<uint16_t>(words[i] & 0xffffu));
        wv[2 * i + 1] = widen16<kBF16>(static_cast<uint16_t>(words[i] >> 16));
      }
      CEPE_UNROLL
      for (int m = 0; m < M; ++m) {
        const simt::F32x4 a = simt::load_f32x4(x + m * k + c);
        const simt::F32x4 b = simt::load_f32x4(x + m * k + c + 4);
        acc[m] += wv[0] * a.x + wv[1] * a.y + wv[2] * a.z + wv[3] * a.w + wv[4] * b.x +
                  wv[5] * b.y + wv[6] * b.z + wv[7] * b.w;
      }
    }
  } else {
    for (int64_t c = lane; c < k; c += kWarp) {
      const float wv = widen16<kBF16>(wr[c]);
      CEPE_UNROLL
      for (int m = 0; m < M; ++m) acc[m] += wv * x[m * k + c];
    }
  }
  CEPE_UNROLL
  for (int m = 0; m < M; ++m) acc[m] = warp_sum(acc[m]);
  CEPE_UNROLL
  for (int m = 0; m < M; ++m) {
    if (lane == m) {
      float* o = out + m * n + col;
      *o = accumulate ? *o + acc[m] : acc[m];
    }
  }
}

// In-place softmax of every row of s [rows, ld] over its first n entries, F32; one block per
// row. Used by the wide-head attention path (scores from a GEMM, then the second GEMM).
CEPE_GLOBAL void softmax_rows_kernel(float* s, int64_t n, int64_t ld) {
  float* partial = simt::shared_floats();  // one value per warp
  float* row = s + static_cast<int64_t>(simt::block_x()) * ld;
  const unsigned tid = simt::thread_x(), threads = simt::block_dim_x(), warps = threads / kWarp;
  float mx = -INFINITY;
  for (int64_t c = tid; c < n; c += threads) mx = fmaxf(mx, row[c]);
  mx = warp_max(mx);
  if (tid % kWarp == 0) partial[tid / kWarp] = mx;
  simt::sync_block();
  float row_max = -INFINITY;
  for (unsigned w = 0; w < warps; ++w) row_max = fmaxf(row_max, partial[w]);
  simt::sync_block();  // every thread has read the maxima before they are overwritten
  float sum = 0.0f;
  for (int64_t c = tid; c < n; c += threads) {
    const float e = expf(row[c] - row_max);
    row[c] = e;
    sum += e;
  }
  sum = warp_sum(sum);
  if (tid % kWarp == 0) partial[tid / kWarp] = sum;
  simt::sync_block();
  float total = 0.0f;
  for (unsigned w = 0; w < warps; ++w) total += partial[w];
  const float inv = 1.0f / total;
  for (int64_t c = tid; c < n; c += threads) row[c] *= inv;
}

// ---- attention ---------------------------------------------------------------------------------

/// One attention problem of a packed call: the device-side copy of an AttentionSegment.
struct AttnSegment {
  const float* k = nullptr;   ///< keys [k_len, kv_stride]
  const float* v = nullptr;   ///< values, same layout
  int64_t q_begin = 0;        ///< first query row in the packed queries
  int64_t q_len = 0;          ///< query rows
  int64_t k_len = 0;          ///< key rows
  int64_t causal_offset = 0;  ///< keys before the first query (causal only)
  int32_t causal = 0;         ///< 1: query i sees keys j <= causal_offset + i
  int32_t reserved = 0;       ///< padding
};

/// Up to kAttnRows query rows of one segment: what one block (per head, per split) works on.
struct AttnItem {
  int32_t segment = 0;   ///< index into the segment array
  int32_t row0 = 0;      ///< first row, relative to the segment's q_begin
  int32_t rows = 0;      ///< number of rows
  int32_t reserved = 0;  ///< padding
};

/// What all segments of one call share.
struct AttnParams {
  const float* q = nullptr;  ///< packed queries [q_rows, q_stride]
  float* out = nullptr;      ///< output, same layout; rows outside every segment are untouched
  int64_t q_stride = 0;      ///< heads * head_dim
  int64_t kv_stride = 0;     ///< kv_heads * head_dim
  int64_t q_rows = 0;        ///< rows of q (sizes the split scratch)
  int heads = 0;             ///< query heads
  int kv_heads = 0;          ///< key/value heads
  int head_dim = 0;          ///< per-head width (<= kAttnMaxHeadDim)
  float scale = 1.0f;        ///< multiplies q·k
  int splits = 1;            ///< key ranges per block row (> 1: partials + combine)
  float* part_o = nullptr;   ///< [splits, q_rows, heads, head_dim] unnormalised outputs
  float* part_ml = nullptr;  ///< [splits, q_rows, heads, 2] running max and sum
};

constexpr int kAttnWarps = 4;
constexpr int kAttnRowsPerWarp = 4;
/// Query rows per block.
constexpr int kAttnRows = kAttnWarps * kAttnRowsPerWarp;
/// Keys per shared-memory tile: one per lane when scoring.
constexpr int kAttnKeys = kWarp;
/// Widest head the kernel supports (4 output dims per lane).
constexpr int kAttnMaxHeadDim = 128;
constexpr int kAttnDimsPerLane = kAttnMaxHeadDim / kWarp;
/// Fewest keys worth a split of their own.
constexpr int64_t kAttnMinKeysPerSplit = 4 * kAttnKeys;

/// Dynamic shared memory of attention_kernel for a head width.
inline size_t attention_shared_bytes(int head_dim) {
  const size_t hd = static_cast<size_t>(head_dim);
  return sizeof(float) * (kAttnKeys * (hd + 1) + kAttnKeys * hd + kAttnRows * hd +
                          static_cast<size_t>(kAttnRows) * kAttnKeys);
}

// Online-softmax attention (flash style) in F32. Block = (item, head, split); each warp owns up
// to kAttnRowsPerWarp query rows with their running max, sum and output in registers; key/value
// tiles are staged in shared memory and shared by all rows of the block. Scores: lane j scores
// key j of the tile; outputs: lane owns dims lane + 32c. No score buffer, so any key length works.
CEPE_GLOBAL void attention_kernel(AttnParams p, const AttnSegment* segments,
                                  const AttnItem* items) {
  const AttnItem item = items[simt::block_x()];
  const AttnSegment seg = segments[item.segment];
  const int head = static_cast<int>(simt::block_y());
  const int split = static_cast<int>(simt::block_z());
  const int hd = p.head_dim;
  const int kv_head = head / (p.heads / p.kv_heads);
  const int tid = static_cast<int>(simt::thread_x());
  const int threads = static_cast<int>(simt::block_dim_x());
  const int warp = tid / kWarp, lane = tid % kWarp;

  float* ks = simt::shared_floats();  // [kAttnKeys][hd + 1]: the pad spreads a column over banks
  float* vs = ks + kAttnKeys * (hd + 1);  // [kAttnKeys][hd]
  float* qs = vs + kAttnKeys * hd;        // [kAttnRows][hd]
  float* ps = qs + kAttnRows * hd;        // [kAttnRows][kAttnKeys] probabilities of the tile

  // Keys any row of this block can see, cut into p.splits ranges of whole tiles.
  int64_t visible = seg.k_len;
  if (seg.causal) visible = min64(visible, seg.causal_offset + item.row0 + item.rows);
  visible = max64(visible, 0);
  const int64_t tiles = (visible + kAttnKeys - 1) / kAttnKeys;
  const int64_t tiles_per_split = (tiles + p.splits - 1) / p.splits;
  const int64_t k_begin = min64(visible, split * tiles_per_split * kAttnKeys);
  const int64_t k_end = min64(visible, (split + 1) * tiles_per_split * kAttnKeys);

  for (int i = tid; i < item.rows * hd; i += threads) {
    const int r = i / hd, d = i % hd;
    qs[i] = p.q[(seg.q_begin + item.row0 + r) * p.q_stride + static_cast<int64_t>(head) * hd + d];
  }

  float m[kAttnRowsPerWarp], l[kAttnRowsPerWarp], o[kAttnRowsPerWarp][kAttnDimsPerLane];
  CEPE_UNROLL
  for (int r = 0; r < kAttnRowsPerWarp; ++r) {
    m[r] = -INFINITY;
    l[r] = 0.0f;
    CEPE_UNROLL
    for (int c = 0; c < kAttnDimsPerLane; ++c) o[r][c] = 0.0f;
  }

  for (int64_t kt = k_begin; kt < k_end; kt += kAttnKeys) {
    const int n = static_cast<int>(min64(kAttnKeys, k_end - kt));
    simt::sync_block();  // the previous tile is consumed (the first time: qs is complete)
    for (int i = tid; i < n * hd; i += threads) {
      const int j = i / hd, d = i % hd;
      const int64_t src = (kt + j) * p.kv_stride + static_cast<int64_t>(kv_head) * hd + d;
      ks[j * (hd + 1) + d] = seg.k[src];
      vs[j * hd + d] = seg.v[src];
    }
    simt::sync_block();
    CEPE_UNROLL
    for (int r = 0; r < kAttnRowsPerWarp; ++r) {
      const int row = warp * kAttnRowsPerWarp + r;
      if (row >= item.rows) continue;  // the same for the whole warp
      const int64_t i = item.row0 + row;
      const int64_t limit = seg.causal ? min64(k_end, seg.causal_offset + i + 1) : k_end;
      float s = -INFINITY;
      if (lane < n && kt + lane < limit) {
        const float* qr = qs + row * hd;
        const float* kr = ks + lane * (hd + 1);
        float dot = 0.0f;
        for (int d = 0; d < hd; ++d) dot += qr[d] * kr[d];
        s = dot * p.scale;
      }
      const float m_new = fmaxf(m[r], warp_max(s));
      if (m_new == -INFINITY) continue;  // nothing visible to this row yet (warp-uniform)
      const float correction = expf(m[r] - m_new);
      const float prob = s == -INFINITY ? 0.0f : expf(s - m_new);
      l[r] = l[r] * correction + warp_sum(prob);
      float* pr = ps + row * kAttnKeys;
      pr[lane] = prob;
      simt::sync_warp();
      CEPE_UNROLL
      for (int c = 0; c < kAttnDimsPerLane; ++c) {
        const int d = lane + c * kWarp;
        if (d < hd) {
          float acc = o[r][c] * correction;
          for (int j = 0; j < n; ++j) acc += pr[j] * vs[j * hd + d];
          o[r][c] = acc;
        }
      }
      m[r] = m_new;
    }
  }

  CEPE_UNROLL
  for (int r = 0; r < kAttnRowsPerWarp; ++r) {
    const int row = warp * kAttnRowsPerWarp + r;
    if (row >= item.rows) continue;
    const int64_t out_row = seg.q_begin + item.row0 + row;
    if (p.splits == 1) {
      float* dst = p.out + out_row * p.q_stride + static_cast<int64_t>(head) * hd;
      CEPE_UNROLL
      for (int c = 0; c < kAttnDimsPerLane; ++c) {
        const int d = lane + c * kWarp;
        if (d < hd) dst[d] = l[r] > 0.0f ? o[r][c] / l[r] : 0.0f;  // fully masked rows: zeros
      }
    } else {
      const int64_t slot = (static_cast<int64_t>(split) * p.q_rows + out_row) * p.heads + head;
      CEPE_UNROLL
      for (int c = 0; c < kAttnDimsPerLane; ++c) {
        const int d = lane + c * kWarp;
        if (d < hd) p.part_o[slot * hd + d] = o[r][c];
      }
      if (lane == 0) {
        p.part_ml[slot * 2] = m[r];
        p.part_ml[slot * 2 + 1] = l[r];
      }
    }
  }
}

// Merges the per-split partials of attention_kernel: rescales each split's sum and output to the
// common maximum. Block = (item, head), like the main kernel without the split.
CEPE_GLOBAL void attention_combine_kernel(AttnParams p, const AttnSegment* segments,
                                          const AttnItem* items) {
  const AttnItem item = items[simt::block_x()];
  const AttnSegment seg = segments[item.segment];
  const int head = static_cast<int>(simt::block_y());
  const int hd = p.head_dim;
  for (int i = static_cast<int>(simt::thread_x()); i < item.rows * hd;
       i += static_cast<int>(simt::block_dim_x())) {
    const int r = i / hd, d = i % hd;
    const int64_t out_row = seg.q_begin + item.row0 + r;
    float m_max = -INFINITY;
    for (int s = 0; s < p.splits; ++s) {
      const int64_t slot = (static_cast<int64_t>(s) * p.q_rows + out_row) * p.heads + head;
      m_max = fmaxf(m_max, p.part_ml[slot * 2]);
    }
    float num = 0.0f, den = 0.0f;
    if (m_max != -INFINITY) {
      for (int s = 0; s < p.splits; ++s) {
        const int64_t slot = (static_cast<int64_t>(s) * p.q_rows + out_row) * p.heads + head;
        const float ls = p.part_ml[slot * 2 + 1];
        if (ls > 0.0f) {
          const float w = expf(p.part_ml[slot * 2] - m_max);
          num += w * p.part_o[slot * hd + d];
          den += w * ls;
        }
      }
    }
    p.out[out_row * p.q_stride + static_cast<int64_t>(head) * hd + d] =
        den > 0.0f ? num / den : 0.0f;
  }
}

/// How one attention call is cut into blocks.
struct AttnPlan {
  std::vector<AttnItem> items;  ///< row tiles of every segment (grid.x)
  int splits = 1;               ///< key ranges per tile (grid.z)
};

/// Cuts the segments into row tiles and, when there are too few blocks to fill the GPU (decode
/// steps: one row per sequence against long caches), splits the keys too. `forced_splits` > 0
/// overrides the choice (tests).
inline AttnPlan plan_attention(const std::vector<AttnSegment>& segments, int heads,
                               int multiprocessors, int forced_splits = 0) {
  AttnPlan plan;
  int64_t longest = 0;
  for (size_t s = 0; s < segments.size(); ++s) {
    const AttnSegment& seg = segments[s];
    for (int64_t r = 0; r < seg.q_len; r += kAttnRows) {
      AttnItem item;
      item.segment = static_cast<int32_t>(s);
      item.row0 = static_cast<int32_t>(r);
      item.rows = static_cast<int32_t>(min64(kAttnRows, seg.q_len - r));
      plan.items.push_back(item);
    }
    if (seg.q_len > 0) longest = max64(longest, seg.k_len);
  }
  if (forced_splits > 0) {
    plan.splits = forced_splits;
    return plan;
  }
  const int64_t blocks = static_cast<int64_t>(plan.items.size()) * heads;
  const int64_t wanted = 4 * static_cast<int64_t>(multiprocessors);
  if (blocks > 0 && blocks < wanted) {
    const int64_t by_occupancy = (wanted + blocks - 1) / blocks;
    const int64_t by_length = longest / kAttnMinKeysPerSplit;
    plan.splits = static_cast<int>(max64(1, min64(64, min64(by_occupancy, by_length))));
  }
  return plan;
}

// ---- launchers ---------------------------------------------------------------------------------

/// out[i] = table[ids[i]] widened to F32 (ids on the device, already range-checked).
inline void launch_embedding(const void* table, ElemType type, const int32_t* ids, int64_t rows,
                             int64_t width, float* out, simt::Stream stream) {
  if (rows == 0 || width == 0) return;
  const simt::Dim3 grid{static_cast<unsigned>(rows), 1, 1}, block{128, 1, 1};
  CEPE_LAUNCH(embedding_kernel, grid, block, 0, stream, table, type, ids, width, out);
}

/// RMSNorm of `rows` rows of `width`.
inline void launch_rms_norm(const float* x, const float* weight, float eps, int64_t rows,
                            int64_t width, float* out, simt::Stream stream) {
  if (rows == 0 || width == 0) return;
  const simt::Dim3 grid{static_cast<unsigned>(rows), 1, 1}, block{kThreads, 1, 1};
  CEPE_LAUNCH(rms_norm_kernel, grid, block, sizeof(float) * (kThreads / kWarp), stream, x, weight,
              eps, width, out);
}

/// In-place RoPE of x [rows, heads * head_dim] with cos/sin [rows, head_dim / 2].
inline void launch_rope(float* x, int64_t rows, int heads, int head_dim, const float* cos,
                        const float* sin, simt::Stream stream) {
  const int64_t total = rows * heads * (head_dim / 2);
  if (total == 0) return;
  const simt::Dim3 block{kThreads, 1, 1};
  CEPE_LAUNCH(rope_kernel, stride_grid(total), block, 0, stream, x, rows, heads, head_dim, cos,
              sin);
}

/// gate = silu(gate) * up over n elements.
inline void launch_silu_mul(float* gate, const float* up, int64_t n, simt::Stream stream) {
  if (n == 0) return;
  const simt::Dim3 block{kThreads, 1, 1};
  CEPE_LAUNCH(silu_mul_kernel, stride_grid(n), block, 0, stream, gate, up, n);
}

/// LayerNorm (weight and bias) of `rows` rows of `width`; out may be x.
inline void launch_layer_norm(const float* x, const float* weight, const float* bias, float eps,
                              int64_t rows, int64_t width, float* out, simt::Stream stream) {
  if (rows == 0 || width == 0) return;
  const simt::Dim3 grid{static_cast<unsigned>(rows), 1, 1}, block{kThreads, 1, 1};
  CEPE_LAUNCH(layer_norm_kernel, grid, block, sizeof(float) * 2 * (kThreads / kWarp), stream, x,
              weight, bias, eps, width, out);
}

/// x[r, :] += bias for `rows` rows of `width`.
inline void launch_add_bias(float* x, const float* bias, int64_t rows, int64_t width,
                            simt::Stream stream) {
  const int64_t n = rows * width;
  if (n == 0) return;
  const simt::Dim3 block{kThreads, 1, 1};
  CEPE_LAUNCH(add_bias_kernel, stride_grid(n), block, 0, stream, x, bias, width, n);
}

/// x += y over n elements.
inline void launch_add(float* x, const float* y, int64_t n, simt::Stream stream) {
  if (n == 0) return;
  const simt::Dim3 block{kThreads, 1, 1};
  CEPE_LAUNCH(add_kernel, stride_grid(n), block, 0, stream, x, y, n);
}

/// Exact GELU of n elements in place.
inline void launch_gelu(float* x, int64_t n, simt::Stream stream) {
  if (n == 0) return;
  const simt::Dim3 block{kThreads, 1, 1};
  CEPE_LAUNCH(gelu_kernel, stride_grid(n), block, 0, stream, x, n);
}

/// Rounds n floats to bfloat16 (bf16) or IEEE half.
inline void launch_to_16bit(const float* x, uint16_t* out, int64_t n, bool bf16,
                            simt::Stream stream) {
  if (n == 0) return;
  const simt::Dim3 block{kThreads, 1, 1};
  CEPE_LAUNCH(to_16bit_kernel, stride_grid(n), block, 0, stream, x, out, n, bf16 ? 1 : 0);
}

template <int M, bool kBF16>
void launch_gemv16_rows(const float* x, const uint16_t* w, float* out, int64_t n, int64_t k,
                        bool accumulate, bool vectorized, simt::Stream stream) {
  constexpr unsigned kWarpsPerBlock = kThreads / kWarp;
  const simt::Dim3 grid{static_cast<unsigned>((n + kWarpsPerBlock - 1) / kWarpsPerBlock), 1, 1};
  const simt::Dim3 block{kThreads, 1, 1};
  auto kernel = gemv16_kernel<M, kBF16>;
  CEPE_LAUNCH(kernel, grid, block, 0, stream, x, w, out, n, k, accumulate ? 1 : 0,
              vectorized ? 1 : 0);
}

template <bool kBF16>
void launch_gemv16_typed(const float* x, const uint16_t* w, float* out, int64_t m, int64_t n,
                         int64_t k, bool accumulate, bool vectorized, simt::Stream stream) {
  switch (m) {
    case 1:
      return launch_gemv16_rows<1, kBF16>(x, w, out, n, k, accumulate, vectorized, stream);
    case 2:
      return launch_gemv16_rows<2, kBF16>(x, w, out, n, k, accumulate, vectorized, stream);
    case 3:
      return launch_gemv16_rows<3, kBF16>(x, w, out, n, k, accumulate, vectorized, stream);
    case 4:
      return launch_gemv16_rows<4, kBF16>(x, w, out, n, k, accumulate, vectorized, stream);
    case 5:
      return launch_gemv16_rows<5, kBF16>(x, w, out, n, k, accumulate, vectorized, stream);
    case 6:
      return launch_gemv16_rows<6, kBF16>(x, w, out, n, k, accumulate, vectorized, stream);
    case 7:
      return launch_gemv16_rows<7, kBF16>(x, w, out, n, k, accumulate, vectorized, stream);
    default:
      return launch_gemv16_rows<8, kBF16>(x, w, out, n, k, accumulate, vectorized, stream);
  }
}

/// out[m, n] (+)= x[m, k] · w[n, k]ᵀ for 1 <= m <= kGemvMaxRows and a 16-bit weight.
inline void launch_gemv16(const float* x, const uint16_t* w, bool bf16, float* out, int64_t m,
                          int64_t n, int64_t k, bool accumulate, simt::Stream stream) {
  if (m == 0 || n == 0) return;
  // 16-byte loads need 8-element rows and 16-byte aligned bases.
  const bool vectorized = k % 8 == 0 && reinterpret_cast<uintptr_t>(x) % 16 == 0 &&
                          reinterpret_cast<uintptr_t>(w) % 16 == 0;
  if (bf16)
    launch_gemv16_typed<true>(x, w, out, m, n, k, accumulate, vectorized, stream);
  else
    launch_gemv16_typed<false>(x, w, out, m, n, k, accumulate, vectorized, stream);
}

/// Softmax of each of `rows` rows of s (row stride ld) over its first n entries, in place.
inline void launch_softmax_rows(float* s, int64_t rows, int64_t n, int64_t ld,
                                simt::Stream stream) {
  if (rows == 0 || n == 0) return;
  const simt::Dim3 grid{static_cast<unsigned>(rows), 1, 1};
  const simt::Dim3 block{kThreads, 1, 1};
  CEPE_LAUNCH(softmax_rows_kernel, grid, block, sizeof(float) * (kThreads / kWarp), stream, s, n,
              ld);
}

/// Runs attention for `n_items` tiles (device arrays `segments`, `items`); with p.splits > 1 the
/// partial buffers in p must be allocated.
inline void launch_attention(const AttnParams& p, const AttnSegment* segments,
                             const AttnItem* items, int64_t n_items, simt::Stream stream) {
  if (n_items == 0) return;
  const simt::Dim3 grid{static_cast<unsigned>(n_items), static_cast<unsigned>(p.heads),
                        static_cast<unsigned>(p.splits)};
  const simt::Dim3 block{kAttnWarps * kWarp, 1, 1};
  CEPE_LAUNCH(attention_kernel, grid, block, attention_shared_bytes(p.head_dim), stream, p,
              segments, items);
  if (p.splits > 1) {
    const simt::Dim3 combine_grid{static_cast<unsigned>(n_items), static_cast<unsigned>(p.heads),
                                  1};
    CEPE_LAUNCH(attention_combine_kernel, combine_grid, block, 0, stream, p, segments, items);
  }
}

}  // namespace CEPE_SIMT_ABI
}  // namespace cepe::cuda_kernels
