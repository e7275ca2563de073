#include "engine/cpu/kernels.h"

// GCC 12's AVX-512 headers self-initialise their "undefined" vectors (`__m512 __Y = __Y;`),
// which -Wuninitialized reports wherever an intrinsic is inlined (GCC bug 105593); the warning
// is silenced for the header's lines only.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>
#pragma GCC diagnostic pop

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>

#include "common/error.h"

// Every vector function carries its own target attribute (no -m flags on the file), so the
// binary builds for baseline x86-64 and each path runs only where cpuid says it can.
#define CEPE_AVX2 __attribute__((target("avx2,fma,f16c")))
#define CEPE_AVX512 __attribute__((target("avx2,fma,f16c,avx512f,avx512bw,avx512vl")))
#define CEPE_AVX512VNNI \
  __attribute__((target("avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")))
#define CEPE_AVX512BF16 \
  __attribute__((target("avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni,avx512bf16")))

namespace cepe::cpu {
namespace {

// ---- scalar: the reference every other path is tested against ----

float dot_q8_0_scalar(const BlockQ8_0* w, const BlockQ8_0* x, int64_t blocks) {
  float sum = 0.0f;
  for (int64_t b = 0; b < blocks; ++b) {
    int32_t s = 0;
    for (int i = 0; i < 32; ++i) s += int32_t(w[b].qs[i]) * int32_t(x[b].qs[i]);
    sum += static_cast<float>(s) * (f16_to_f32(w[b].d) * f16_to_f32(x[b].d));
  }
  return sum;
}

float dot_q4_0_scalar(const BlockQ4_0* w, const BlockQ8_0* x, int64_t blocks) {
  float sum = 0.0f;
  for (int64_t b = 0; b < blocks; ++b) {
    int32_t s = 0;
    for (int j = 0; j < 16; ++j) {
      s += (int32_t(w[b].qs[j] & 0x0f) - 8) * int32_t(x[b].qs[j]);
      s += (int32_t(w[b].qs[j] >> 4) - 8) * int32_t(x[b].qs[j + 16]);
    }
    sum += static_cast<float>(s) * (f16_to_f32(w[b].d) * f16_to_f32(x[b].d));
  }
  return sum;
}

float dot_f16_scalar(const uint16_t* w, const float* x, int64_t n) {
  float sum = 0.0f;
  for (int64_t i = 0; i < n; ++i) sum += f16_to_f32(w[i]) * x[i];
  return sum;
}

float dot_bf16_scalar(const uint16_t* w, const float* x, int64_t n) {
  float sum = 0.0f;
  for (int64_t i = 0; i < n; ++i) sum += bf16_to_f32(w[i]) * x[i];
  return sum;
}

void widen_f16_scalar(const uint16_t* in, float* out, int64_t n) {
  for (int64_t i = 0; i < n; ++i) out[i] = f16_to_f32(in[i]);
}

void widen_bf16_scalar(const uint16_t* in, float* out, int64_t n) {
  for (int64_t i = 0; i < n; ++i) out[i] = bf16_to_f32(in[i]);
}

// ---- AVX2 ----

CEPE_AVX2 inline float hsum_avx2(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// 32 products of signed bytes summed in 8 int32 lanes: maddubs wants an unsigned operand, so w's
// sign moves onto x (|w| <= 128 and |x| <= 127 keep each pair sum inside int16).
CEPE_AVX2 inline __m256i dot32_avx2(__m256i w, __m256i x) {
  const __m256i p16 = _mm256_maddubs_epi16(_mm256_sign_epi8(w, w), _mm256_sign_epi8(x, w));
  return _mm256_madd_epi16(p16, _mm256_set1_epi16(1));
}

CEPE_AVX2 inline __m256i unpack_q4_avx2(const uint8_t* qs) {
  const __m128i t = _mm_loadu_si128(reinterpret_cast<const __m128i*>(qs));
  const __m256i both = _mm256_set_m128i(_mm_srli_epi16(t, 4), t);
  return _mm256_sub_epi8(_mm256_and_si256(both, _mm256_set1_epi8(0x0f)), _mm256_set1_epi8(8));
}

CEPE_AVX2 float dot_q8_0_avx2(const BlockQ8_0* w, const BlockQ8_0* x, int64_t blocks) {
  __m256 acc = _mm256_setzero_ps();
  for (int64_t b = 0; b < blocks; ++b) {
    const __m256i wq = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w[b].qs));
    const __m256i xq = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x[b].qs));
    const __m256 d = _mm256_set1_ps(_cvtsh_ss(w[b].d) * _cvtsh_ss(x[b].d));
    acc = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(dot32_avx2(wq, xq)), acc);
  }
  return hsum_avx2(acc);
}

