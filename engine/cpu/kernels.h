// CPU inner loops with one implementation per instruction set, picked at run time by cpuid so a
// single binary runs on any x86-64: scalar (reference, portable), AVX2 (+FMA, F16C), AVX-512
// (F, BW, VL), AVX-512 VNNI (int8 dot products) and AVX-512 BF16 (a bf16 GEMM). Each level
// reuses the best lower level's function where it has none of its own.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "engine/dtype.h"
#include "engine/quant.h"

namespace cepe::cpu {

/// An instruction-set level of the kernels, lowest first.
enum class KernelPath { Scalar, Avx2, Avx512, Avx512Vnni, Avx512Bf16, Amx };

/// The kernel table of one level.
struct Kernels {
  KernelPath path;   ///< the level
  const char* name;  ///< "scalar", "avx2", "avx512", "avx512vnni", "avx512bf16", "amx"
  /// Σ dequant(w) · dequant(x) over `blocks` Q8_0 blocks of a weight row and an activation row.
  float (*dot_q8_0)(const BlockQ8_0* w, const BlockQ8_0* x, int64_t blocks);
  /// Σ dequant(w) · dequant(x) over `blocks` Q4_0 weight blocks and Q8_0 activation blocks.
  float (*dot_q4_0)(const BlockQ4_0* w, const BlockQ8_0* x, int64_t blocks);
  /// Σ w_i x_i for an fp16 weight row and an F32 activation row of n elements.
  float (*dot_f16)(const uint16_t* w, const float* x, int64_t n);
  /// Σ w_i x_i for a bf16 weight row and an F32 activation row of n elements.
  float (*dot_bf16)(const uint16_t* w, const float* x, int64_t n);
  /// Quantizes n activations into ceil(n / 32) Q8_0 blocks (bit-identical on every level).
  void (*quantize_q8_0)(const float* x, BlockQ8_0* out, int64_t n);
  /// Widens n fp16 values to F32 (exact).
  void (*widen_f16)(const uint16_t* in, float* out, int64_t n);
  /// Widens n bf16 values to F32 (exact).
  void (*widen_bf16)(const uint16_t* in, float* out, int64_t n);
  /// The first n weights of Q8_0 blocks as F32 (exact: one product per weight).
  void (*dequantize_q8_0)(const BlockQ8_0* in, float* out, int64_t n);
  /// The first n weights of Q4_0 blocks as F32 (exact).
  void (*dequantize_q4_0)(const BlockQ4_0* in, float* out, int64_t n);
  /// One Q4_0x16 group (16 weight rows, `blocks` blocks each) against m activation rows: for
  /// each row i and weight row r, out[i * ldo + r] (or += with accumulate) gets
  /// Σ_b d_w d_x Σ (nibble - 8) q_x, one exact int32 sum per block. Row i's blocks are
  /// x[i * blocks ...], their scales as F32 in xd and their quant sums in xs (same indexing).
  void (*gemm_q4_0x16)(const uint8_t* group, const BlockQ8_0* x, const float* xd, const int32_t* xs,
                       int64_t m, int64_t blocks, float* out, int64_t ldo, bool accumulate);
  /// The same for one Q8_0x16 group: Σ_b d_w d_x Σ q_w q_x.
  void (*gemm_q8_0x16)(const uint8_t* group, const BlockQ8_0* x, const float* xd, const int32_t* xs,
                       int64_t m, int64_t blocks, float* out, int64_t ldo, bool accumulate);
  /// gemm_q4_0x16 over activations laid out by quantize_q8_tiles (offset 8): the same arithmetic,
  /// so the same results bit for bit; rows past m in the last tile are not written. Null below
  /// AVX-512 VNNI.
  void (*gemm_q4_0x16_tiles)(const uint8_t* group, const uint8_t* tiles, int64_t m, int64_t blocks,
                             float* out, int64_t ldo, bool accumulate);
  /// The same for one Q8_0x16 group (activations packed with offset 128).
  void (*gemm_q8_0x16_tiles)(const uint8_t* group, const uint8_t* tiles, int64_t m, int64_t blocks,
                             float* out, int64_t ldo, bool accumulate);
  /// Rounds n F32 values to fp16, to nearest even (bit-identical on every level but for NaN
  /// payloads).
  void (*narrow_f16)(const float* in, uint16_t* out, int64_t n);
  /// Σ w_i x_i for an F32 weight row and an F32 activation row of n elements.
  float (*dot_f32)(const float* w, const float* x, int64_t n);
  /// A few activation rows against F32 weight rows read in place (no packing): for i < m and
  /// j < n, out[i * ldo + j] (or += with accumulate) = Σ_t x[i * k + t] w[j * k + t]. Each
  /// output's terms are summed in the same order whatever m and n, so a row's result does not
  /// depend on the rows beside it.
  void (*gemm_f32_rows)(const float* x, int64_t m, const float* w, int64_t n, int64_t k, float* out,
                        int64_t ldo, bool accumulate);
  /// Rounds m rows of k activations to bf16 (nearest even) into the row panels gemm_bf16_pairs
  /// reads (bf16_panel_words(*this, m, k) words; panels of bf16_panel_rows rows). Null on levels
  /// without AVX-512 BF16.
  void (*pack_bf16_pairs)(const float* x, int64_t m, int64_t k, uint32_t* panels);
  /// Panels of m bf16-rounded activation rows against n bf16 weight rows (row-major, k each):
  /// out[i * ldo + j] (or += with accumulate) = Σ_t bf16(x_it) w_jt, every product exact, summed
  /// in F32 (in k order with VDPBF16PS; AMX adds 32 products at a time, in its own order).
  /// `scratch` holds bf16_block_words(*this, k) words. Null without AVX-512 BF16.
  void (*gemm_bf16_pairs)(const uint32_t* panels, int64_t m, int64_t k, const uint16_t* w,
                          int64_t n, float* out, int64_t ldo, bool accumulate, uint32_t* scratch);
  /// Copies m rows of k activations into the row panels gemm_f32_panels reads
  /// (f32_panel_floats(m, k) floats). Null below AVX-512.
  void (*pack_f32_panels)(const float* x, int64_t m, int64_t k, float* panels);
  /// Panels of m activation rows against n weight rows of `type` (F32, F16 or BF16, row-major,
  /// k each, widened exactly): out[i * ldo + j] (or += with accumulate) = Σ_t x_it w_jt, one F32
  /// FMA chain per output in t order, so a row's result does not depend on its neighbours.
  /// `scratch` holds f32_gemm_scratch_floats(k) floats. Null below AVX-512.
  void (*gemm_f32_panels)(const float* panels, int64_t m, int64_t k, const void* w, DType type,
                          int64_t n, float* out, int64_t ldo, bool accumulate, float* scratch);
  /// Lays out n keys and values of one head for attention_rows: rows `ld` elements apart, F32
  /// or F16 (widened exactly), hd values each; keys_t gets attention_keys_floats(n, hd) floats
  /// and values attention_values_floats(n, hd). Null below AVX-512.
  void (*pack_attention_kv)(const void* k, const void* v, DType type, int64_t n, int64_t ld,
                            int64_t hd, float* keys_t, float* values);
  /// Softmax attention of `rows` (at most kF32PanelRows) query rows of one head, rows ldq apart,
  /// against n keys laid out by pack_attention_kv: row r sees keys [0, visible[r]) (none: a zero
  /// row), scores scale · q·k, one F32 FMA chain per score and per output; output rows ldo
  /// apart. With `partial_stats`, a partial softmax instead: the output rows are Σ e^(s - max) v
  /// (unnormalised), partial_stats[r * ldo] gets row r's max score (-inf without keys) and
  /// partial_stats[r * ldo + 1] its Σ e^(s - max). `scratch` holds attention_scratch_floats(n,
  /// hd) floats. Null below AVX-512.
  void (*attention_rows)(const float* q, int64_t ldq, int64_t rows, int64_t hd, const float* keys_t,
                         const float* values, int64_t n, const int64_t* visible, float scale,
                         float* out, int64_t ldo, float* partial_stats, float* scratch);
  /// One query row of all heads against n cache rows (decode steps, and absorbed
  /// cross-attention's encoder-width heads; hd a multiple of 8): rows kv_stride elements apart, F32
  /// or F16 (widened exactly), head h reading kv head h / group. Per head, at part + h *
  /// part_stride: the max score (scale · q·k), Σ e^(s - max), then hd values of Σ e^(s - max) v
  /// (unnormalised). `scores` holds heads · n floats. Null below AVX2.
  void (*attend_row_block)(const float* q, const void* k, const void* v, bool f16, int64_t n,
                           int64_t kv_stride, int heads, int group, int64_t hd, float scale,
                           float* scores, float* part, int64_t part_stride);
  /// A softmax's numerators: *max_out = max_j s_j, then s_j = e^(s_j - max); returns Σ_j s_j.
  /// The vector levels' e^x is within ~2 ulp of exp (never below ~1.2e-38, never inf).
  float (*softmax_exp)(float* s, int64_t n, float* max_out);
  /// g_i = silu(g_i) u_i = g_i / (1 + e^-g_i) u_i (the gated MLP's activation).
  void (*silu_mul)(float* g, const float* u, int64_t n);
  /// Activation rows per tile of the layout the *_tiles group kernels read (quantize_q8_tiles):
  /// the VNNI kernels' register tile height (8), the AMX kernels' tile height (16).
  int64_t q8_tile_rows = 8;
  /// Bytes of activation tiles the backend hands the *_tiles kernels per call at most (a chunk
  /// of rows that stays in L2 while groups of weights meet it).
  int64_t q8_chunk_bytes = int64_t{512} << 10;
  /// Activation rows per panel of pack_bf16_pairs' layout (14 for VDPBF16PS, 32 on AMX).
  int64_t bf16_panel_rows = 14;
  /// The bf16 panels' and blocks' k-pairs are padded to a multiple of this (16 on AMX).
  int64_t bf16_pair_align = 1;
};

/// The widest head the AVX-512 attend_row_block holds in registers; wider heads (and widths
/// that are not multiples of 16) take its 8-wide form, which reads q from L1.
constexpr int64_t kAttendMaxHeadDim = 128;

/// Bytes of one block of one activation tile of `tile_rows` rows: the rows' 32 quants each, then
/// their offset terms (int32), then their scales (F32).
constexpr int64_t q8_tile_block_bytes(int64_t tile_rows) {
  return tile_rows * (32 + 4 + 4);
}
/// Bytes of quantize_q8_tiles' output for m rows of `blocks` blocks in tiles of `tile_rows`.
inline int64_t q8_tile_bytes(int64_t m, int64_t blocks, int64_t tile_rows) {
  return (m + tile_rows - 1) / tile_rows * blocks * q8_tile_block_bytes(tile_rows);
}

/// Activation rows per bf16 panel of the VDPBF16PS GEMM (the register tile's height).
constexpr int64_t kBf16PanelRows = 14;
/// Weight rows per bf16 block (the register tile's width; two AMX tiles' width).
constexpr int64_t kBf16BlockCols = 32;
/// k-pairs of a bf16 panel row or block column on level `kern`: (k + 1) / 2, rounded up to the
/// level's bf16_pair_align (AMX tiles take 16 pairs at a time; the pad is zero).
inline int64_t bf16_padded_pairs(const Kernels& kern, int64_t k) {
  const int64_t kp = (k + 1) / 2;
  return (kp + kern.bf16_pair_align - 1) / kern.bf16_pair_align * kern.bf16_pair_align;
}
/// 32-bit words of the bf16 row panels of m rows of k activations (pack_bf16_pairs' output).
inline int64_t bf16_panel_words(const Kernels& kern, int64_t m, int64_t k) {
  const int64_t rows = kern.bf16_panel_rows;
  return (m + rows - 1) / rows * rows * bf16_padded_pairs(kern, k);
}
/// 32-bit words of gemm_bf16_pairs' scratch for rows of k weights.
inline int64_t bf16_block_words(const Kernels& kern, int64_t k) {
  return kBf16BlockCols * bf16_padded_pairs(kern, k);
}
/// Activation rows per F32 panel (the register tile's height).
constexpr int64_t kF32PanelRows = 14;
/// Weight rows per F32 block (the register tile's width).
constexpr int64_t kF32BlockCols = 32;
/// Floats of the F32 row panels of m rows of k activations (pack_f32_panels' output).
inline int64_t f32_panel_floats(int64_t m, int64_t k) {
  return (m + kF32PanelRows - 1) / kF32PanelRows * kF32PanelRows * k;
}
/// Floats of gemm_f32_panels' scratch for rows of k weights (a block and one widened row).
inline int64_t f32_gemm_scratch_floats(int64_t k) {
  return (kF32BlockCols + 1) * k;
}

/// Keys rounded up to whole blocks of kF32BlockCols (pack_attention_kv's layout).
inline int64_t attention_padded_keys(int64_t n) {
  return (n + kF32BlockCols - 1) / kF32BlockCols * kF32BlockCols;
}
/// Floats of pack_attention_kv's keys for n keys of hd values.
inline int64_t attention_keys_floats(int64_t n, int64_t hd) {
  return attention_padded_keys(n) * hd;
}
/// Floats of pack_attention_kv's values for n keys of hd values.
inline int64_t attention_values_floats(int64_t n, int64_t hd) {
  return attention_padded_keys(n) * ((hd + kF32BlockCols - 1) / kF32BlockCols * kF32BlockCols);
}
/// Floats of attention_rows' scratch for n keys of hd values.
inline int64_t attention_scratch_floats(int64_t n, int64_t hd) {
  return kF32PanelRows * (hd + 2 * attention_padded_keys(n));
}

/// True when this CPU can run the level.
bool kernel_path_supported(KernelPath path);
/// The kernels of one level (throws when this CPU cannot run it).
const Kernels& kernels_for(KernelPath path);
/// Every level this CPU can run, lowest first.
std::vector<KernelPath> supported_kernel_paths();
/// Every level compiled into the binary, lowest first.
std::vector<KernelPath> all_kernel_paths();
/// The level's name ("avx2").
const char* kernel_path_name(KernelPath path);
/// The kernels the CPU backend uses: the highest supported level, or the one named by the
/// environment variable CEPE_KERNELS (scalar|avx2|avx512|avx512vnni|avx512bf16|amx; an unsupported
/// or unknown name throws), read once.
const Kernels& active_kernels();

/// Quantizes m rows of k activations for the packed kernels: Q8_0 blocks (`blocks` per row),
/// each block's scale as F32 and the sum of its quants.
void quantize_rows_q8_0(const Kernels& kern, const float* x, int64_t m, int64_t k, BlockQ8_0* xq,
                        float* xd, int32_t* xs);

/// Quantizes m rows of k activations as quantize_rows_q8_0 does (the same blocks), laid out for
/// the *_tiles group kernels: tiles of kern.q8_tile_rows rows, block-major within a tile (one tile
/// block holds the rows' quants, their −offset · Σ quants and their scales side by side, so one
/// pointer reaches all of them); rows past m in the last tile are zero. `offset` is the weights'
/// quant offset: 8 for Q4_0x16, 128 for Q8_0x16. Writes tiles [tile0, tile1) only (threads
/// split the tiles).
void quantize_q8_tiles(const Kernels& kern, const float* x, int64_t m, int64_t k, int32_t offset,
                       int64_t tile0, int64_t tile1, uint8_t* tiles);

/// Widens one row of any row-major weight dtype (F32, F16, BF16, Q8_0, Q4_0) to F32 with `k`.
void dequantize_row(const Kernels& k, const void* row, DType dtype, float* out, int64_t width);

}  // namespace cepe::cpu
