// Element types of weights and activations, and the scalar conversions between them.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>

namespace cepe {

/// Element type of a tensor.
enum class DType { F32, F16, BF16, I32 };

/// Size in bytes of one element.
inline size_t dtype_size(DType t) {
  return t == DType::F16 || t == DType::BF16 ? 2 : 4;
}

/// Name as safetensors spells it ("F32", "F16", "BF16", "I32").
const char* dtype_name(DType t);

/// Parses a safetensors dtype name; returns false for an unsupported one.
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