CEPE_AVX2 float dot_q4_0_avx2(const BlockQ4_0* w, const BlockQ8_0* x, int64_t blocks) {
  __m256 acc = _mm256_setzero_ps();
  for (int64_t b = 0; b < blocks; ++b) {
    const __m256i wq = unpack_q4_avx2(w[b].qs);
    const __m256i xq = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x[b].qs));
    const __m256 d = _mm256_set1_ps(_cvtsh_ss(w[b].d) * _cvtsh_ss(x[b].d));
    acc = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(dot32_avx2(wq, xq)), acc);
  }
  return hsum_avx2(acc);
}

CEPE_AVX2 inline __m256 load_bf16_avx2(const uint16_t* p) {
  const __m256i v = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  return _mm256_castsi256_ps(_mm256_slli_epi32(v, 16));
}

CEPE_AVX2 inline __m256 load_f16_avx2(const uint16_t* p) {
  return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}

// Four accumulators hide the FMA latency; the row tail is added in scalar.
#define CEPE_DOT16_AVX2(NAME, LOAD, WIDEN)                                                    \
  CEPE_AVX2 float NAME(const uint16_t* w, const float* x, int64_t n) {                        \
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;                               \
    int64_t i = 0;                                                                            \
    for (; i + 32 <= n; i += 32) {                                                            \
      a0 = _mm256_fmadd_ps(LOAD(w + i), _mm256_loadu_ps(x + i), a0);                          \
      a1 = _mm256_fmadd_ps(LOAD(w + i + 8), _mm256_loadu_ps(x + i + 8), a1);                  \
      a2 = _mm256_fmadd_ps(LOAD(w + i + 16), _mm256_loadu_ps(x + i + 16), a2);                \
      a3 = _mm256_fmadd_ps(LOAD(w + i + 24), _mm256_loadu_ps(x + i + 24), a3);                \
    }                                                                                         \
    for (; i + 8 <= n; i += 8) a0 = _mm256_fmadd_ps(LOAD(w + i), _mm256_loadu_ps(x + i), a0); \
    float s = hsum_avx2(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));         \
    for (; i < n; ++i) s += WIDEN(w[i]) * x[i];                                               \
    return s;                                                                                 \
  }
CEPE_DOT16_AVX2(dot_f16_avx2, load_f16_avx2, f16_to_f32)
CEPE_DOT16_AVX2(dot_bf16_avx2, load_bf16_avx2, bf16_to_f32)

CEPE_AVX2 void widen_f16_avx2(const uint16_t* in, float* out, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(out + i, load_f16_avx2(in + i));
  for (; i < n; ++i) out[i] = f16_to_f32(in[i]);
}

CEPE_AVX2 void widen_bf16_avx2(const uint16_t* in, float* out, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(out + i, load_bf16_avx2(in + i));
  for (; i < n; ++i) out[i] = bf16_to_f32(in[i]);
}

