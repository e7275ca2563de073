#include "engine/dtype.h"

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "common/error.h"
#include "common/system.h"

namespace cepe {

const char* dtype_name(DType t) {
  switch (t) {
    case DType::F32:
      return "F32";
    case DType::F16:
      return "F16";
    case DType::BF16:
      return "BF16";
    case DType::I32:
      return "I32";
    case DType::Q8_0:
      return "Q8_0";
    case DType::Q4_0:
      return "Q4_0";
    case DType::Q8_0x16:
      return "Q8_0x16";
    case DType::Q4_0x16:
      return "Q4_0x16";
  }
  return "?";
}

bool parse_dtype(const std::string& name, DType* out) {
  if (name == "F32")
    *out = DType::F32;
  else if (name == "F16")
    *out = DType::F16;
  else if (name == "BF16")
    *out = DType::BF16;
  else if (name == "I32")
    *out = DType::I32;
  else
    return false;
  return true;
}

float f16_to_f32(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  uint32_t exp = (h >> 10) & 0x1fu;
  uint32_t mant = h & 0x3ffu;
  uint32_t bits;
  if (exp == 0) {
    if (mant == 0) {
      bits = sign;
    } else {  // subnormal: renormalise
      exp = 127 - 15 + 1;
      while ((mant & 0x400u) == 0) {
        mant <<= 1;
        --exp;
      }
      mant &= 0x3ffu;
      bits = sign | (exp << 23) | (mant << 13);
    }
  } else if (exp == 0x1f) {
    bits = sign | 0x7f800000u | (mant << 13);
  } else {
    bits = sign | ((exp + 127 - 15) << 23) | (mant << 13);
  }
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

uint16_t f32_to_f16(float f) {
  uint32_t x;
  std::memcpy(&x, &f, 4);
  const uint32_t sign = (x >> 16) & 0x8000u;
  const uint32_t abs = x & 0x7fffffffu;
  if (abs > 0x7f800000u) return static_cast<uint16_t>(sign | 0x7e00u);   // NaN
  if (abs >= 0x477ff000u) return static_cast<uint16_t>(sign | 0x7c00u);  // overflow to inf
  if (abs < 0x38800000u) {  // subnormal or zero in half
    if (abs < 0x33000000u) return static_cast<uint16_t>(sign);
    const uint32_t e = abs >> 23;
    uint32_t mant = (abs & 0x7fffffu) | 0x800000u;
    const uint32_t shift = 126 - e;  // 14 + (113 - e)
    uint32_t half = mant >> (shift);
    const uint32_t rem = mant & ((1u << shift) - 1);
    const uint32_t halfway = 1u << (shift - 1);
    if (rem > halfway || (rem == halfway && (half & 1u))) ++half;
    return static_cast<uint16_t>(sign | half);
  }
  uint32_t h = ((abs - 0x38000000u) >> 13);
  const uint32_t rem = abs & 0x1fffu;
  if (rem > 0x1000u || (rem == 0x1000u && (h & 1u))) ++h;
  return static_cast<uint16_t>(sign | h);
}

namespace {

#if defined(__x86_64__)
// F16C rounds to nearest even and widens exactly, as f32_to_f16 and f16_to_f32 do, for every
// value but NaNs, whose payloads it treats otherwise (it quiets them); a group of eight that
// holds a NaN takes the scalar functions, so the bytes are the same on any CPU. Loading a
// 7B checkpoint as f16 rounds 7e9 values: the scalar loop took most of the load.
#define CEPE_F16C __attribute__((target("avx,f16c")))

CEPE_F16C size_t narrow_f16_f16c(const float* src, uint16_t* dst, size_t n) {
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 v = _mm256_loadu_ps(src + i);
    if (_mm256_movemask_ps(_mm256_cmp_ps(v, v, _CMP_UNORD_Q))) {
      for (size_t j = i; j < i + 8; ++j) dst[j] = f32_to_f16(src[j]);
      continue;
    }
    _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + i),
                     _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT));
  }
  return i;
}

CEPE_F16C size_t widen_f16_f16c(const uint16_t* src, float* dst, size_t n) {
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i));
    // A NaN half: exponent all ones, mantissa not zero, i.e. |h| > 0x7c00.
    const __m128i nan =
        _mm_cmpgt_epi16(_mm_and_si128(h, _mm_set1_epi16(0x7fff)), _mm_set1_epi16(0x7c00));
    if (_mm_movemask_epi8(nan)) {
      for (size_t j = i; j < i + 8; ++j) dst[j] = f16_to_f32(src[j]);
      continue;
    }
    _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(h));
  }
  return i;
}

bool have_f16c() {
  static const bool yes = cpu_has_f16c();
  return yes;
}
#else
size_t narrow_f16_f16c(const float*, uint16_t*, size_t) {
  return 0;
}
size_t widen_f16_f16c(const uint16_t*, float*, size_t) {
  return 0;
}
bool have_f16c() {
  return false;
}
#endif

}  // namespace

void convert_to_f32(const void* src, DType src_type, float* dst, size_t n) {
  switch (src_type) {
    case DType::F32:
      std::memcpy(dst, src, n * 4);
      return;
    case DType::BF16: {
      const uint16_t* s = static_cast<const uint16_t*>(src);
      for (size_t i = 0; i < n; ++i) dst[i] = bf16_to_f32(s[i]);
      return;
    }
    case DType::F16: {
      const uint16_t* s = static_cast<const uint16_t*>(src);
      for (size_t i = have_f16c() ? widen_f16_f16c(s, dst, n) : 0; i < n; ++i)
        dst[i] = f16_to_f32(s[i]);
      return;
    }
    case DType::I32:
    case DType::Q8_0:
    case DType::Q4_0:
    case DType::Q8_0x16:
    case DType::Q4_0x16:
      break;
  }
  CEPE_THROW("cannot convert " << dtype_name(src_type) << " to F32");
}

void convert_from_f32(const float* src, void* dst, DType dst_type, size_t n) {
  switch (dst_type) {
    case DType::F32:
      std::memcpy(dst, src, n * 4);
      return;
    case DType::BF16: {
      uint16_t* d = static_cast<uint16_t*>(dst);
      for (size_t i = 0; i < n; ++i) d[i] = f32_to_bf16(src[i]);
      return;
    }
    case DType::F16: {
      uint16_t* d = static_cast<uint16_t*>(dst);
      for (size_t i = have_f16c() ? narrow_f16_f16c(src, d, n) : 0; i < n; ++i)
        d[i] = f32_to_f16(src[i]);
      return;
    }
    case DType::I32:
    case DType::Q8_0:
    case DType::Q4_0:
    case DType::Q8_0x16:
    case DType::Q4_0x16:
      break;
  }
  CEPE_THROW("cannot convert F32 to " << dtype_name(dst_type));
}

}  // namespace cepe
