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

/// Where the CPU keeps the matrices of a WeightKind::Stored load.
enum class StoredWeights {
  /// Copied out of the file mapping while memory allows (faster decode steps), else read in place.
  Auto,
  /// All read in place through the page cache: the least memory of the process's own, and one
  /// copy that every process serving the checkpoint shares.
  Mapped,
};
/// Parses "auto|mapped"; "mapped" needs the cpu and WeightKind::Stored (a conversion or a
/// device upload makes memory of its own). The error names `where` (a flag or config field).
StoredWeights parse_stored_weights(const std::string& name, Device device, WeightKind weights,
                                   const std::string& where);

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
/// through an F32 row buffer; a file-backed source has its pages released every few MB as rows
/// are consumed, so a quantized load of a large checkpoint holds the converted copy and a few MB
/// of source pages at most. A packed target (Q8_0x16, Q4_0x16; a matrix) is quantized 16 rows
/// at a time and packed as it goes: the same bytes as pack_rows16(convert_weight(source, Q8_0 or
/// Q4_0)) without that row-major copy. Returns the source itself when it already has the target
/// dtype. `threads` split the rows in runs of whole 16-row groups: the same bytes for any count.
Tensor convert_weight(const Tensor& source, DType target, int threads = 1);

/// Rows per interleaved group of the packed block types (Q8_0x16, Q4_0x16).
constexpr int64_t kPackRows = 16;

/// Re-lays a row-major Q8_0 or Q4_0 matrix as Q8_0x16 / Q4_0x16 for the CPU kernels. Rows are
/// taken in groups of 16; group g, block b is 16 fp16 scales (row order) then the 16 rows'
/// quants interleaved four bytes at a time: 64-byte chunk c holds bytes 4c..4c+3 of each row's
/// block, row r at bytes 4r..4r+3 (Q4_0: chunks 0-3 of the 16 nibble bytes; Q8_0: chunks 0-7 of
/// the 32 quants, each stored as q + 128, an unsigned byte). So one 512-bit load is one chunk of
/// 16 rows and a 4-byte broadcast of the activations lines up with every row. Rows past the
/// last whole group stay row-major after the groups. The bytes are the same count as the source.
Tensor pack_rows16(const Tensor& source);

/// Offset, inside one packed block of 16 rows, of byte `byte` (0-3) of row `row`'s 4-byte
/// piece in chunk `chunk`: past the 16 scales, chunks of 64 bytes, rows 4 bytes apart.
constexpr int64_t packed_quant_index(int64_t chunk, int64_t row, int64_t byte) {
  return 2 * kPackRows + chunk * 4 * kPackRows + 4 * row + byte;
}

/// Row r of a packed (or row-major) block matrix in the row-major block format: `out` receives
/// dtype_row_bytes(dtype_unpacked(t.dtype()), width) bytes.
void unpack_row16(const Tensor& t, int64_t r, void* out);

/// A copy of a weight in memory of its own (Tensor::empty_long_lived), made a few MB at a time
/// with a file-backed source's pages dropped behind, so the two are never both resident;
/// `threads` copy a contiguous share each (fresh pages are cleared by the faulting core).
Tensor copy_weight(const Tensor& source, int threads = 1);

/// Drops the resident pages of a file-backed (read-only mmap) tensor from this process, those
/// wholly inside its bytes [begin, end); they are read back from the file if touched again. A
/// no-op for other tensors.
void release_file_pages(const Tensor& t, size_t begin = 0, size_t end = SIZE_MAX);

}  // namespace cepe