// Same arithmetic as quantize_row_q8_0_ref step for step (max, one division, one reciprocal,
// x * id rounded half to even), so the blocks are bit-identical.
CEPE_AVX2 void quantize_q8_0_avx2(const float* x, BlockQ8_0* out, int64_t n) {
  const int64_t full = n / 32;
  const __m256 sign = _mm256_set1_ps(-0.0f);
  for (int64_t b = 0; b < full; ++b) {
    const float* p = x + b * 32;
    __m256 v[4];
    __m256 amax = _mm256_setzero_ps();
    for (int j = 0; j < 4; ++j) {
      v[j] = _mm256_loadu_ps(p + 8 * j);
      amax = _mm256_max_ps(amax, _mm256_andnot_ps(sign, v[j]));
    }
    __m128 m = _mm_max_ps(_mm256_castps256_ps128(amax), _mm256_extractf128_ps(amax, 1));
    m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    m = _mm_max_ss(m, _mm_movehdup_ps(m));
    const float d = _mm_cvtss_f32(m) / 127.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    out[b].d = f32_to_f16(d);
    const __m256 vid = _mm256_set1_ps(id);
    __m256i q[4];
    for (int j = 0; j < 4; ++j)
      q[j] = _mm256_cvtps_epi32(
          _mm256_round_ps(_mm256_mul_ps(v[j], vid), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
    // Pack 32 int32 -> 32 int8; the packs interleave 128-bit lanes, the permute undoes it.
    const __m256i p01 = _mm256_packs_epi32(q[0], q[1]);
    const __m256i p23 = _mm256_packs_epi32(q[2], q[3]);
    __m256i bytes = _mm256_packs_epi16(p01, p23);
    bytes = _mm256_permutevar8x32_epi32(bytes, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out[b].qs), bytes);
  }
  if (full * 32 < n) quantize_row_q8_0_ref(x + full * 32, out + full, n - full * 32);
}

CEPE_AVX2 void dequantize_q8_0_avx2(const BlockQ8_0* in, float* out, int64_t n) {
  const int64_t full = n / 32;
  for (int64_t b = 0; b < full; ++b) {
    const __m256 d = _mm256_set1_ps(_cvtsh_ss(in[b].d));
    for (int j = 0; j < 4; ++j) {
      const __m128i q = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(in[b].qs + 8 * j));
      _mm256_storeu_ps(out + b * 32 + 8 * j,
                       _mm256_mul_ps(d, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q))));
    }
  }
  if (full * 32 < n) dequantize_row_q8_0_ref(in + full, out + full * 32, n - full * 32);
}

CEPE_AVX2 void dequantize_q4_0_avx2(const BlockQ4_0* in, float* out, int64_t n) {
  const int64_t full = n / 32;
  for (int64_t b = 0; b < full; ++b) {
    const __m256 d = _mm256_set1_ps(_cvtsh_ss(in[b].d));
    alignas(32) int8_t q[32];
    _mm256_store_si256(reinterpret_cast<__m256i*>(q), unpack_q4_avx2(in[b].qs));
    for (int j = 0; j < 4; ++j) {
      const __m128i v = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(q + 8 * j));
      _mm256_storeu_ps(out + b * 32 + 8 * j,
                       _mm256_mul_ps(d, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(v))));
    }
  }
  if (full * 32 < n) dequantize_row_q4_0_ref(in + full, out + full * 32, n - full * 32);
}

// ---- AVX-512 (F, BW, VL): two blocks per 512-bit register ----

// Halves folded by a lane shuffle (GCC 12's _mm512_reduce_add_ps trips -Wuninitialized).
CEPE_AVX512 inline float hsum_avx512(__m512 v) {
  const __m512 folded = _mm512_add_ps(v, _mm512_shuffle_f32x4(v, v, 0x4e));
  return hsum_avx2(_mm512_castps512_ps256(folded));
}

CEPE_AVX512 inline __m512i two_blocks(const int8_t* a, const int8_t* b) {
  return _mm512_inserti64x4(
      _mm512_castsi256_si512(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(a))),
      _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b)), 1);
}

CEPE_AVX512 inline __m512i two_q4_blocks(const BlockQ4_0& a, const BlockQ4_0& b) {
  return _mm512_inserti64x4(_mm512_castsi256_si512(unpack_q4_avx2(a.qs)), unpack_q4_avx2(b.qs), 1);
}

