// Weight formats chosen at load time (--weights): the block-quantized types Q8_0 and Q4_0 with
// GGUF's meaning, their scalar reference quantizers, and the load-time conversion of one
// checkpoint tensor, streamed row by row so no full F32 copy of a matrix is ever made.
#pragma once

#include <cstdint>
#include <string>

#include "engine/tensor.h"

namespace cepe {

/// GGUF Q8_0: 32 weights w_i = d * qs[i], d an fp16 scale, qs in [-127, 127].
struct BlockQ8_0 {
  uint16_t d;     ///< fp16 scale (max |w| / 127)
  int8_t qs[32];  ///< quantized weights
};
static_assert(sizeof(BlockQ8_0) == 34, "Q8_0 blocks are 34 bytes, as in GGUF");

/// GGUF Q4_0: 32 weights w_i = d * (nibble_i - 8); byte j holds weight j in its low nibble and
/// weight j + 16 in its high nibble.
struct BlockQ4_0 {
  uint16_t d;      ///< fp16 scale (the weight of largest magnitude / -8)
  uint8_t qs[16];  ///< packed nibbles
};
static_assert(sizeof(BlockQ4_0) == 18, "Q4_0 blocks are 18 bytes, as in GGUF");

/// What --weights asks the loader to do with every matrix (linears and embedding tables).
enum class WeightKind { Stored, F32, BF16, F16, Q8_0, Q4_0 };

/// Parses "stored|f32|bf16|f16|q8_0|q4_0"; the error names `where` (a flag or config field).
WeightKind parse_weight_kind(const std::string& name, const std::string& where);
/// The flag spelling of a kind ("q4_0").
const char* weight_kind_name(WeightKind kind);
/// The dtype a kind converts a matrix stored as `stored` to.
DType weight_kind_dtype(WeightKind kind, DType stored);

/// Scalar reference: quantizes n floats into ceil(n / 32) Q8_0 blocks, the last one padded with
/// zeros. q = nearbyint(x / d) (round half to even, as the vector paths do).
void quantize_row_q8_0_ref(const float* x, BlockQ8_0* out, int64_t n);
/// Scalar reference: quantizes n floats into ceil(n / 32) Q4_0 blocks (GGUF's rounding).
void quantize_row_q4_0_ref(const float* x, BlockQ4_0* out, int64_t n);
/// Scalar reference: the first n weights of Q8_0 blocks, as floats.
void dequantize_row_q8_0_ref(const BlockQ8_0* in, float* out, int64_t n);
/// Scalar reference: the first n weights of Q4_0 blocks, as floats.
void dequantize_row_q4_0_ref(const BlockQ4_0* in, float* out, int64_t n);

/// Widens one row of `width` elements of any weight dtype (F32, F16, BF16, Q8_0, Q4_0) to F32
/// with the scalar reference code (the CPU backend has vectorised versions).
void dequantize_row_ref(const void* row, DType dtype, float* out, int64_t width);

/// Converts a CPU matrix (rank >= 1, rows of the last dimension) to `target`, one row at a time
/// through an F32 row buffer; a file-backed source has its pages released afterwards, so a
/// quantized load of a large checkpoint holds the quantized copy and one tensor's source pages
/// at most. Returns the source itself when it already has the target dtype.
Tensor convert_weight(const Tensor& source, DType target);

/// Drops the resident pages of a file-backed (read-only mmap) tensor from this process; they are
/// read back from the file if touched again. A no-op for other tensors.
void release_file_pages(const Tensor& t);

}  // namespace cepe
