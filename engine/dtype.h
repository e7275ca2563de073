// Element types of weights and activations, and the scalar conversions between them.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>

namespace cepe {

/// Element type of a tensor. Q8_0 and Q4_0 are block formats with GGUF's meaning (32 weights
/// per block sharing one fp16 scale; see engine/quant.h); they exist only in memory, for weight
/// matrices whose rows are padded with zeros to a whole number of blocks. Q8_0x16 and Q4_0x16
/// hold the same blocks with the rows interleaved in groups of 16 (the CPU kernels' layout, see
/// pack_rows16 in engine/quant.h): same bytes per matrix, but a row is not contiguous.
enum class DType { F32, F16, BF16, I32, Q8_0, Q4_0, Q8_0x16, Q4_0x16 };

/// True for the row-interleaved block types (Q8_0x16, Q4_0x16).
inline bool dtype_is_packed(DType t) {
  return t == DType::Q8_0x16 || t == DType::Q4_0x16;
}

/// The row-major block type of a packed one (Q8_0x16 -> Q8_0); other types unchanged.
inline DType dtype_unpacked(DType t) {
  return t == DType::Q8_0x16 ? DType::Q8_0 : t == DType::Q4_0x16 ? DType::Q4_0 : t;
}

/// True for the block-quantized types (Q8_0, Q4_0 and their packed layouts).
inline bool dtype_is_block(DType t) {
  return t == DType::Q8_0 || t == DType::Q4_0 || dtype_is_packed(t);
}

/// Size in bytes of one element; 0 for block types (use dtype_row_bytes).
inline size_t dtype_size(DType t) {
  if (dtype_is_block(t)) return 0;
  return t == DType::F16 || t == DType::BF16 ? 2 : 4;
}

/// Elements per block of a block type (32), 1 for the others.
inline int64_t dtype_block_elems(DType t) {
  return dtype_is_block(t) ? 32 : 1;
}

/// Bytes of one block: Q8_0 = fp16 scale + 32 int8 (34), Q4_0 = fp16 scale + 16 bytes of nibbles
/// (18); for the other types the element size.
inline size_t dtype_block_bytes(DType t) {
  if (t == DType::Q8_0 || t == DType::Q8_0x16) return 34;
  if (t == DType::Q4_0 || t == DType::Q4_0x16) return 18;
  return dtype_size(t);
}

/// Bytes of one row of `width` elements (block types round the row up to whole blocks; for the
/// packed types the average share of a row, since its blocks are spread through its group).
inline size_t dtype_row_bytes(DType t, int64_t width) {
  const int64_t per = dtype_block_elems(t);
  return static_cast<size_t>((width + per - 1) / per) * dtype_block_bytes(t);
}

/// Name as safetensors spells it ("F32", "F16", "BF16", "I32"; "Q8_0", "Q4_0" for the block types).
const char* dtype_name(DType t);

/// Parses a safetensors dtype name; returns false for an unsupported one (block types are never
/// read from files).
bool parse_dtype(const std::string& name, DType* out);

/// Widens a bfloat16 bit pattern to float.
inline float bf16_to_f32(uint16_t h) {
  uint32_t bits = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

/// Rounds a float to bfloat16 (round to nearest even, NaN kept quiet), as torch does.
inline uint16_t f32_to_bf16(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, 4);
  if ((bits & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((bits >> 16) | 0x40);
  bits += 0x7fffu + ((bits >> 16) & 1u);
  return static_cast<uint16_t>(bits >> 16);
}

/// Widens an IEEE half bit pattern to float.
float f16_to_f32(uint16_t h);

/// Rounds a float to IEEE half (round to nearest even).
uint16_t f32_to_f16(float f);

/// Converts n elements of type `src_type` to float.
void convert_to_f32(const void* src, DType src_type, float* dst, size_t n);

/// Converts n floats to `dst_type`.
void convert_from_f32(const float* src, void* dst, DType dst_type, size_t n);

}  // namespace cepe