// |w| and x with w's sign, as in dot32_avx2 (AVX-512 has no sign_epi8).
CEPE_AVX512 inline void abs_and_signed(__m512i w, __m512i x, __m512i* aw, __m512i* sx) {
  *aw = _mm512_abs_epi8(w);
  *sx = _mm512_mask_sub_epi8(x, _mm512_movepi8_mask(w), _mm512_setzero_si512(), x);
}

CEPE_AVX512 inline __m512 two_scales(float da, float db) {
  return _mm512_mask_blend_ps(0xff00, _mm512_set1_ps(da), _mm512_set1_ps(db));
}

// The block loop of both 512-bit levels; TARGET is the level's attribute, SUM32 turns |w| and the
// signed x into 16 int32 sums of four products (so the plain AVX-512 level never sees VNNI code).
#define CEPE_DOT_BLOCKS_AVX512(NAME, TARGET, WBLOCK, LOADW, SUM32, TAIL)          \
  TARGET float NAME(const WBLOCK* w, const BlockQ8_0* x, int64_t blocks) {        \
    __m512 acc = _mm512_setzero_ps();                                             \
    int64_t b = 0;                                                                \
    for (; b + 2 <= blocks; b += 2) {                                             \
      const __m512i wq = LOADW(w[b], w[b + 1]);                                   \
      const __m512i xq = two_blocks(x[b].qs, x[b + 1].qs);                        \
      __m512i aw, sx;                                                             \
      abs_and_signed(wq, xq, &aw, &sx);                                           \
      const __m512 d = two_scales(_cvtsh_ss(w[b].d) * _cvtsh_ss(x[b].d),          \
                                  _cvtsh_ss(w[b + 1].d) * _cvtsh_ss(x[b + 1].d)); \
      acc = _mm512_fmadd_ps(d, _mm512_cvtepi32_ps(SUM32(aw, sx)), acc);           \
    }                                                                             \
    float s = hsum_avx512(acc);                                                   \
    if (b < blocks) s += TAIL(w + b, x + b, 1);                                   \
    return s;                                                                     \
  }

CEPE_AVX512 inline __m512i two_q8_blocks(const BlockQ8_0& a, const BlockQ8_0& b) {
  return two_blocks(a.qs, b.qs);
}
CEPE_AVX512 inline __m512i sum32_avx512(__m512i aw, __m512i sx) {
  return _mm512_madd_epi16(_mm512_maddubs_epi16(aw, sx), _mm512_set1_epi16(1));
}
CEPE_AVX512VNNI inline __m512i sum32_vnni(__m512i aw, __m512i sx) {
  return _mm512_dpbusd_epi32(_mm512_setzero_si512(), aw, sx);  // no int16 saturation step
}

CEPE_DOT_BLOCKS_AVX512(dot_q8_0_avx512, CEPE_AVX512, BlockQ8_0, two_q8_blocks, sum32_avx512,
                       dot_q8_0_avx2)
CEPE_DOT_BLOCKS_AVX512(dot_q4_0_avx512, CEPE_AVX512, BlockQ4_0, two_q4_blocks, sum32_avx512,
                       dot_q4_0_avx2)
CEPE_DOT_BLOCKS_AVX512(dot_q8_0_vnni, CEPE_AVX512VNNI, BlockQ8_0, two_q8_blocks, sum32_vnni,
                       dot_q8_0_avx2)
CEPE_DOT_BLOCKS_AVX512(dot_q4_0_vnni, CEPE_AVX512VNNI, BlockQ4_0, two_q4_blocks, sum32_vnni,
                       dot_q4_0_avx2)

CEPE_AVX512 inline __m512 load_f16_avx512(const uint16_t* p) {
  return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
}
CEPE_AVX512 inline __m512 load_bf16_avx512(const uint16_t* p) {
  const __m512i v = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  return _mm512_castsi512_ps(_mm512_slli_epi32(v, 16));
}

#define CEPE_DOT16_AVX512(NAME, LOAD, WIDEN)                                                    \
  CEPE_AVX512 float NAME(const uint16_t* w, const float* x, int64_t n) {                        \
    __m512 a0 = _mm512_setzero_ps(), a1 = a0;                                                   \
    int64_t i = 0;                                                                              \
    for (; i + 32 <= n; i += 32) {                                                              \
      a0 = _mm512_fmadd_ps(LOAD(w + i), _mm512_loadu_ps(x + i), a0);                            \
      a1 = _mm512_fmadd_ps(LOAD(w + i + 16), _mm512_loadu_ps(x + i + 16), a1);                  \
    }                                                                                           \
    for (; i + 16 <= n; i += 16) a0 = _mm512_fmadd_ps(LOAD(w + i), _mm512_loadu_ps(x + i), a0); \
    float s = hsum_avx512(_mm512_add_ps(a0, a1));                                               \
    for (; i < n; ++i) s += WIDEN(w[i]) * x[i];                                                 \
    return s;                                                                                   \
  }
CEPE_DOT16_AVX512(dot_f16_avx512, load_f16_avx512, f16_to_f32)
CEPE_DOT16_AVX512(dot_bf16_avx512, load_bf16_avx512, bf16_to_f32)

// AVX-512 BF16: x is rounded to bf16 on the fly (VDPBF16PS multiplies bf16 pairs exactly and
// accumulates in F32), so each product carries x's rounding, at most 2^-9 relative.
CEPE_AVX512BF16 float dot_bf16_avx512bf16(const uint16_t* w, const float* x, int64_t n) {
  __m512 acc = _mm512_setzero_ps();
  int64_t i = 0;
  for (; i + 32 <= n; i += 32) {
    const __m512bh xb = _mm512_cvtne2ps_pbh(_mm512_loadu_ps(x + i + 16), _mm512_loadu_ps(x + i));
    const __m512bh wb = (__m512bh)_mm512_loadu_si512(w + i);
    acc = _mm512_dpbf16_ps(acc, wb, xb);
  }
  float s = hsum_avx512(acc);
  for (; i < n; ++i) s += bf16_to_f32(w[i]) * x[i];
  return s;
}

// ---- the tables ----

const Kernels kScalar{KernelPath::Scalar,     "scalar",
                      dot_q8_0_scalar,        dot_q4_0_scalar,
                      dot_f16_scalar,         dot_bf16_scalar,
                      quantize_row_q8_0_ref,  widen_f16_scalar,
                      widen_bf16_scalar,      dequantize_row_q8_0_ref,
                      dequantize_row_q4_0_ref};
const Kernels kAvx2{KernelPath::Avx2,    "avx2",
                    dot_q8_0_avx2,       dot_q4_0_avx2,
                    dot_f16_avx2,        dot_bf16_avx2,
                    quantize_q8_0_avx2,  widen_f16_avx2,
                    widen_bf16_avx2,     dequantize_q8_0_avx2,
                    dequantize_q4_0_avx2};
const Kernels kAvx512{
    KernelPath::Avx512,  "avx512",           dot_q8_0_avx512, dot_q4_0_avx512, dot_f16_avx512,
    dot_bf16_avx512,     quantize_q8_0_avx2, widen_f16_avx2,  widen_bf16_avx2, dequantize_q8_0_avx2,
    dequantize_q4_0_avx2};
const Kernels kAvx512Vnni{KernelPath::Avx512Vnni, "avx512vnni",        dot_q8_0_vnni,
                          dot_q4_0_vnni,          dot_f16_avx512,      dot_bf16_avx512,
                          quantize_q8_0_avx2,     widen_f16_avx2,      widen_bf16_avx2,
                          dequantize_q8_0_avx2,   dequantize_q4_0_avx2};
const Kernels kAvx512Bf16{KernelPath::Avx512Bf16, "avx512bf16",        dot_q8_0_vnni,
                          dot_q4_0_vnni,          dot_f16_avx512,      dot_bf16_avx512bf16,
                          quantize_q8_0_avx2,     widen_f16_avx2,      widen_bf16_avx2,
                          dequantize_q8_0_avx2,   dequantize_q4_0_avx2};

const Kernels& table(KernelPath path) {
  switch (path) {
    case KernelPath::Scalar:
      return kScalar;
    case KernelPath::Avx2:
      return kAvx2;
    case KernelPath::Avx512:
      return kAvx512;
    case KernelPath::Avx512Vnni:
      return kAvx512Vnni;
    case KernelPath::Avx512Bf16:
      return kAvx512Bf16;
  }
  return kScalar;
}

}  // namespace

bool kernel_path_supported(KernelPath path) {
  __builtin_cpu_init();
  const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                    __builtin_cpu_supports("f16c");
  const bool avx512 = avx2 && __builtin_cpu_supports("avx512f") &&
                      __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl");
  const bool vnni = avx512 && __builtin_cpu_supports("avx512vnni");
  switch (path) {
    case KernelPath::Scalar:
      return true;
    case KernelPath::Avx2:
      return avx2;
    case KernelPath::Avx512:
      return avx512;
    case KernelPath::Avx512Vnni:
      return vnni;
    case KernelPath::Avx512Bf16:
      return vnni && __builtin_cpu_supports("avx512bf16");
  }
  return false;
}

std::vector<KernelPath> all_kernel_paths() {
  return {KernelPath::Scalar, KernelPath::Avx2, KernelPath::Avx512, KernelPath::Avx512Vnni,
          KernelPath::Avx512Bf16};
}

std::vector<KernelPath> supported_kernel_paths() {
  std::vector<KernelPath> out;
  for (KernelPath p : all_kernel_paths())
    if (kernel_path_supported(p)) out.push_back(p);
  return out;
}

const char* kernel_path_name(KernelPath path) {
  return table(path).name;
}

const Kernels& kernels_for(KernelPath path) {
  CEPE_CHECK(kernel_path_supported(path),
             "this CPU cannot run the " << kernel_path_name(path) << " kernels");
  return table(path);
}

const Kernels& active_kernels() {
  static const Kernels* chosen = [] {
    const char* env = std::getenv("CEPE_KERNELS");
    if (env && *env) {
      for (KernelPath p : all_kernel_paths())
        if (std::string(env) == kernel_path_name(p)) return &kernels_for(p);
      CEPE_THROW("CEPE_KERNELS=" << env
                                 << ": unknown (expected scalar, avx2, avx512, avx512vnni or "
                                    "avx512bf16)");
    }
    // VDPBF16PS multiplies bf16 by bf16, so that path rounds every activation to bf16 (2^-9
    // relative per product; up to 4e-2 on the bf16 fixture's logits against 3e-4 with F32
    // activations). It buys little: decode is bound by reading the weights (bench_ops on Zen 4,
    // 1 thread: the one-row bf16 GEMV within noise of the widening path) and prefill widens
    // weight tiles to F32 on every path. So the default keeps F32 activations and
    // CEPE_KERNELS=avx512bf16 opts in to the rounding path.
    const std::vector<KernelPath> paths = supported_kernel_paths();
    for (auto it = paths.rbegin(); it != paths.rend(); ++it)
      if (*it != KernelPath::Avx512Bf16) return &table(*it);
    return &kScalar;
  }();
  return *chosen;
}

void dequantize_row(const Kernels& k, const void* row, DType dtype, float* out, int64_t width) {
  switch (dtype) {
    case DType::F32:
      std::memcpy(out, row, static_cast<size_t>(width) * sizeof(float));
      return;
    case DType::F16:
      k.widen_f16(static_cast<const uint16_t*>(row), out, width);
      return;
    case DType::BF16:
      k.widen_bf16(static_cast<const uint16_t*>(row), out, width);
      return;
    case DType::Q8_0:
      k.dequantize_q8_0(static_cast<const BlockQ8_0*>(row), out, width);
      return;
    case DType::Q4_0:
      k.dequantize_q4_0(static_cast<const BlockQ4_0*>(row), out, width);
      return;
    case DType::I32:
      break;
  }
  CEPE_THROW("cannot widen " << dtype_name(dtype) << " weights to F32");
}

}  // namespace cepe::cpu
