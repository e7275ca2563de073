#include "engine/cpu/kernels.h"

// GCC 12's AVX-512 headers self-initialise their "undefined" vectors (`__m512 __Y = __Y;`),
// which -Wuninitialized reports wherever an intrinsic is inlined (GCC bug 105593); the warning
// is silenced for the header's lines only.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#ifndef __clang__
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#include <immintrin.h>
#pragma GCC diagnostic pop

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>

#include "common/error.h"
#include "common/system.h"

// Every vector function carries its own target attribute (no -m flags on the file), so the
// binary builds for baseline x86-64 and each path runs only where cpuid says it can.
#define CEPE_AVX2 __attribute__((target("avx2,fma,f16c")))
#define CEPE_AVX512 __attribute__((target("avx2,fma,f16c,avx512f,avx512bw,avx512vl")))
#define CEPE_AVX512VNNI \
  __attribute__((target("avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")))
#define CEPE_AVX512BF16 \
  __attribute__((target("avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni,avx512bf16")))
#define CEPE_AMX                                                                       \
  __attribute__((                                                                      \
      target("avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni,avx512bf16,amx-tile," \
             "amx-int8,amx-bf16")))

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

float dot_f32_scalar(const float* w, const float* x, int64_t n) {
  float sum = 0.0f;
  for (int64_t i = 0; i < n; ++i) sum += w[i] * x[i];
  return sum;
}

void gemm_f32_rows_scalar(const float* x, int64_t m, const float* w, int64_t n, int64_t k,
                          float* out, int64_t ldo, bool accumulate) {
  for (int64_t i = 0; i < m; ++i)
    for (int64_t j = 0; j < n; ++j) {
      const float s = dot_f32_scalar(w + j * k, x + i * k, k);
      float& o = out[i * ldo + j];
      o = accumulate ? o + s : s;
    }
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

void narrow_f16_scalar(const float* in, uint16_t* out, int64_t n) {
  for (int64_t i = 0; i < n; ++i) out[i] = f32_to_f16(in[i]);
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

CEPE_AVX2 inline __m256 load_f32_avx2(const float* p) {
  return _mm256_loadu_ps(p);
}
inline float as_f32(float v) {
  return v;
}

// Weights of type T (fp16, bf16 or F32 rows) against F32 activations. Four accumulators hide the
// FMA latency while the row streams from memory; the row tail is added in scalar.
#define CEPE_DOT_AVX2(NAME, T, LOAD, WIDEN)                                                   \
  CEPE_AVX2 float NAME(const T* w, const float* x, int64_t n) {                               \
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
CEPE_DOT_AVX2(dot_f16_avx2, uint16_t, load_f16_avx2, f16_to_f32)
CEPE_DOT_AVX2(dot_bf16_avx2, uint16_t, load_bf16_avx2, bf16_to_f32)
CEPE_DOT_AVX2(dot_f32_avx2, float, load_f32_avx2, as_f32)  // decode steps on F32 weights

// An MR x NR tile of gemm_f32_rows: one accumulator per output, the weight rows' vectors loaded
// once per step and used by every activation row (the tile's weights stay in L1 across the
// activation rows, which stay in L2). Every output sums its vector lanes, then its tail, in the
// same order in every tile shape.
template <int MR, int NR>
CEPE_AVX2 inline void f32_rows_tile_avx2(const float* x, const float* w, int64_t k, float* out,
                                         int64_t ldo, bool accumulate) {
  __m256 acc[MR][NR];
#pragma GCC unroll 4
  for (int i = 0; i < MR; ++i)
#pragma GCC unroll 4
    for (int j = 0; j < NR; ++j) acc[i][j] = _mm256_setzero_ps();
  int64_t t = 0;
  for (; t + 8 <= k; t += 8) {
    __m256 wv[NR];
#pragma GCC unroll 4
    for (int j = 0; j < NR; ++j) {
      wv[j] = _mm256_loadu_ps(w + j * k + t);
      asm("" : "+v"(wv[j]));  // see f32_rows_tile_avx512
    }
#pragma GCC unroll 4
    for (int i = 0; i < MR; ++i) {
      __m256 xv = _mm256_loadu_ps(x + i * k + t);
      asm("" : "+v"(xv));
#pragma GCC unroll 4
      for (int j = 0; j < NR; ++j) acc[i][j] = _mm256_fmadd_ps(wv[j], xv, acc[i][j]);
    }
  }
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NR; ++j) {
      float s = hsum_avx2(acc[i][j]);
      // An explicit fused multiply-add: contraction of a * b + s is up to the compiler, which
      // may decide differently in different tile shapes.
      for (int64_t r = t; r < k; ++r) s = __builtin_fmaf(w[j * k + r], x[i * k + r], s);
      float& o = out[i * ldo + j];
      o = accumulate ? o + s : s;
    }
}

// One tile of NR weight rows against all m activation rows, 4 rows at a time, then the rest.
template <int NR>
CEPE_AVX2 inline void f32_rows_column_avx2(const float* x, int64_t m, const float* w, int64_t k,
                                           float* out, int64_t ldo, bool accumulate) {
  int64_t i = 0;
  for (; i + 4 <= m; i += 4)
    f32_rows_tile_avx2<4, NR>(x + i * k, w, k, out + i * ldo, ldo, accumulate);
  switch (m - i) {
    case 3:
      f32_rows_tile_avx2<3, NR>(x + i * k, w, k, out + i * ldo, ldo, accumulate);
      break;
    case 2:
      f32_rows_tile_avx2<2, NR>(x + i * k, w, k, out + i * ldo, ldo, accumulate);
      break;
    case 1:
      f32_rows_tile_avx2<1, NR>(x + i * k, w, k, out + i * ldo, ldo, accumulate);
      break;
  }
}

// AVX2 has 16 vector registers: 4 x 3 accumulators and 3 weight vectors leave one for x.
CEPE_AVX2 void gemm_f32_rows_avx2(const float* x, int64_t m, const float* w, int64_t n, int64_t k,
                                  float* out, int64_t ldo, bool accumulate) {
  int64_t j = 0;
  for (; j + 3 <= n; j += 3) f32_rows_column_avx2<3>(x, m, w + j * k, k, out + j, ldo, accumulate);
  for (; j < n; ++j) f32_rows_column_avx2<1>(x, m, w + j * k, k, out + j, ldo, accumulate);
}

CEPE_AVX2 void widen_f16_avx2(const uint16_t* in, float* out, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(out + i, load_f16_avx2(in + i));
  for (; i < n; ++i) out[i] = f16_to_f32(in[i]);
}

CEPE_AVX2 void narrow_f16_avx2(const float* in, uint16_t* out, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    _mm_storeu_si128(reinterpret_cast<__m128i*>(out + i),
                     _mm256_cvtps_ph(_mm256_loadu_ps(in + i), _MM_FROUND_TO_NEAREST_INT));
  for (; i < n; ++i) out[i] = f32_to_f16(in[i]);
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

CEPE_AVX512 float dot_f32_avx512(const float* w, const float* x, int64_t n) {
  __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
  int64_t i = 0;
  for (; i + 64 <= n; i += 64) {
    a0 = _mm512_fmadd_ps(_mm512_loadu_ps(w + i), _mm512_loadu_ps(x + i), a0);
    a1 = _mm512_fmadd_ps(_mm512_loadu_ps(w + i + 16), _mm512_loadu_ps(x + i + 16), a1);
    a2 = _mm512_fmadd_ps(_mm512_loadu_ps(w + i + 32), _mm512_loadu_ps(x + i + 32), a2);
    a3 = _mm512_fmadd_ps(_mm512_loadu_ps(w + i + 48), _mm512_loadu_ps(x + i + 48), a3);
  }
  for (; i + 16 <= n; i += 16)
    a0 = _mm512_fmadd_ps(_mm512_loadu_ps(w + i), _mm512_loadu_ps(x + i), a0);
  float s = hsum_avx512(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)));
  for (; i < n; ++i) s += w[i] * x[i];
  return s;
}

// The AVX-512 form of f32_rows_tile_avx2 (32 registers: 4 x 4 accumulators).
template <int MR, int NR>
CEPE_AVX512 inline void f32_rows_tile_avx512(const float* x, const float* w, int64_t k, float* out,
                                             int64_t ldo, bool accumulate) {
  __m512 acc[MR][NR];
#pragma GCC unroll 4
  for (int i = 0; i < MR; ++i)
#pragma GCC unroll 4
    for (int j = 0; j < NR; ++j) acc[i][j] = _mm512_setzero_ps();
  int64_t t = 0;
  for (; t + 16 <= k; t += 16) {
    __m512 wv[NR];
#pragma GCC unroll 4
    for (int j = 0; j < NR; ++j) {
      wv[j] = _mm512_loadu_ps(w + j * k + t);
      // Keeps the vectors in registers (here and for x below): GCC would otherwise reload
      // them as memory operands of every multiply-add, which makes the tile load-bound.
      asm("" : "+v"(wv[j]));
    }
#pragma GCC unroll 4
    for (int i = 0; i < MR; ++i) {
      __m512 xv = _mm512_loadu_ps(x + i * k + t);
      asm("" : "+v"(xv));
#pragma GCC unroll 4
      for (int j = 0; j < NR; ++j) acc[i][j] = _mm512_fmadd_ps(wv[j], xv, acc[i][j]);
    }
  }
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NR; ++j) {
      float s = hsum_avx512(acc[i][j]);
      // An explicit fused multiply-add: contraction of a * b + s is up to the compiler, which
      // may decide differently in different tile shapes.
      for (int64_t r = t; r < k; ++r) s = __builtin_fmaf(w[j * k + r], x[i * k + r], s);
      float& o = out[i * ldo + j];
      o = accumulate ? o + s : s;
    }
}

template <int NR>
CEPE_AVX512 inline void f32_rows_column_avx512(const float* x, int64_t m, const float* w, int64_t k,
                                               float* out, int64_t ldo, bool accumulate) {
  int64_t i = 0;
  for (; i + 4 <= m; i += 4)
    f32_rows_tile_avx512<4, NR>(x + i * k, w, k, out + i * ldo, ldo, accumulate);
  switch (m - i) {
    case 3:
      f32_rows_tile_avx512<3, NR>(x + i * k, w, k, out + i * ldo, ldo, accumulate);
      break;
    case 2:
      f32_rows_tile_avx512<2, NR>(x + i * k, w, k, out + i * ldo, ldo, accumulate);
      break;
    case 1:
      f32_rows_tile_avx512<1, NR>(x + i * k, w, k, out + i * ldo, ldo, accumulate);
      break;
  }
}

CEPE_AVX512 void gemm_f32_rows_avx512(const float* x, int64_t m, const float* w, int64_t n,
                                      int64_t k, float* out, int64_t ldo, bool accumulate) {
  int64_t j = 0;
  for (; j + 4 <= n; j += 4)
    f32_rows_column_avx512<4>(x, m, w + j * k, k, out + j, ldo, accumulate);
  for (; j < n; ++j) f32_rows_column_avx512<1>(x, m, w + j * k, k, out + j, ldo, accumulate);
}

// The first `count` lanes of a 16-lane vector (none for count <= 0).
inline __mmask16 low_lanes(int64_t count) {
  return count >= 16 ? 0xffff : count <= 0 ? 0 : static_cast<__mmask16>((1u << count) - 1);
}

// ---- exp for softmax and SiLU ----
//
// The vector levels share one expf: e^x = 2^n e^r with n = round(x log2 e), r = x - n ln 2 in two
// parts (Cody-Waite), e^r by Cephes' degree-7 polynomial (within ~2 ulp of exp on |r| <= ln2/2).
// x is clamped to [-87.3, 88.7]: e^x under 2^-126 (denormals) comes out as a normal number near
// 2^-126 and over 2^127.9 as ~3.4e38, never inf; softmax and SiLU only meet such values where
// they round away (e^(s - max) <= 1; SiLU's 1 + e^-g with g < -88 gives g / 3.4e38 ~ 0).

constexpr float kExpHi = 88.7f, kExpLo = -87.3f;
constexpr float kLog2e = 1.44269504088896341f, kLn2Hi = 0.693359375f, kLn2Lo = -2.12194440e-4f;
constexpr float kExpP0 = 1.9875691500e-4f, kExpP1 = 1.3981999507e-3f, kExpP2 = 8.3334519073e-3f,
                kExpP3 = 4.1665795894e-2f, kExpP4 = 1.6666665459e-1f, kExpP5 = 5.0000001201e-1f;

float softmax_exp_scalar(float* s, int64_t n, float* max_out) {
  float mx = -INFINITY;
  for (int64_t j = 0; j < n; ++j) mx = std::max(mx, s[j]);
  float sum = 0.0f;
  for (int64_t j = 0; j < n; ++j) sum += s[j] = std::exp(s[j] - mx);
  *max_out = mx;
  return sum;
}

void silu_mul_scalar(float* g, const float* u, int64_t n) {
  for (int64_t i = 0; i < n; ++i) g[i] = g[i] / (1.0f + std::exp(-g[i])) * u[i];
}

CEPE_AVX2 inline __m256 exp_avx2(__m256 x) {
  x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(kExpLo)), _mm256_set1_ps(kExpHi));
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(kLog2e)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(kLn2Hi), x);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(kLn2Lo), r);
  __m256 p = _mm256_set1_ps(kExpP0);
  for (float c : {kExpP1, kExpP2, kExpP3, kExpP4, kExpP5})
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(c));
  p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
  // p * 2^n: n (in [-126, 128], p in [0.7, 1.42]) added to the exponent field.
  const __m256i e = _mm256_slli_epi32(_mm256_cvtps_epi32(n), 23);
  return _mm256_castsi256_ps(_mm256_add_epi32(_mm256_castps_si256(p), e));
}

CEPE_AVX512 inline __m512 exp_avx512(__m512 x) {
  x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(kExpLo)), _mm512_set1_ps(kExpHi));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(kLog2e)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(kLn2Hi), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(kLn2Lo), r);
  __m512 p = _mm512_set1_ps(kExpP0);
  for (float c : {kExpP1, kExpP2, kExpP3, kExpP4, kExpP5})
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(c));
  p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
  return _mm512_scalef_ps(p, n);
}

CEPE_AVX2 float softmax_exp_avx2(float* s, int64_t n, float* max_out) {
  __m256 vmx = _mm256_set1_ps(-INFINITY);
  int64_t j = 0;
  for (; j + 8 <= n; j += 8) vmx = _mm256_max_ps(vmx, _mm256_loadu_ps(s + j));
  float buf[8];
  _mm256_storeu_ps(buf, vmx);
  float mx = -INFINITY;
  for (float v : buf) mx = std::max(mx, v);
  for (int64_t t = j; t < n; ++t) mx = std::max(mx, s[t]);
  const __m256 shift = _mm256_set1_ps(mx);
  __m256 acc = _mm256_setzero_ps();
  for (j = 0; j + 8 <= n; j += 8) {
    const __m256 e = exp_avx2(_mm256_sub_ps(_mm256_loadu_ps(s + j), shift));
    _mm256_storeu_ps(s + j, e);
    acc = _mm256_add_ps(acc, e);
  }
  float sum = hsum_avx2(acc);
  for (; j < n; ++j) {
    const __m256 e = exp_avx2(_mm256_set1_ps(s[j] - mx));
    sum += s[j] = _mm256_cvtss_f32(e);
  }
  *max_out = mx;
  return sum;
}

CEPE_AVX2 void silu_mul_avx2(float* g, const float* u, int64_t n) {
  const __m256 one = _mm256_set1_ps(1.0f);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 x = _mm256_loadu_ps(g + i);
    const __m256 e = exp_avx2(_mm256_sub_ps(_mm256_setzero_ps(), x));
    _mm256_storeu_ps(
        g + i, _mm256_mul_ps(_mm256_div_ps(x, _mm256_add_ps(one, e)), _mm256_loadu_ps(u + i)));
  }
  for (; i < n; ++i) {
    const float e = _mm256_cvtss_f32(exp_avx2(_mm256_set1_ps(-g[i])));
    g[i] = g[i] / (1.0f + e) * u[i];
  }
}

CEPE_AVX512 float softmax_exp_avx512(float* s, int64_t n, float* max_out) {
  __m512 vmx = _mm512_set1_ps(-INFINITY);
  int64_t j = 0;
  for (; j + 16 <= n; j += 16) vmx = _mm512_max_ps(vmx, _mm512_loadu_ps(s + j));
  if (j < n)
    vmx = _mm512_mask_max_ps(vmx, low_lanes(n - j), vmx,
                             _mm512_maskz_loadu_ps(low_lanes(n - j), s + j));
  const float mx = _mm512_reduce_max_ps(vmx);
  const __m512 shift = _mm512_set1_ps(mx);
  __m512 acc = _mm512_setzero_ps();
  for (j = 0; j < n; j += 16) {
    const __mmask16 live = low_lanes(n - j);
    const __m512 e = exp_avx512(_mm512_sub_ps(_mm512_maskz_loadu_ps(live, s + j), shift));
    _mm512_mask_storeu_ps(s + j, live, e);
    acc = _mm512_mask_add_ps(acc, live, acc, e);
  }
  *max_out = mx;
  return _mm512_reduce_add_ps(acc);
}

CEPE_AVX512 void silu_mul_avx512(float* g, const float* u, int64_t n) {
  const __m512 one = _mm512_set1_ps(1.0f);
  for (int64_t i = 0; i < n; i += 16) {
    const __mmask16 live = low_lanes(n - i);
    const __m512 x = _mm512_maskz_loadu_ps(live, g + i);
    const __m512 e = exp_avx512(_mm512_sub_ps(_mm512_setzero_ps(), x));
    _mm512_mask_storeu_ps(
        g + i, live,
        _mm512_mul_ps(_mm512_div_ps(x, _mm512_add_ps(one, e)), _mm512_maskz_loadu_ps(live, u + i)));
  }
}

// ---- blocked GEMMs (the bf16 and F32 panel GEMMs below) ----

// 16 rows of 16 32-bit words (row r at src + r * src_stride bytes) written transposed: word c of
// row r to dst[c * dst_stride + r], for the columns c < `columns` and the rows r < `rows_kept`
// (the activation panels keep 14 of the 16, dst_stride 14). The rows may instead hold 16 fp16 or
// bf16 values each (`halves`), widened to F32 (exactly) as they are loaded. Unpacks within
// 128-bit lanes, then 128-bit lane shuffles.
CEPE_AVX512 void transpose_words16(const uint8_t* src, int64_t src_stride, uint32_t* dst,
                                   int64_t dst_stride, DType halves = DType::F32, int columns = 16,
                                   int rows_kept = 16) {
  __m512i r[16], t[16];
  for (int i = 0; i < 16; ++i) {
    const uint8_t* row = src + i * src_stride;
    if (halves == DType::F16) {
      r[i] = _mm512_castps_si512(
          _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(row))));
    } else if (halves == DType::BF16) {
      r[i] = _mm512_slli_epi32(
          _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(row))), 16);
    } else {
      r[i] = _mm512_loadu_si512(row);
    }
  }
  for (int i = 0; i < 16; i += 2) {
    t[i] = _mm512_unpacklo_epi32(r[i], r[i + 1]);
    t[i + 1] = _mm512_unpackhi_epi32(r[i], r[i + 1]);
  }
  // r[4g + c], 128-bit lane L: rows 4g..4g+3 of column 4L + c.
  for (int g = 0; g < 16; g += 4) {
    r[g] = _mm512_unpacklo_epi64(t[g], t[g + 2]);
    r[g + 1] = _mm512_unpackhi_epi64(t[g], t[g + 2]);
    r[g + 2] = _mm512_unpacklo_epi64(t[g + 1], t[g + 3]);
    r[g + 3] = _mm512_unpackhi_epi64(t[g + 1], t[g + 3]);
  }
  for (int c = 0; c < 4; ++c) {
    t[c] = _mm512_shuffle_i32x4(r[c], r[4 + c], 0x88);
    t[4 + c] = _mm512_shuffle_i32x4(r[c], r[4 + c], 0xdd);
    t[8 + c] = _mm512_shuffle_i32x4(r[8 + c], r[12 + c], 0x88);
    t[12 + c] = _mm512_shuffle_i32x4(r[8 + c], r[12 + c], 0xdd);
  }
  // Column 4L + c: lanes L = 0 and 2 from t[c], t[8 + c]; L = 1 and 3 from t[4 + c], t[12 + c].
  for (int c = 0; c < 4; ++c) {
    r[c] = _mm512_shuffle_i32x4(t[c], t[8 + c], 0x88);
    r[8 + c] = _mm512_shuffle_i32x4(t[c], t[8 + c], 0xdd);
    r[4 + c] = _mm512_shuffle_i32x4(t[4 + c], t[12 + c], 0x88);
    r[12 + c] = _mm512_shuffle_i32x4(t[4 + c], t[12 + c], 0xdd);
  }
  // Fewer rows kept: every column but the last is stored whole, its surplus words landing on the
  // next column's first words, which that column's store then overwrites; the last is stored
  // under a mask. (Masked stores cost several times a plain one on Zen 4: masking all 16
  // columns made the activation packing twice as slow as scalar stores.)
  for (int c = 0; c + 1 < columns; ++c) _mm512_storeu_si512(dst + c * dst_stride, r[c]);
  if (columns > 0) {
    const int c = columns - 1;
    if (rows_kept == 16)
      _mm512_storeu_si512(dst + c * dst_stride, r[c]);
    else
      _mm512_mask_storeu_epi32(dst + c * dst_stride, low_lanes(rows_kept), r[c]);
  }
}

// One row of a 32-column register tile to out[0, 32) under the column masks (or added to what
// is there). Whole rows take plain stores: a masked store costs several times a plain one on
// Zen 4, which the attention's short score tiles (k = head_dim) felt.
CEPE_AVX512 inline void store_tile_row(float* o, __mmask16 m0, __mmask16 m1, __m512 v0, __m512 v1,
                                       bool accumulate) {
  if (m0 == 0xffff && m1 == 0xffff) {
    if (accumulate) {
      v0 = _mm512_add_ps(v0, _mm512_loadu_ps(o));
      v1 = _mm512_add_ps(v1, _mm512_loadu_ps(o + 16));
    }
    _mm512_storeu_ps(o, v0);
    _mm512_storeu_ps(o + 16, v1);
    return;
  }
  if (accumulate) {
    v0 = _mm512_add_ps(v0, _mm512_maskz_loadu_ps(m0, o));
    v1 = _mm512_add_ps(v1, _mm512_maskz_loadu_ps(m1, o + 16));
  }
  _mm512_mask_storeu_ps(o, m0, v0);
  _mm512_mask_storeu_ps(o + 16, m1, v1);
}

// While panel `pn` of `panel_count` meets the current weight block, the next block's source
// rows [next_rows * pn / panel_count, next_rows * (pn + 1) / panel_count) are fetched towards L2,
// so the next block's transposes (16 rows read at once, row_bytes apart) wait less on memory.
// perf, bf16 prefill: the transposes and these prefetches 688 -> 507 samples of ~13,000 (too
// little to show in wall time on this box).
inline void prefetch_next_block(const char* next, int64_t next_rows, size_t row_bytes, int64_t pn,
                                int64_t panel_count) {
  const int64_t r0 = next_rows * pn / panel_count, r1 = next_rows * (pn + 1) / panel_count;
  for (int64_t r = r0; r < r1; ++r)
    for (size_t b = 0; b < row_bytes; b += 64) _mm_prefetch(next + r * row_bytes + b, _MM_HINT_T1);
}

// ---- bf16 GEMM (AVX-512 BF16): many activation rows against bf16 weight rows ----
//
// VDPBF16PS multiplies bf16 pairs exactly and adds both products to an F32 lane, twice the
// multiply-adds of an F32 FMA per instruction. The activations are rounded to bf16 once per op
// into row panels (kBf16PanelRows rows, each k-pair one 32-bit word per row, so a row's word is
// one embedded broadcast); a block of 32 weight rows is transposed into pair columns (32 words
// per k-pair, two vectors) once per block and then meets every panel: a 14 x 32 register tile,
// 28 accumulators, the whole k in registers, each output written once.

CEPE_AVX512BF16 void pack_bf16_pairs_avx512bf16(const float* x, int64_t m, int64_t k,
                                                uint32_t* panels) {
  static_assert(kBf16PanelRows <= 16, "a panel is one 16-row register transpose");
  const int64_t kp = (k + 1) / 2;
  const int64_t panel_count = (m + kBf16PanelRows - 1) / kBf16PanelRows;
  // 16 pairs of each panel row rounded into one row of `square` (rows past the panel, or past
  // m, stay zero), then transposed into the panel: 16 pair columns of 14 words.
  alignas(64) uint32_t square[16 * 16] = {};
  for (int64_t pn = 0; pn < panel_count; ++pn) {
    uint32_t* panel = panels + pn * kp * kBf16PanelRows;
    const int64_t live_rows = std::min(kBf16PanelRows, m - pn * kBf16PanelRows);
    if (live_rows < kBf16PanelRows) std::memset(square, 0, sizeof(square));
    for (int64_t p0 = 0; p0 < kp; p0 += 16) {
      const int64_t t = 2 * p0;
      for (int64_t r = 0; r < live_rows; ++r) {
        const float* xi = x + (pn * kBf16PanelRows + r) * k + t;
        // 32 values (16 pairs) per conversion; the tail is loaded under a mask (zeros past k).
        const __m512bh b =
            _mm512_cvtne2ps_pbh(_mm512_maskz_loadu_ps(low_lanes(k - t - 16), xi + 16),
                                _mm512_maskz_loadu_ps(low_lanes(k - t), xi));
        _mm512_store_si512(square + r * 16, (__m512i)b);
      }
      transpose_words16(reinterpret_cast<const uint8_t*>(square), 64, panel + p0 * kBf16PanelRows,
                        kBf16PanelRows, DType::F32,
                        static_cast<int>(std::min<int64_t>(16, kp - p0)), kBf16PanelRows);
    }
  }
}

// Weight rows [0, rows) of a block (rows <= 32) as pair columns: word p * 32 + j holds
// w[j][2p] (low half) and w[j][2p + 1]; rows past `rows` and the pair past an odd k are zero.
void pack_bf16_block(const uint16_t* w, int64_t rows, int64_t k, uint32_t* block) {
  const int64_t kp = (k + 1) / 2, whole = k / 2;
  if (rows < kBf16BlockCols || whole < kp)
    std::memset(block, 0, static_cast<size_t>(kp * kBf16BlockCols) * sizeof(uint32_t));
  // 16 pairs of 16 rows at a time through a register transpose, the rest word by word.
  const int64_t vector_pairs = rows == kBf16BlockCols ? whole / 16 * 16 : 0;
  for (int64_t p0 = 0; p0 < vector_pairs; p0 += 16)
    for (int64_t j0 = 0; j0 < kBf16BlockCols; j0 += 16)
      transpose_words16(reinterpret_cast<const uint8_t*>(w + j0 * k + 2 * p0), k * 2,
                        block + p0 * kBf16BlockCols + j0, kBf16BlockCols);
  for (int64_t j = 0; j < rows; ++j) {
    const uint16_t* src = w + j * k;
    for (int64_t p = vector_pairs; p < whole; ++p) {
      uint32_t word;
      std::memcpy(&word, src + 2 * p, sizeof(word));
      block[p * kBf16BlockCols + j] = word;
    }
    if (whole < kp) block[whole * kBf16BlockCols + j] = src[k - 1];
  }
}

template <int MR>
CEPE_AVX512BF16 void bf16_tile_avx512bf16(const uint32_t* panel, const uint32_t* block, int64_t kp,
                                          float* out, int64_t ldo, int64_t rows, __mmask16 m0,
                                          __mmask16 m1, bool accumulate) {
  __m512 c0[MR], c1[MR];
#pragma GCC unroll 16
  for (int r = 0; r < MR; ++r) c0[r] = c1[r] = _mm512_setzero_ps();
  for (int64_t p = 0; p < kp; ++p) {
    const __m512bh b0 = (__m512bh)_mm512_loadu_si512(block + p * kBf16BlockCols);
    const __m512bh b1 = (__m512bh)_mm512_loadu_si512(block + p * kBf16BlockCols + 16);
    const uint32_t* a = panel + p * kBf16PanelRows;
#pragma GCC unroll 16
    for (int r = 0; r < MR; ++r) {
      const __m512bh ar = (__m512bh)_mm512_set1_epi32(static_cast<int>(a[r]));
      c0[r] = _mm512_dpbf16_ps(c0[r], ar, b0);
      c1[r] = _mm512_dpbf16_ps(c1[r], ar, b1);
    }
  }
#pragma GCC unroll 16
  for (int r = 0; r < MR; ++r) {
    if (r >= rows) break;
    store_tile_row(out + r * ldo, m0, m1, c0[r], c1[r], accumulate);
  }
}

CEPE_AVX512BF16 void gemm_bf16_pairs_avx512bf16(const uint32_t* panels, int64_t m, int64_t k,
                                                const uint16_t* w, int64_t n, float* out,
                                                int64_t ldo, bool accumulate, uint32_t* scratch) {
  const int64_t kp = (k + 1) / 2;
  const int64_t panel_count = (m + kBf16PanelRows - 1) / kBf16PanelRows;
  for (int64_t j0 = 0; j0 < n; j0 += kBf16BlockCols) {
    const int64_t cols = std::min(kBf16BlockCols, n - j0);
    pack_bf16_block(w + j0 * k, cols, k, scratch);
    const int64_t next_rows = std::max<int64_t>(0, std::min(kBf16BlockCols, n - j0 - cols));
    for (int64_t pn = 0; pn < panel_count; ++pn) {
      const int64_t r0 = pn * kBf16PanelRows;
      prefetch_next_block(reinterpret_cast<const char*>(w + (j0 + cols) * k), next_rows,
                          static_cast<size_t>(k) * 2, pn, panel_count);
      bf16_tile_avx512bf16<kBf16PanelRows>(
          panels + pn * kp * kBf16PanelRows, scratch, kp, out + r0 * ldo + j0, ldo,
          std::min(kBf16PanelRows, m - r0), low_lanes(cols), low_lanes(cols - 16), accumulate);
    }
  }
}

// ---- F32 GEMM (AVX-512): many activation rows against F32, F16 or bf16 weight rows ----
//
// The same blocking as the bf16 GEMM with F32 operands: activations copied once per op into
// 14-row panels (word t * 14 + r is x[r][t]), each block of 32 weight rows widened and
// transposed once (word t * 32 + j is w[j][t]), a 14 x 32 register tile of FMAs over the whole
// k. Every output is one FMA chain in k order, so a row's result does not depend on the rows
// beside it, and widened 16-bit weights give the F32 path's arithmetic exactly.

// m rows of k values, rows ldx floats apart, into F32 panels.
CEPE_AVX512 void pack_f32_rows_avx512(const float* x, int64_t ldx, int64_t m, int64_t k,
                                      float* panels) {
  static_assert(kF32PanelRows <= 16, "a panel is one 16-row register transpose");
  const int64_t panel_count = (m + kF32PanelRows - 1) / kF32PanelRows;
  // 16 columns of 16 rows at a time through a register transpose, reading x in place where 16
  // rows exist (the 2 past the panel are read and dropped); the last panels, and the columns
  // past a multiple of 16, go through `square` with zeros past m and k.
  alignas(64) float square[16 * 16];
  for (int64_t pn = 0; pn < panel_count; ++pn) {
    float* panel = panels + pn * k * kF32PanelRows;
    const int64_t i0 = pn * kF32PanelRows, live_rows = std::min(kF32PanelRows, m - i0);
    const bool in_place = i0 + 16 <= m;
    for (int64_t t0 = 0; t0 < k; t0 += 16) {
      const int columns = static_cast<int>(std::min<int64_t>(16, k - t0));
      const float* src = x + i0 * ldx + t0;
      int64_t stride = ldx;
      if (!in_place || columns < 16) {
        for (int64_t r = 0; r < 16; ++r)
          _mm512_store_ps(square + r * 16,
                          r < live_rows ? _mm512_maskz_loadu_ps(low_lanes(columns), src + r * ldx)
                                        : _mm512_setzero_ps());
        src = square;
        stride = 16;
      }
      transpose_words16(reinterpret_cast<const uint8_t*>(src), stride * 4,
                        reinterpret_cast<uint32_t*>(panel + t0 * kF32PanelRows), kF32PanelRows,
                        DType::F32, columns, kF32PanelRows);
    }
  }
}

CEPE_AVX512 void pack_f32_panels_avx512(const float* x, int64_t m, int64_t k, float* panels) {
  pack_f32_rows_avx512(x, k, m, k, panels);
}

// Rows [0, rows) of a weight block widened to F32 and transposed (rows past `rows` are zero);
// `row` is k floats of scratch for 16-bit rows.
CEPE_AVX512 void pack_f32_block(const void* w, DType type, int64_t rows, int64_t k, float* row,
                                float* block) {
  if (rows < kF32BlockCols)
    std::memset(block, 0, static_cast<size_t>(k * kF32BlockCols) * sizeof(float));
  const size_t row_bytes = dtype_row_bytes(type, k);
  const char* base = static_cast<const char*>(w);
  // A whole block: 16 x 16 register transposes (16-bit rows widened on the way), then the
  // columns past them.
  int64_t t0 = 0;
  if (rows == kF32BlockCols) {
    const int64_t value_bytes = type == DType::F32 ? 4 : 2;
    for (; t0 + 16 <= k; t0 += 16)
      for (int64_t j0 = 0; j0 < kF32BlockCols; j0 += 16)
        transpose_words16(
            reinterpret_cast<const uint8_t*>(base + j0 * row_bytes) + t0 * value_bytes,
            static_cast<int64_t>(row_bytes),
            reinterpret_cast<uint32_t*>(block) + t0 * kF32BlockCols + j0, kF32BlockCols, type);
  }
  for (int64_t j = 0; t0 < k && j < rows; ++j) {
    const void* src = base + j * row_bytes;
    const float* wide = row;
    if (type == DType::F16)
      widen_f16_avx2(static_cast<const uint16_t*>(src) + t0, row, k - t0);
    else if (type == DType::BF16)
      widen_bf16_avx2(static_cast<const uint16_t*>(src) + t0, row, k - t0);
    else
      wide = static_cast<const float*>(src) + t0;
    for (int64_t t = t0; t < k; ++t) block[t * kF32BlockCols + j] = wide[t - t0];
  }
}

template <int MR>
CEPE_AVX512 void f32_tile_avx512(const float* panel, const float* block, int64_t k, float* out,
                                 int64_t ldo, int64_t rows, __mmask16 m0, __mmask16 m1,
                                 bool accumulate) {
  __m512 c0[MR], c1[MR];
#pragma GCC unroll 16
  for (int r = 0; r < MR; ++r) c0[r] = c1[r] = _mm512_setzero_ps();
  for (int64_t t = 0; t < k; ++t) {
    const __m512 b0 = _mm512_loadu_ps(block + t * kF32BlockCols);
    const __m512 b1 = _mm512_loadu_ps(block + t * kF32BlockCols + 16);
    const float* a = panel + t * kF32PanelRows;
#pragma GCC unroll 16
    for (int r = 0; r < MR; ++r) {
      const __m512 ar = _mm512_set1_ps(a[r]);
      c0[r] = _mm512_fmadd_ps(ar, b0, c0[r]);
      c1[r] = _mm512_fmadd_ps(ar, b1, c1[r]);
    }
  }
#pragma GCC unroll 16
  for (int r = 0; r < MR; ++r) {
    if (r >= rows) break;
    store_tile_row(out + r * ldo, m0, m1, c0[r], c1[r], accumulate);
  }
}

CEPE_AVX512 void gemm_f32_panels_avx512(const float* panels, int64_t m, int64_t k, const void* w,
                                        DType type, int64_t n, float* out, int64_t ldo,
                                        bool accumulate, float* scratch) {
  const int64_t panel_count = (m + kF32PanelRows - 1) / kF32PanelRows;
  const size_t row_bytes = dtype_row_bytes(type, k);
  float* block = scratch;
  float* row = scratch + k * kF32BlockCols;
  for (int64_t j0 = 0; j0 < n; j0 += kF32BlockCols) {
    const int64_t cols = std::min(kF32BlockCols, n - j0);
    pack_f32_block(static_cast<const char*>(w) + j0 * row_bytes, type, cols, k, row, block);
    const int64_t next_rows = std::max<int64_t>(0, std::min(kF32BlockCols, n - j0 - cols));
    for (int64_t pn = 0; pn < panel_count; ++pn) {
      const int64_t r0 = pn * kF32PanelRows;
      prefetch_next_block(static_cast<const char*>(w) + (j0 + cols) * row_bytes, next_rows,
                          row_bytes, pn, panel_count);
      f32_tile_avx512<kF32PanelRows>(panels + pn * k * kF32PanelRows, block, k, out + r0 * ldo + j0,
                                     ldo, std::min(kF32PanelRows, m - r0), low_lanes(cols),
                                     low_lanes(cols - 16), accumulate);
    }
  }
}

// ---- attention rows over prepared keys (AVX-512): prefill and encoder ----
//
// The F32 panel GEMM's register tile does both products of one head's attention: the scores
// (a panel of query rows against blocks of 32 keys laid like weight blocks, k = head_dim) and the
// weighted values (the softmaxed scores packed as a panel against the values, k = keys). The keys
// and values of a head are laid out once per call and then serve every query row; F16 cache rows
// are widened as they are laid, so the arithmetic is that of F32 keys holding the rounded values.

CEPE_AVX512 void pack_attention_kv_avx512(const void* k, const void* v, DType type, int64_t n,
                                          int64_t ld, int64_t hd, float* keys_t, float* values) {
  const int64_t kp = attention_padded_keys(n);
  const int64_t value_bytes = type == DType::F16 ? 2 : 4;
  const char* kb = static_cast<const char*>(k);
  const char* vb = static_cast<const char*>(v);
  const int64_t row_bytes = ld * value_bytes;
  auto value_at = [&](const char* base, int64_t j, int64_t t) {
    const char* p = base + j * row_bytes + t * value_bytes;
    return type == DType::F16 ? f16_to_f32(*reinterpret_cast<const uint16_t*>(p))
                              : *reinterpret_cast<const float*>(p);
  };
  // Keys: block b holds word t * 32 + j = key 32b + j's value t; keys past n are zero.
  if (kp > n)
    std::memset(keys_t + (kp / kF32BlockCols - 1) * hd * kF32BlockCols, 0,
                static_cast<size_t>(hd * kF32BlockCols) * sizeof(float));
  const int64_t vector_keys = hd % 16 == 0 ? n / 16 * 16 : 0;
  for (int64_t j0 = 0; j0 < vector_keys; j0 += 16) {
    float* block = keys_t + (j0 / kF32BlockCols) * hd * kF32BlockCols + j0 % kF32BlockCols;
    for (int64_t t0 = 0; t0 < hd; t0 += 16)
      transpose_words16(reinterpret_cast<const uint8_t*>(kb + j0 * row_bytes + t0 * value_bytes),
                        row_bytes, reinterpret_cast<uint32_t*>(block + t0 * kF32BlockCols),
                        kF32BlockCols, type);
  }
  for (int64_t j = vector_keys; j < n; ++j) {
    float* block = keys_t + (j / kF32BlockCols) * hd * kF32BlockCols + j % kF32BlockCols;
    for (int64_t t = 0; t < hd; ++t) block[t * kF32BlockCols] = value_at(kb, j, t);
  }
  // Values: 32 columns at a time, word j * 32 + d of part h = value 32h + d of key j; columns
  // past hd and keys past n are zero.
  const int64_t parts = (hd + kF32BlockCols - 1) / kF32BlockCols;
  for (int64_t j = 0; j < kp; ++j)
    for (int64_t h = 0; h < parts; ++h) {
      float* dst = values + (h * kp + j) * kF32BlockCols;
      const int64_t d0 = h * kF32BlockCols, cols = std::min(kF32BlockCols, hd - d0);
      for (int64_t half = 0; half < kF32BlockCols; half += 16) {
        const __mmask16 live = j < n ? low_lanes(cols - half) : 0;
        const char* src = vb + j * row_bytes + (d0 + half) * value_bytes;
        const __m512 x = type == DType::F16 ? _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(live, src))
                                            : _mm512_maskz_loadu_ps(live, src);
        _mm512_storeu_ps(dst + half, x);
      }
    }
}

CEPE_AVX512 void attention_rows_avx512(const float* q, int64_t ldq, int64_t rows, int64_t hd,
                                       const float* keys_t, const float* values, int64_t n,
                                       const int64_t* visible, float scale, float* out, int64_t ldo,
                                       float* partial_stats, float* scratch) {
  const int64_t kp = attention_padded_keys(n);
  int64_t used = 0;  // keys any row sees, rounded up to whole blocks
  for (int64_t r = 0; r < rows; ++r) used = std::max(used, std::min(visible[r], n));
  const int64_t width = attention_padded_keys(used);
  float* q_panel = scratch;
  float* scores = q_panel + hd * kF32PanelRows;
  float* p_panel = scores + kF32PanelRows * kp;
  if (width == 0) {
    for (int64_t r = 0; r < rows; ++r) {
      std::fill(out + r * ldo, out + r * ldo + hd, 0.0f);
      if (partial_stats) {
        partial_stats[r * ldo] = -INFINITY;
        partial_stats[r * ldo + 1] = 0.0f;
      }
    }
    return;
  }
  pack_f32_rows_avx512(q, ldq, rows, hd, q_panel);
  for (int64_t j0 = 0; j0 < width; j0 += kF32BlockCols)
    f32_tile_avx512<kF32PanelRows>(q_panel, keys_t + j0 * hd, hd, scores + j0, width, kF32PanelRows,
                                   0xffff, 0xffff, false);
  const __m512 vscale = _mm512_set1_ps(scale);
  for (int64_t r = 0; r < rows; ++r) {
    float* srow = scores + r * width;
    const int64_t seen = std::max<int64_t>(0, std::min(visible[r], n));
    if (seen > 0) {
      for (int64_t j = 0; j < seen; j += 16) {
        const __mmask16 live = low_lanes(seen - j);
        _mm512_mask_storeu_ps(srow + j, live,
                              _mm512_mul_ps(_mm512_maskz_loadu_ps(live, srow + j), vscale));
      }
      float mx;
      const float sum = softmax_exp_avx512(srow, seen, &mx);
      if (partial_stats) {
        partial_stats[r * ldo] = mx;
        partial_stats[r * ldo + 1] = sum;
      } else {
        const __m512 inv = _mm512_set1_ps(1.0f / sum);
        for (int64_t j = 0; j < seen; j += 16) {
          const __mmask16 live = low_lanes(seen - j);
          _mm512_mask_storeu_ps(srow + j, live,
                                _mm512_mul_ps(_mm512_maskz_loadu_ps(live, srow + j), inv));
        }
      }
    } else if (partial_stats) {
      partial_stats[r * ldo] = -INFINITY;
      partial_stats[r * ldo + 1] = 0.0f;
    }
    // Keys a row does not see weigh nothing (no key at all: the output row is zero).
    std::fill(srow + seen, srow + width, 0.0f);
  }
  pack_f32_rows_avx512(scores, width, rows, width, p_panel);
  for (int64_t d0 = 0; d0 < hd; d0 += kF32BlockCols) {
    const int64_t cols = std::min(kF32BlockCols, hd - d0);
    f32_tile_avx512<kF32PanelRows>(p_panel, values + d0 / kF32BlockCols * kp * kF32BlockCols, width,
                                   out + d0, ldo, rows, low_lanes(cols), low_lanes(cols - 16),
                                   false);
  }
}

// ---- one query row against a block of cache rows (decode steps) ----

// Where attend_row_block finds head h's slice of cache row j: rows kv_stride elements apart,
// F32 or F16, head h reading kv head h / group.
struct CacheRows {
  CacheRows(int64_t kv_stride, int64_t hd, int group, bool f16)
      : row_bytes(static_cast<size_t>(kv_stride) * (f16 ? 2 : 4)),
        head_bytes(static_cast<size_t>(hd) * (f16 ? 2 : 4)),
        group(group) {}
  const char* operator()(const void* base, int64_t j, int h) const {
    return static_cast<const char*>(base) + j * row_bytes + (h / group) * head_bytes;
  }
  size_t row_bytes, head_bytes;
  int group;
};

// attend_row_block's partial results before its value pass, from each head's n scores: the max
// score, Σ e^(s - max) (the scores becoming those numerators), and the head's hd output sums
// zeroed. SoftmaxExp is the level's softmax_exp.
template <float (*SoftmaxExp)(float*, int64_t, float*)>
void start_partials(float* scores, int64_t n, int heads, int64_t hd, float* part,
                    int64_t part_stride) {
  for (int h = 0; h < heads; ++h) {
    float* ph = part + h * part_stride;
    ph[1] = SoftmaxExp(scores + h * n, n, &ph[0]);
    std::fill(ph + 2, ph + 2 + hd, 0.0f);
  }
}

// Eight vectors' horizontal sums as one vector: lane j of the result is Σ v[j] (the AVX2 form of
// sum16_avx512 below).
CEPE_AVX2 inline __m256 sum8_avx2(const __m256* v) {
  __m256 a[4], b[2];
  for (int i = 0; i < 4; ++i)
    a[i] = _mm256_add_ps(_mm256_unpacklo_ps(v[2 * i], v[2 * i + 1]),
                         _mm256_unpackhi_ps(v[2 * i], v[2 * i + 1]));
  for (int i = 0; i < 2; ++i) {
    const __m256d x = _mm256_castps_pd(a[2 * i]), y = _mm256_castps_pd(a[2 * i + 1]);
    b[i] = _mm256_add_ps(_mm256_castpd_ps(_mm256_unpacklo_pd(x, y)),
                         _mm256_castpd_ps(_mm256_unpackhi_pd(x, y)));
  }
  // Each 128-bit lane of b[i] holds that lane's sums of v4i .. v4i+3.
  return _mm256_add_ps(_mm256_permute2f128_ps(b[0], b[1], 0x20),
                       _mm256_permute2f128_ps(b[0], b[1], 0x31));
}

// Element t of a cache row, widened to F32: 8 of them at once.
CEPE_AVX2 inline __m256 load_cache_avx2(const void* row, bool f16, int64_t t) {
  return f16 ? load_f16_avx2(static_cast<const uint16_t*>(row) + t)
             : _mm256_loadu_ps(static_cast<const float*>(row) + t);
}

// out[0, 8 VECS) += Σ_j p_j row_j[t0, t0 + 8 VECS): the value pass's sums in registers over
// the keys of one block (VECS at most 8, so that the sums and a row's vectors fit the 16 ymm).
template <int VECS>
CEPE_AVX2 inline void accumulate_rows_avx2(const float* p, int64_t keys, const char* rows,
                                           size_t row_bytes, bool f16, int64_t t0, float* out) {
  __m256 acc[VECS];
  for (int c = 0; c < VECS; ++c) acc[c] = _mm256_loadu_ps(out + c * 8);
  for (int64_t j = 0; j < keys; ++j) {
    const __m256 pj = _mm256_set1_ps(p[j]);
    const char* row = rows + j * row_bytes;
    for (int c = 0; c < VECS; ++c)
      acc[c] = _mm256_fmadd_ps(pj, load_cache_avx2(row, f16, t0 + c * 8), acc[c]);
  }
  for (int c = 0; c < VECS; ++c) _mm256_storeu_ps(out + c * 8, acc[c]);
}

// The same for two heads that read the same rows (grouped queries whose groups are too small or
// too narrow for attend_shared): each row vector is loaded once for both heads' sums.
template <int VECS>
CEPE_AVX2 inline void accumulate_rows_pair_avx2(const float* p0, const float* p1, int64_t keys,
                                                const char* rows, size_t row_bytes, bool f16,
                                                int64_t t0, float* out0, float* out1) {
  __m256 acc0[VECS], acc1[VECS];
  for (int c = 0; c < VECS; ++c) {
    acc0[c] = _mm256_loadu_ps(out0 + c * 8);
    acc1[c] = _mm256_loadu_ps(out1 + c * 8);
  }
  for (int64_t j = 0; j < keys; ++j) {
    const __m256 a = _mm256_set1_ps(p0[j]), b = _mm256_set1_ps(p1[j]);
    const char* row = rows + j * row_bytes;
    for (int c = 0; c < VECS; ++c) {
      const __m256 v = load_cache_avx2(row, f16, t0 + c * 8);
      acc0[c] = _mm256_fmadd_ps(a, v, acc0[c]);
      acc1[c] = _mm256_fmadd_ps(b, v, acc1[c]);
    }
  }
  for (int c = 0; c < VECS; ++c) {
    _mm256_storeu_ps(out0 + c * 8, acc0[c]);
    _mm256_storeu_ps(out1 + c * 8, acc1[c]);
  }
}

// ---- query heads sharing one kv head (absorbed cross-attention's decode steps) ----
//
// When `group` query heads read one kv head they read the same cache rows: the scores are a
// small GEMM (the group's q rows against the block's key rows) and the value pass another (their
// softmax rows against the value rows). Register tiles of several heads x 4 keys (the scores) and
// several heads x a slice of columns (the values) read each row once for all the tile's heads,
// where a head at a time makes about one load per FMA. The rows go by in one pass, in chunks of
// 64 keys: a chunk's scores, its softmax numerators against the running max (the sums so far
// rescaled when a chunk raises it, as FlashAttention does), then its values, so a chunk's rows
// come from memory once and are met again in L2 (scoring every key first read E from memory
// twice once it outgrew the caches). The tiles are the level's; the driver is shared.

// Groups of at least this many heads over a kv head wider than kAttendMaxHeadDim take the tiles
// (absorbed cross-attention: every head reads E). Narrower shared heads keep the per-head
// kernels, which hold q in registers and measured faster for them (BM_AttentionDecodeGqa: 12
// heads of 64 over 3 kv heads).
constexpr int kSharedMinGroup = 4;

/// A level's tiles for attend_shared.
struct SharedHeadTiles {
  int heads;           // heads per tile (the tables' first index is heads - 1)
  int64_t value_cols;  // columns per value tile at its widest (the second index: vectors - 1)
  // Scores of HB heads (q rows hd apart) against the 4 rows kr: out[h * n + j] = scale q_h·k_j.
  void (*scores[4])(const float* q, int64_t hd, const void* const* kr, bool f16, float scale,
                    float* out, int64_t n);
  // out_h[t0, t0 + cols) += Σ_j p_h[j] row_j[t0, ...) for HB heads over `keys` rows (p rows n
  // apart, out rows out_stride apart).
  void (*values[4][4])(const float* p, int64_t n, int64_t keys, const char* rows, size_t row_bytes,
                       bool f16, int64_t t0, float* out, int64_t out_stride);
  float (*score_one)(const float* q, const void* row, bool f16, int64_t hd);  // unscaled q·k
  float (*softmax_exp)(float* s, int64_t n, float* max_out);
};

// attend_row_block for groups of at least tiles.heads heads (hd a multiple of the level's vector).
void attend_shared(const SharedHeadTiles& tiles, const float* q, const void* k, const void* v,
                   bool f16, int64_t n, int64_t kv_stride, int heads, int group, int64_t hd,
                   float scale, float* scores, float* part, int64_t part_stride) {
  const CacheRows row{kv_stride, hd, group, f16};
  const int64_t vec = tiles.value_cols / 4;
  constexpr int64_t kSubKeys = 16, kChunkKeys = 64;
  for (int h = 0; h < heads; ++h) {  // no keys yet: max -inf, sum 0, zero output sums
    float* ph = part + h * part_stride;
    ph[0] = -INFINITY;
    ph[1] = 0.0f;
    std::fill(ph + 2, ph + 2 + hd, 0.0f);
  }
  for (int g0 = 0; g0 < heads; g0 += group) {
    const int g1 = std::min(heads, g0 + group);
    for (int64_t c0 = 0; c0 < n; c0 += kChunkKeys) {
      const int64_t c1 = std::min(n, c0 + kChunkKeys);
      for (int64_t j0 = c0; j0 < c1; j0 += kSubKeys) {  // 16 keys' rows stay in L1 for the heads
        const int64_t j1 = std::min(c1, j0 + kSubKeys), whole = j0 + (j1 - j0) / 4 * 4;
        for (int h0 = g0; h0 < g1; h0 += tiles.heads) {
          const int hb = std::min(tiles.heads, g1 - h0);
          for (int64_t j = j0; j < whole; j += 4) {
            const void* kr[4] = {row(k, j, h0), row(k, j + 1, h0), row(k, j + 2, h0),
                                 row(k, j + 3, h0)};
            tiles.scores[hb - 1](q + h0 * hd, hd, kr, f16, scale, scores + h0 * n + j, n);
          }
          for (int64_t j = whole; j < j1; ++j)
            for (int h = h0; h < h0 + hb; ++h)
              scores[h * n + j] = tiles.score_one(q + h * hd, row(k, j, h), f16, hd) * scale;
        }
      }
      for (int h = g0; h < g1; ++h) {
        float* ph = part + h * part_stride;
        float* s = scores + h * n + c0;
        float chunk_max;
        float chunk_sum = tiles.softmax_exp(s, c1 - c0, &chunk_max);  // e^(s - chunk_max)
        if (chunk_max > ph[0]) {
          if (ph[1] > 0.0f) {  // the sums so far, to the new max
            const float r = std::exp(ph[0] - chunk_max);
            ph[1] *= r;
            for (int64_t t = 0; t < hd; ++t) ph[2 + t] *= r;
          }
          ph[0] = chunk_max;
        } else if (chunk_max < ph[0]) {  // this chunk's numerators, to the running max
          const float r = std::exp(chunk_max - ph[0]);
          for (int64_t j = 0; j < c1 - c0; ++j) s[j] *= r;
          chunk_sum *= r;
        }
        ph[1] += chunk_sum;
      }
      for (int64_t t0 = 0; t0 < hd; t0 += tiles.value_cols) {
        const int64_t vecs = std::min<int64_t>(4, (hd - t0) / vec);
        for (int h0 = g0; h0 < g1; h0 += tiles.heads) {
          const int hb = std::min(tiles.heads, g1 - h0);
          tiles.values[hb - 1][vecs - 1](scores + h0 * n + c0, n, c1 - c0, row(v, c0, h0),
                                         row.row_bytes, f16, t0, part + h0 * part_stride + 2 + t0,
                                         part_stride);
        }
      }
    }
  }
}

// The AVX2 tiles: 2 heads x 4 keys (8 sums, one sum8_avx2) and 2 heads x 32 columns (8 sums, 4
// row vectors, a broadcast): 13 of the 16 vector registers.
template <int HB>
CEPE_AVX2 void shared_scores_tile_avx2(const float* q, int64_t hd, const void* const* kr, bool f16,
                                       float scale, float* out, int64_t n) {
  __m256 acc[8];
  for (int i = 0; i < 8; ++i) acc[i] = _mm256_setzero_ps();
  for (int64_t t = 0; t < hd; t += 8) {
    __m256 kv[4];
    for (int j = 0; j < 4; ++j) kv[j] = load_cache_avx2(kr[j], f16, t);
    for (int h = 0; h < HB; ++h) {
      __m256 qv = _mm256_loadu_ps(q + h * hd + t);
      asm("" : "+v"(qv));  // see shared_scores_tile_avx512
      for (int j = 0; j < 4; ++j) acc[h * 4 + j] = _mm256_fmadd_ps(qv, kv[j], acc[h * 4 + j]);
    }
  }
  alignas(32) float sums[8];
  _mm256_store_ps(sums, _mm256_mul_ps(sum8_avx2(acc), _mm256_set1_ps(scale)));
  for (int h = 0; h < HB; ++h)
    for (int j = 0; j < 4; ++j) out[h * n + j] = sums[h * 4 + j];
}

template <int HB, int VECS>
CEPE_AVX2 void shared_values_tile_avx2(const float* p, int64_t n, int64_t keys, const char* rows,
                                       size_t row_bytes, bool f16, int64_t t0, float* out,
                                       int64_t out_stride) {
  __m256 acc[HB][VECS];
  for (int h = 0; h < HB; ++h)
    for (int c = 0; c < VECS; ++c) acc[h][c] = _mm256_loadu_ps(out + h * out_stride + c * 8);
  for (int64_t j = 0; j < keys; ++j) {
    __m256 vv[VECS];
    for (int c = 0; c < VECS; ++c) {
      vv[c] = load_cache_avx2(rows + j * row_bytes, f16, t0 + c * 8);
      asm("" : "+v"(vv[c]));
    }
    for (int h = 0; h < HB; ++h) {
      const __m256 ph = _mm256_set1_ps(p[h * n + j]);
      for (int c = 0; c < VECS; ++c) acc[h][c] = _mm256_fmadd_ps(ph, vv[c], acc[h][c]);
    }
  }
  for (int h = 0; h < HB; ++h)
    for (int c = 0; c < VECS; ++c) _mm256_storeu_ps(out + h * out_stride + c * 8, acc[h][c]);
}

// q·k for one head's q and one cache row (unscaled): the tiles' tail, and the per-head kernel's.
CEPE_AVX2 float dot_cache_row_avx2(const float* q, const void* row, bool f16, int64_t hd) {
  __m256 acc = _mm256_setzero_ps();
  for (int64_t t = 0; t < hd; t += 8)
    acc = _mm256_fmadd_ps(_mm256_loadu_ps(q + t), load_cache_avx2(row, f16, t), acc);
  return hsum_avx2(acc);
}

const SharedHeadTiles kSharedTilesAvx2{
    2,
    32,
    {shared_scores_tile_avx2<1>, shared_scores_tile_avx2<2>, nullptr, nullptr},
    {{shared_values_tile_avx2<1, 1>, shared_values_tile_avx2<1, 2>, shared_values_tile_avx2<1, 3>,
      shared_values_tile_avx2<1, 4>},
     {shared_values_tile_avx2<2, 1>, shared_values_tile_avx2<2, 2>, shared_values_tile_avx2<2, 3>,
      shared_values_tile_avx2<2, 4>},
     {},
     {}},
    dot_cache_row_avx2,
    softmax_exp_avx2};

// attend_row_block at AVX2 (hd a multiple of 8): as the AVX-512 kernel below, eight keys at a
// time, their scores out of one sum8_avx2; q is read from L1 rather than held in registers
// (16 ymm hold eight sums and little else), and the value pass runs over the head's width in
// slices of at most 64 columns.
CEPE_AVX2 void attend_row_block_avx2(const float* q, const void* k, const void* v, bool f16,
                                     int64_t n, int64_t kv_stride, int heads, int group, int64_t hd,
                                     float scale, float* scores, float* part, int64_t part_stride) {
  if (group >= kSharedMinGroup && hd > kAttendMaxHeadDim)  // wide heads shared: the tiles
    return attend_shared(kSharedTilesAvx2, q, k, v, f16, n, kv_stride, heads, group, hd, scale,
                         scores, part, part_stride);
  const CacheRows row{kv_stride, hd, group, f16};
  const size_t row_bytes = row.row_bytes;
  const int64_t whole = n / 8 * 8;
  const __m256 vscale = _mm256_set1_ps(scale);
  for (int64_t j0 = 0; j0 < whole; j0 += 8)
    for (int h = 0; h < heads; ++h) {
      const float* qh = q + h * hd;
      const char* kr = row(k, j0, h);
      __m256 acc[8];
      for (int j = 0; j < 8; ++j) acc[j] = _mm256_setzero_ps();
      for (int64_t t = 0; t < hd; t += 8) {
        const __m256 qv = _mm256_loadu_ps(qh + t);
        for (int j = 0; j < 8; ++j)
          acc[j] = _mm256_fmadd_ps(qv, load_cache_avx2(kr + j * row_bytes, f16, t), acc[j]);
      }
      _mm256_storeu_ps(scores + h * n + j0, _mm256_mul_ps(sum8_avx2(acc), vscale));
    }
  for (int64_t j = whole; j < n; ++j)
    for (int h = 0; h < heads; ++h)
      scores[h * n + j] = dot_cache_row_avx2(q + h * hd, row(k, j, h), f16, hd) * scale;
  start_partials<softmax_exp_avx2>(scores, n, heads, hd, part, part_stride);
  using Slice = void (*)(const float*, int64_t, const char*, size_t, bool, int64_t, float*);
  static constexpr Slice by_vecs[] = {accumulate_rows_avx2<1>, accumulate_rows_avx2<2>,
                                      accumulate_rows_avx2<3>, accumulate_rows_avx2<4>,
                                      accumulate_rows_avx2<5>, accumulate_rows_avx2<6>,
                                      accumulate_rows_avx2<7>, accumulate_rows_avx2<8>};
  using PairSlice = void (*)(const float*, const float*, int64_t, const char*, size_t, bool,
                             int64_t, float*, float*);
  static constexpr PairSlice pair_by_vecs[] = {
      accumulate_rows_pair_avx2<1>, accumulate_rows_pair_avx2<2>, accumulate_rows_pair_avx2<3>,
      accumulate_rows_pair_avx2<4>};
  for (int64_t j0 = 0; j0 < n; j0 += 16) {
    const int64_t keys = std::min<int64_t>(16, n - j0);
    for (int h = 0; h < heads;) {
      if (h + 1 < heads && h / group == (h + 1) / group) {  // two heads, one kv head
        for (int64_t t0 = 0; t0 < hd; t0 += 32)
          pair_by_vecs[std::min<int64_t>(4, (hd - t0) / 8) - 1](
              scores + h * n + j0, scores + (h + 1) * n + j0, keys, row(v, j0, h), row_bytes, f16,
              t0, part + h * part_stride + 2 + t0, part + (h + 1) * part_stride + 2 + t0);
        h += 2;
        continue;
      }
      for (int64_t t0 = 0; t0 < hd; t0 += 64)
        by_vecs[std::min<int64_t>(8, (hd - t0) / 8) - 1](scores + h * n + j0, keys, row(v, j0, h),
                                                         row_bytes, f16, t0,
                                                         part + h * part_stride + 2 + t0);
      ++h;
    }
  }
}

// Sixteen vectors' horizontal sums as one vector: lane j of the result is Σ v[j]. A tree of
// in-lane unpacks, then 128-bit lane shuffles: 45 instructions where sixteen separate
// reductions take ~130, which at decode, one query row against few keys, were most of the work.
CEPE_AVX512 inline __m512 sum16_avx512(const __m512* v) {
  __m512 a[8], b[4], c[2];
  for (int i = 0; i < 8; ++i)
    a[i] = _mm512_add_ps(_mm512_unpacklo_ps(v[2 * i], v[2 * i + 1]),
                         _mm512_unpackhi_ps(v[2 * i], v[2 * i + 1]));
  // Per 128-bit lane, a[i] holds [v2i(0+2), v2i+1(0+2), v2i(1+3), v2i+1(1+3)]; pairing 64-bit
  // halves leaves lane l of b[i] with the lane-l sums of v4i .. v4i+3.
  for (int i = 0; i < 4; ++i) {
    const __m512d x = _mm512_castps_pd(a[2 * i]), y = _mm512_castps_pd(a[2 * i + 1]);
    b[i] = _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(x, y)),
                         _mm512_castpd_ps(_mm512_unpackhi_pd(x, y)));
  }
  for (int i = 0; i < 2; ++i)
    c[i] = _mm512_add_ps(_mm512_shuffle_f32x4(b[2 * i], b[2 * i + 1], 0x88),
                         _mm512_shuffle_f32x4(b[2 * i], b[2 * i + 1], 0xdd));
  return _mm512_add_ps(_mm512_shuffle_f32x4(c[0], c[1], 0x88),
                       _mm512_shuffle_f32x4(c[0], c[1], 0xdd));
}

// Element t of a cache row, widened to F32: 16 of them at once.
CEPE_AVX512 inline __m512 load_cache_avx512(const void* row, bool f16, int64_t t) {
  return f16 ? load_f16_avx512(static_cast<const uint16_t*>(row) + t)
             : _mm512_loadu_ps(static_cast<const float*>(row) + t);
}

// VECS: the head's width in vectors (hd / 16), a constant so that q and the sums stay in
// registers. Both passes take sixteen keys at a time, every head reading its slice of their rows
// (24-48 KB, so they stay in L1/L2 from one head to the next): the scores of sixteen keys come
// out of one sum16_avx512, and each head's output sums stay in registers over the sixteen.
template <int VECS>
CEPE_AVX512 void attend_row_block_avx512(const float* q, const void* k, const void* v, bool f16,
                                         int64_t n, int64_t kv_stride, int heads, int group,
                                         float scale, float* scores, float* part,
                                         int64_t part_stride) {
  constexpr int64_t hd = VECS * 16;
  const CacheRows row{kv_stride, hd, group, f16};
  const int64_t whole = n / 16 * 16;
  const __m512 vscale = _mm512_set1_ps(scale);
  for (int64_t j0 = 0; j0 < whole; j0 += 16)
    for (int h = 0; h < heads; ++h) {
      __m512 qv[VECS], acc[16];
      for (int c = 0; c < VECS; ++c) qv[c] = _mm512_loadu_ps(q + h * hd + c * 16);
      for (int j = 0; j < 16; ++j) {
        const void* kr = row(k, j0 + j, h);
        acc[j] = _mm512_mul_ps(qv[0], load_cache_avx512(kr, f16, 0));
        for (int c = 1; c < VECS; ++c)
          acc[j] = _mm512_fmadd_ps(qv[c], load_cache_avx512(kr, f16, c * 16), acc[j]);
      }
      _mm512_storeu_ps(scores + h * n + j0, _mm512_mul_ps(sum16_avx512(acc), vscale));
    }
  for (int64_t j = whole; j < n; ++j)
    for (int h = 0; h < heads; ++h) {
      const void* kr = row(k, j, h);
      __m512 acc = _mm512_mul_ps(_mm512_loadu_ps(q + h * hd), load_cache_avx512(kr, f16, 0));
      for (int c = 1; c < VECS; ++c)
        acc = _mm512_fmadd_ps(_mm512_loadu_ps(q + h * hd + c * 16),
                              load_cache_avx512(kr, f16, c * 16), acc);
      scores[h * n + j] = hsum_avx512(acc) * scale;
    }
  start_partials<softmax_exp_avx512>(scores, n, heads, hd, part, part_stride);
  // Σ_j p_j v_j: per batch and head, the head's sums in registers over the sixteen keys.
  for (int64_t j0 = 0; j0 < n; j0 += 16)
    for (int h = 0; h < heads; ++h) {
      float* out = part + h * part_stride + 2;
      __m512 acc[VECS];
      for (int c = 0; c < VECS; ++c) acc[c] = _mm512_loadu_ps(out + c * 16);
      for (int64_t j = j0; j < std::min(n, j0 + 16); ++j) {
        const __m512 p = _mm512_set1_ps(scores[h * n + j]);
        const void* vr = row(v, j, h);
        for (int c = 0; c < VECS; ++c)
          acc[c] = _mm512_fmadd_ps(p, load_cache_avx512(vr, f16, c * 16), acc[c]);
      }
      for (int c = 0; c < VECS; ++c) _mm512_storeu_ps(out + c * 16, acc[c]);
    }
}

// ---- query heads sharing one kv head: the AVX-512 tiles (see attend_shared) ----

// Scores of HB heads (q rows hd apart) against the 4 rows kr: out[h * n + j] = scale · q_h·k_j.
template <int HB>
CEPE_AVX512 void shared_scores_tile_avx512(const float* q, int64_t hd, const void* const* kr,
                                           bool f16, float scale, float* out, int64_t n) {
  __m512 acc[16];
  for (int i = 0; i < 16; ++i) acc[i] = _mm512_setzero_ps();
  for (int64_t t = 0; t < hd; t += 16) {
    __m512 kv[4];
    for (int j = 0; j < 4; ++j) kv[j] = load_cache_avx512(kr[j], f16, t);
    for (int h = 0; h < HB; ++h) {
      __m512 qv = _mm512_loadu_ps(q + h * hd + t);
      // In a register (here and for the rows below): GCC would otherwise fold the load into each
      // of the four multiply-adds, four loads where one is meant.
      asm("" : "+v"(qv));
      for (int j = 0; j < 4; ++j) acc[h * 4 + j] = _mm512_fmadd_ps(qv, kv[j], acc[h * 4 + j]);
    }
  }
  alignas(64) float sums[16];
  _mm512_store_ps(sums, _mm512_mul_ps(sum16_avx512(acc), _mm512_set1_ps(scale)));
  for (int h = 0; h < HB; ++h)
    for (int j = 0; j < 4; ++j) out[h * n + j] = sums[h * 4 + j];
}

// out_h[0, 16 VECS) += Σ_j p_h[j] row_j[t0, t0 + 16 VECS) for HB heads (p rows n apart, out rows
// out_stride apart) over `keys` rows.
template <int HB, int VECS>
CEPE_AVX512 void shared_values_tile_avx512(const float* p, int64_t n, int64_t keys,
                                           const char* rows, size_t row_bytes, bool f16, int64_t t0,
                                           float* out, int64_t out_stride) {
  __m512 acc[HB][VECS];
  for (int h = 0; h < HB; ++h)
    for (int c = 0; c < VECS; ++c) acc[h][c] = _mm512_loadu_ps(out + h * out_stride + c * 16);
  for (int64_t j = 0; j < keys; ++j) {
    __m512 vv[VECS];
    for (int c = 0; c < VECS; ++c) {
      vv[c] = load_cache_avx512(rows + j * row_bytes, f16, t0 + c * 16);
      asm("" : "+v"(vv[c]));
    }
    for (int h = 0; h < HB; ++h) {
      const __m512 ph = _mm512_set1_ps(p[h * n + j]);
      for (int c = 0; c < VECS; ++c) acc[h][c] = _mm512_fmadd_ps(ph, vv[c], acc[h][c]);
    }
  }
  for (int h = 0; h < HB; ++h)
    for (int c = 0; c < VECS; ++c) _mm512_storeu_ps(out + h * out_stride + c * 16, acc[h][c]);
}

// The AVX-512 form of dot_cache_row_avx2 (the 4-key tiles' tail).
CEPE_AVX512 float dot_cache_row_avx512(const float* q, const void* row, bool f16, int64_t hd) {
  __m512 acc = _mm512_setzero_ps();
  for (int64_t t = 0; t < hd; t += 16)
    acc = _mm512_fmadd_ps(_mm512_loadu_ps(q + t), load_cache_avx512(row, f16, t), acc);
  return hsum_avx512(acc);
}

const SharedHeadTiles kSharedTilesAvx512{
    4,
    64,
    {shared_scores_tile_avx512<1>, shared_scores_tile_avx512<2>, shared_scores_tile_avx512<3>,
     shared_scores_tile_avx512<4>},
    {{shared_values_tile_avx512<1, 1>, shared_values_tile_avx512<1, 2>,
      shared_values_tile_avx512<1, 3>, shared_values_tile_avx512<1, 4>},
     {shared_values_tile_avx512<2, 1>, shared_values_tile_avx512<2, 2>,
      shared_values_tile_avx512<2, 3>, shared_values_tile_avx512<2, 4>},
     {shared_values_tile_avx512<3, 1>, shared_values_tile_avx512<3, 2>,
      shared_values_tile_avx512<3, 3>, shared_values_tile_avx512<3, 4>},
     {shared_values_tile_avx512<4, 1>, shared_values_tile_avx512<4, 2>,
      shared_values_tile_avx512<4, 3>, shared_values_tile_avx512<4, 4>}},
    dot_cache_row_avx512,
    softmax_exp_avx512};

CEPE_AVX512 void attend_row_block_avx512(const float* q, const void* k, const void* v, bool f16,
                                         int64_t n, int64_t kv_stride, int heads, int group,
                                         int64_t hd, float scale, float* scores, float* part,
                                         int64_t part_stride) {
  if (group >= kSharedMinGroup && hd % 16 == 0 && hd > kAttendMaxHeadDim)
    return attend_shared(kSharedTilesAvx512, q, k, v, f16, n, kv_stride, heads, group, hd, scale,
                         scores, part, part_stride);
  if (hd % 16 != 0 || hd > kAttendMaxHeadDim)  // too narrow a multiple, or too wide: 8-wide
    return attend_row_block_avx2(q, k, v, f16, n, kv_stride, heads, group, hd, scale, scores, part,
                                 part_stride);
  static_assert(kAttendMaxHeadDim == 8 * 16, "one instance per head width below");
  using Fn = void (*)(const float*, const void*, const void*, bool, int64_t, int64_t, int, int,
                      float, float*, float*, int64_t);
  static constexpr Fn by_vecs[] = {attend_row_block_avx512<1>, attend_row_block_avx512<2>,
                                   attend_row_block_avx512<3>, attend_row_block_avx512<4>,
                                   attend_row_block_avx512<5>, attend_row_block_avx512<6>,
                                   attend_row_block_avx512<7>, attend_row_block_avx512<8>};
  by_vecs[hd / 16 - 1](q, k, v, f16, n, kv_stride, heads, group, scale, scores, part, part_stride);
}

// ---- packed groups (Q4_0x16, Q8_0x16): 16 weight rows per call, see pack_rows16 ----

constexpr int kRows = 16;  // rows of a packed group (kPackRows)

// A decode step (one activation row) reads each group block once and does little with it, so it
// streams the weights as fast as memory answers: asking for the lines 8 KB ahead of the block in
// hand into L2 and 2 KB ahead into L1 keeps more lines in flight than the hardware prefetchers
// do (2 threads, Xeon with AMX, tokens/s: the 134M model, whose weights stay in L3, q8_0 243 ->
// ~300-330 and q4_0 517 -> ~530-600; LLaMA-2-7B layer shapes, read from memory, q4_0 41.8 with
// L1 requests alone -> 48-51). A thread's groups lie back to back, so the lines past a group are
// the next group's.
constexpr int64_t kDecodePrefetchL2 = 8192, kDecodePrefetchL1 = 2048;
template <int64_t Bytes>
inline void prefetch_group_block(const uint8_t* block) {
  const char* p = reinterpret_cast<const char*>(block);
#pragma GCC unroll 9
  for (int64_t line = 0; line < Bytes; line += 64) {
    _mm_prefetch(p + kDecodePrefetchL2 + line, _MM_HINT_T1);
    _mm_prefetch(p + kDecodePrefetchL1 + line, _MM_HINT_T0);
  }
}

// Activation rows per tile of the tiled layouts (Kernels::q8_tile_rows): the VNNI kernel's
// register tile, the AMX kernel's tile load.
constexpr int64_t kVnniTileRows = 8, kAmxTileRows = 16;

inline void store_group_row(float* o, const float* v, bool accumulate) {
  for (int r = 0; r < kRows; ++r) o[r] = accumulate ? o[r] + v[r] : v[r];
}

// Q4_0x16 block: 32 bytes of scales, then chunks c = 0..3 whose low nibbles meet x[4c..4c+3]
// and high nibbles x[16 + 4c..]. Q8_0x16: chunks t = 0..7 of q + 128 meeting x[4t..4t+3].
// Either way the integer sum is Σ u·x − offset·Σx (offset 8 or 128), exact in int32.
template <bool Q4>
void gemm_x16_scalar(const uint8_t* g, const BlockQ8_0* x, const float* xd, const int32_t* xs,
                     int64_t m, int64_t blocks, float* out, int64_t ldo, bool accumulate) {
  constexpr int64_t quants = Q4 ? 256 : 512, stride = 32 + quants;
  constexpr int32_t offset = Q4 ? 8 : 128;
  for (int64_t i = 0; i < m; ++i) {
    float acc[kRows] = {};
    for (int64_t b = 0; b < blocks; ++b) {
      const uint8_t* blk = g + b * stride;
      const int8_t* xq = x[i * blocks + b].qs;
      for (int r = 0; r < kRows; ++r) {
        int32_t s = -offset * xs[i * blocks + b];
        for (int c = 0; c < (Q4 ? 4 : 8); ++c)
          for (int j = 0; j < 4; ++j) {
            const uint8_t u = blk[packed_quant_index(c, r, j)];
            if (Q4) {
              s += int32_t(u & 0x0f) * xq[4 * c + j] + int32_t(u >> 4) * xq[16 + 4 * c + j];
            } else {
              s += int32_t(u) * xq[4 * c + j];
            }
          }
        uint16_t d;
        std::memcpy(&d, blk + 2 * r, 2);
        acc[r] += static_cast<float>(s) * (f16_to_f32(d) * xd[i * blocks + b]);
      }
    }
    store_group_row(out + i * ldo, acc, accumulate);
  }
}

CEPE_AVX2 inline __m256i bcast4(const int8_t* p) {
  return _mm256_castps_si256(_mm256_broadcast_ss(reinterpret_cast<const float*>(p)));
}

// AVX2: each half of the group (rows 0-7, 8-15) is one 256-bit lane set. Q4_0: maddubs of the
// unsigned nibbles (<= 15) with x (|x| <= 127) gives int16 pairs <= 3810, and eight of them sum
// to <= 30480 without saturating, so one madd per block widens them. Q8_0: the stored q + 128 is
// flipped back to q and the sign trick of dot32_avx2 keeps every pair inside int16; no offset.
template <bool Q4, int R>
CEPE_AVX2 inline void gemm_x16_avx2_tile(const uint8_t* g, const BlockQ8_0* x, const float* xd,
                                         const int32_t* xs, int64_t blocks, float* out, int64_t ldo,
                                         bool accumulate) {
  constexpr int64_t quants = Q4 ? 256 : 512, stride = 32 + quants;
  constexpr int kChunks = Q4 ? 4 : 8;
  const __m256i ones = _mm256_set1_epi16(1);
  const __m256i low4 = _mm256_set1_epi8(0x0f);
  const __m256i flip = _mm256_set1_epi8(static_cast<char>(0x80));
  for (int half = 0; half < 2; ++half) {
    __m256 acc[R];
    for (int r = 0; r < R; ++r) acc[r] = _mm256_setzero_ps();
    for (int64_t b = 0; b < blocks; ++b) {
      const uint8_t* blk = g + b * stride;
      if (R == 1 && half == 0) prefetch_group_block<stride>(blk);
      const __m256 dw =
          _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(blk + 16 * half)));
      __m256i w[8];
      for (int c = 0; c < kChunks; ++c) {
        const __m256i v = _mm256_loadu_si256(
            reinterpret_cast<const __m256i*>(blk + packed_quant_index(c, 8 * half, 0)));
        if (Q4) {
          w[c] = _mm256_and_si256(v, low4);
          w[4 + c] = _mm256_and_si256(_mm256_srli_epi16(v, 4), low4);
        } else {
          w[c] = _mm256_xor_si256(v, flip);
        }
      }
      for (int r = 0; r < R; ++r) {
        const int8_t* xq = x[r * blocks + b].qs;
        __m256i s32;
        if (Q4) {
          __m256i s16 = _mm256_maddubs_epi16(w[0], bcast4(xq));
          for (int c = 1; c < 4; ++c)
            s16 = _mm256_add_epi16(s16, _mm256_maddubs_epi16(w[c], bcast4(xq + 4 * c)));
          for (int c = 0; c < 4; ++c)
            s16 = _mm256_add_epi16(s16, _mm256_maddubs_epi16(w[4 + c], bcast4(xq + 16 + 4 * c)));
          s32 = _mm256_sub_epi32(_mm256_madd_epi16(s16, ones),
                                 _mm256_set1_epi32(8 * xs[r * blocks + b]));
        } else {
          s32 = _mm256_setzero_si256();
          for (int c = 0; c < 8; ++c) {
            const __m256i p16 = _mm256_maddubs_epi16(_mm256_sign_epi8(w[c], w[c]),
                                                     _mm256_sign_epi8(bcast4(xq + 4 * c), w[c]));
            s32 = _mm256_add_epi32(s32, _mm256_madd_epi16(p16, ones));
          }
        }
        const __m256 d = _mm256_mul_ps(dw, _mm256_set1_ps(xd[r * blocks + b]));
        acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s32), d, acc[r]);
      }
    }
    for (int r = 0; r < R; ++r) {
      float* o = out + r * ldo + 8 * half;
      _mm256_storeu_ps(o, accumulate ? _mm256_add_ps(_mm256_loadu_ps(o), acc[r]) : acc[r]);
    }
  }
}

template <bool Q4>
CEPE_AVX2 void gemm_x16_avx2(const uint8_t* g, const BlockQ8_0* x, const float* xd,
                             const int32_t* xs, int64_t m, int64_t blocks, float* out, int64_t ldo,
                             bool accumulate) {
  int64_t i = 0;
  for (; i + 4 <= m; i += 4)
    gemm_x16_avx2_tile<Q4, 4>(g, x + i * blocks, xd + i * blocks, xs + i * blocks, blocks,
                              out + i * ldo, ldo, accumulate);
  for (; i < m; ++i)
    gemm_x16_avx2_tile<Q4, 1>(g, x + i * blocks, xd + i * blocks, xs + i * blocks, blocks,
                              out + i * ldo, ldo, accumulate);
}

// AVX-512 VNNI: one 512-bit register is a chunk of all 16 rows, and VPDPBUSD multiplies its
// unsigned bytes (nibbles, or q + 128) by a broadcast of four activation bytes: 64 products
// per instruction, no widening steps. The accumulator starts at −offset·Σx, so the int32 lanes
// end as each row's exact block sum; two accumulators per row halve the dependency chain.
// Four activation bytes in every 32-bit lane, straight from memory (VBROADCASTSS m32: a load,
// not a trip through a general register).
CEPE_AVX512VNNI inline __m512i bcast4_512(const int8_t* p) {
  return _mm512_castps_si512(_mm512_broadcastss_ps(_mm_load_ss(reinterpret_cast<const float*>(p))));
}

// One block of a packed group as the VNNI kernels use it: the 16 rows' scales widened, and the
// 8 chunks of unsigned quants (Q4: the low nibbles of the 4 stored chunks, then their high ones).
template <bool Q4>
CEPE_AVX512VNNI inline __m512 load_group_block_vnni(const uint8_t* blk, __m512i w[8]) {
  if (Q4) {
    const __m512i low4 = _mm512_set1_epi8(0x0f);
#pragma GCC unroll 4
    for (int c = 0; c < 4; ++c) {
      const __m512i v = _mm512_loadu_si512(blk + packed_quant_index(c, 0, 0));
      w[c] = _mm512_and_si512(v, low4);
      w[4 + c] = _mm512_and_si512(_mm512_srli_epi16(v, 4), low4);
    }
  } else {
#pragma GCC unroll 8
    for (int c = 0; c < 8; ++c) w[c] = _mm512_loadu_si512(blk + packed_quant_index(c, 0, 0));
  }
  return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk)));
}

template <bool Q4, int R>
CEPE_AVX512VNNI inline void gemm_x16_vnni_tile(const uint8_t* g, const BlockQ8_0* x,
                                               const float* xd, const int32_t* xs, int64_t blocks,
                                               float* out, int64_t ldo, bool accumulate) {
  constexpr int64_t quants = Q4 ? 256 : 512, stride = 32 + quants;
  constexpr int32_t offset = Q4 ? 8 : 128;
  __m512 acc[R];
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) acc[r] = _mm512_setzero_ps();
  for (int64_t b = 0; b < blocks; ++b) {
    __m512i w[8];
    if (R == 1) prefetch_group_block<stride>(g + b * stride);
    const __m512 dw = load_group_block_vnni<Q4>(g + b * stride, w);
    // Chunk t of either layout meets activation bytes 4t..4t+3 (Q4: w[4 + c] = high nibbles,
    // bytes 16 + 4c, i.e. t = 4 + c). The rows' chains are interleaved (chunk-major), so R
    // independent VPDPBUSD chains hide its latency; a lone row splits its chain in two.
    constexpr int kChains = R == 1 ? 2 : R;
    __m512i s[kChains];
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) s[r] = _mm512_set1_epi32(-offset * xs[r * blocks + b]);
    if (R == 1) s[1] = _mm512_setzero_si512();
#pragma GCC unroll 8
    for (int t = 0; t < 8; ++t) {
#pragma GCC unroll 8
      for (int r = 0; r < R; ++r) {
        const int8_t* xq = x[r * blocks + b].qs;
        s[R == 1 ? (t & 1) : r] =
            _mm512_dpbusd_epi32(s[R == 1 ? (t & 1) : r], w[t], bcast4_512(xq + 4 * t));
      }
    }
    if (R == 1) s[0] = _mm512_add_epi32(s[0], s[1]);
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      const __m512 d = _mm512_mul_ps(dw, _mm512_set1_ps(xd[r * blocks + b]));
      acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s[r]), d, acc[r]);
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) {
    float* o = out + r * ldo;
    _mm512_storeu_ps(o, accumulate ? _mm512_add_ps(_mm512_loadu_ps(o), acc[r]) : acc[r]);
  }
}

template <bool Q4>
CEPE_AVX512VNNI void gemm_x16_vnni(const uint8_t* g, const BlockQ8_0* x, const float* xd,
                                   const int32_t* xs, int64_t m, int64_t blocks, float* out,
                                   int64_t ldo, bool accumulate) {
  int64_t i = 0;
  for (; i + 8 <= m; i += 8)
    gemm_x16_vnni_tile<Q4, 8>(g, x + i * blocks, xd + i * blocks, xs + i * blocks, blocks,
                              out + i * ldo, ldo, accumulate);
  for (; i + 4 <= m; i += 4)
    gemm_x16_vnni_tile<Q4, 4>(g, x + i * blocks, xd + i * blocks, xs + i * blocks, blocks,
                              out + i * ldo, ldo, accumulate);
  for (; i < m; ++i)
    gemm_x16_vnni_tile<Q4, 1>(g, x + i * blocks, xd + i * blocks, xs + i * blocks, blocks,
                              out + i * ldo, ldo, accumulate);
}

inline int32_t load_i32(const uint8_t* p) {
  int32_t v;
  std::memcpy(&v, p, 4);
  return v;
}
inline float load_f32(const uint8_t* p) {
  float v;
  std::memcpy(&v, p, 4);
  return v;
}

// Rows [0, rows) of an R-row tile of group outputs (16 columns each) to `out`, rows ldo apart.
template <int R>
CEPE_AVX512VNNI inline void store_group_tile(const __m512* acc, int64_t rows, float* out,
                                             int64_t ldo, bool accumulate) {
  if (rows == R) {
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r) {
      float* o = out + r * ldo;
      _mm512_storeu_ps(o, accumulate ? _mm512_add_ps(_mm512_loadu_ps(o), acc[r]) : acc[r]);
    }
    return;
  }
  alignas(64) float rest[R][kRows];
  for (int r = 0; r < R; ++r) _mm512_store_ps(rest[r], acc[r]);
  for (int64_t r = 0; r < rows; ++r) store_group_row(out + r * ldo, rest[r], accumulate);
}

// The tiled form: one pointer walks a tile's blocks, so every activation operand is a fixed
// displacement from it (a broadcast load each) and no row pointers compete for general
// registers. Each output gets the row-major tile's operations in
// the same order: the integer sums are exact, then one multiply and one FMA per block.
template <bool Q4>
CEPE_AVX512VNNI void gemm_x16_tiles_vnni(const uint8_t* g, const uint8_t* tiles, int64_t m,
                                         int64_t blocks, float* out, int64_t ldo, bool accumulate) {
  constexpr int R = static_cast<int>(kVnniTileRows);
  constexpr int64_t quants = Q4 ? 256 : 512, stride = 32 + quants;
  constexpr int64_t offsets_at = R * 32, scales_at = R * 36, block_bytes = q8_tile_block_bytes(R);
  for (int64_t i = 0; i < m; i += R) {
    const uint8_t* tile = tiles + i / R * blocks * block_bytes;
    __m512 acc[R];
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) acc[r] = _mm512_setzero_ps();
    for (int64_t b = 0; b < blocks; ++b) {
      const uint8_t* xt = tile + b * block_bytes;
      __m512i w[8];
      const __m512 dw = load_group_block_vnni<Q4>(g + b * stride, w);
      __m512i s[R];
#pragma GCC unroll 8
      for (int r = 0; r < R; ++r) s[r] = _mm512_set1_epi32(load_i32(xt + offsets_at + 4 * r));
#pragma GCC unroll 8
      for (int t = 0; t < 8; ++t)
#pragma GCC unroll 8
        for (int r = 0; r < R; ++r)
          s[r] = _mm512_dpbusd_epi32(s[r], w[t], _mm512_set1_epi32(load_i32(xt + 32 * r + 4 * t)));
#pragma GCC unroll 8
      for (int r = 0; r < R; ++r) {
        const __m512 d = _mm512_mul_ps(dw, _mm512_set1_ps(load_f32(xt + scales_at + 4 * r)));
        acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s[r]), d, acc[r]);
      }
    }
    store_group_tile<R>(acc, std::min<int64_t>(R, m - i), out + i * ldo, ldo, accumulate);
  }
}

// ---- packed groups on AMX tiles (AMX-INT8) ----
//
// The tiled kernels' arithmetic, with the integer block sums made by the tile unit: for each
// block, TDPBSSD multiplies an activation tile (16 rows x 32 signed quants, as quantize_q8_tiles
// lays them) by the group's block (8 rows of 64 bytes: row t holds the 16 weight rows' quants
// meeting activation bytes 4t..4t+3, the packed layout's chunk t, copied as signed values) into
// 16 x 16 int32 sums. Each sum is exact, so it is the VNNI kernel's int32 value (there, the
// unsigned quants' offset term is added back), and the per-block scaling is the same multiply
// and FMA: the same results bit for bit. The
// scaling stays on the vector units (one block's scales differ from the next's). Even and odd
// blocks have their own activation, block and sum tiles, and the sums of block b are scaled
// while the tile unit works on block b + 1, so neither waits on the other's latency.

// Tile registers (macros: the intrinsics paste the number into the instruction): activation,
// block and sum tiles of even blocks, then of odd blocks.
#define CEPE_TMM_A0 0
#define CEPE_TMM_B0 1
#define CEPE_TMM_C0 2
#define CEPE_TMM_A1 3
#define CEPE_TMM_B1 4
#define CEPE_TMM_C1 5

// LDTILECFG's 64 bytes: palette 1, then each tile's bytes per row and rows.
struct alignas(64) AmxTileConfig {
  uint8_t palette;
  uint8_t start_row;
  uint8_t reserved[14];
  uint16_t colsb[16];
  uint8_t rows[16];
};
constexpr uint8_t kAmxRows = static_cast<uint8_t>(kAmxTileRows);
// A: 16 rows x 32 quants; B: 8 rows of 64 bytes (32 k values of 16 weight rows); C: 16 x 16 int32.
const AmxTileConfig kAmxTiles = {
    1, 0, {}, {32, 64, 64, 32, 64, 64}, {kAmxRows, 8, kAmxRows, kAmxRows, 8, kAmxRows}};
static_assert(sizeof(AmxTileConfig) == 64, "LDTILECFG reads 64 bytes");

// The tile intrinsics are asm statements that do not all tell the compiler which memory they
// read: this one makes every store before it happen before them.
#define CEPE_MEMORY_BARRIER() asm volatile("" ::: "memory")

// Adds one block's sums (a tile stored to `c`: 16 rows of 16 int32) to the rows' accumulators.
CEPE_AMX inline void scale_amx_sums(const int32_t* c, const uint8_t* xt, __m512 dw, __m512* acc) {
  constexpr int R = static_cast<int>(kAmxTileRows);
  constexpr int64_t scales_at = R * 36;
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r) {
    const __m512i s = _mm512_load_si512(c + 16 * r);
    const __m512 d = _mm512_mul_ps(dw, _mm512_set1_ps(load_f32(xt + scales_at + 4 * r)));
    acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s), d, acc[r]);
  }
}

// A packed group block's 16 row scales (F16) widened.
CEPE_AMX inline __m512 group_block_scales(const uint8_t* blk) {
  return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk)));
}

template <bool Q4>
CEPE_AMX void gemm_x16_tiles_amx(const uint8_t* g, const uint8_t* tiles, int64_t m, int64_t blocks,
                                 float* out, int64_t ldo, bool accumulate) {
  constexpr int R = static_cast<int>(kAmxTileRows);
  constexpr int64_t quants = Q4 ? 256 : 512, stride = 32 + quants;
  constexpr int64_t block_bytes = q8_tile_block_bytes(R);
  // The block tiles, laid once per call as signed quants (so TDPBSSD's sums need no offset
  // term) in aligned 512-byte blocks: Q8_0x16's chunks with the +128 taken off, Q4_0x16's low
  // nibbles of the 4 chunks and then the high ones, each less 8.
  thread_local std::vector<uint8_t> signed_blocks;
  signed_blocks.resize(static_cast<size_t>(blocks) * 512 + 64);
  uint8_t* const sb =
      signed_blocks.data() + (64 - reinterpret_cast<uintptr_t>(signed_blocks.data()) % 64) % 64;
  // The VNNI kernels' unsigned chunks (Q4: low nibbles, then high), less their offset.
  const __m512i offset = _mm512_set1_epi8(Q4 ? 8 : static_cast<char>(0x80));
  for (int64_t b = 0; b < blocks; ++b) {
    __m512i w[8];
    load_group_block_vnni<Q4>(g + b * stride, w);
#pragma GCC unroll 8
    for (int c = 0; c < 8; ++c)
      _mm512_store_si512(sb + b * 512 + 64 * c, _mm512_sub_epi8(w[c], offset));
  }
  alignas(64) int32_t sums[2][R * 16];  // by block parity
  CEPE_MEMORY_BARRIER();
  _tile_loadconfig(&kAmxTiles);
  for (int64_t i = 0; i < m; i += R) {
    const uint8_t* tile = tiles + i / R * blocks * block_bytes;
    __m512 acc[R];
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r) acc[r] = _mm512_setzero_ps();
    for (int64_t b = 0; b < blocks; ++b) {
      const uint8_t* xt = tile + b * block_bytes;
      const uint8_t* wb = sb + b * 512;
      if ((b & 1) == 0) {
        _tile_loadd(CEPE_TMM_B0, wb, 64);
        _tile_loadd(CEPE_TMM_A0, xt, 32);
        _tile_zero(CEPE_TMM_C0);
        _tile_dpbssd(CEPE_TMM_C0, CEPE_TMM_A0, CEPE_TMM_B0);
      } else {
        _tile_loadd(CEPE_TMM_B1, wb, 64);
        _tile_loadd(CEPE_TMM_A1, xt, 32);
        _tile_zero(CEPE_TMM_C1);
        _tile_dpbssd(CEPE_TMM_C1, CEPE_TMM_A1, CEPE_TMM_B1);
      }
      if (b > 0)
        scale_amx_sums(sums[(b - 1) & 1], xt - block_bytes,
                       group_block_scales(g + (b - 1) * stride), acc);
      if ((b & 1) == 0)
        _tile_stored(CEPE_TMM_C0, sums[0], 64);
      else
        _tile_stored(CEPE_TMM_C1, sums[1], 64);
    }
    const int64_t last = blocks - 1;
    scale_amx_sums(sums[last & 1], tile + last * block_bytes, group_block_scales(g + last * stride),
                   acc);
    store_group_tile<R>(acc, std::min<int64_t>(R, m - i), out + i * ldo, ldo, accumulate);
  }
  _tile_release();
}

// ---- bf16 GEMM on AMX tiles (AMX-BF16) ----
//
// The VDPBF16PS GEMM's operands (activations rounded to bf16 once per op, weight blocks of 32
// rows transposed into pair columns once per block), multiplied by TDPBF16PS: a 32 x 32 output
// block is four 16 x 16 F32 tiles that stay in tile registers over the whole k, each step adding
// 32 exact bf16 products per output. Panels are 32 rows, row-major in k-pairs (a tile load reads
// 16 rows of 16 pairs); k-pairs are padded with zeros to a multiple of 16.

#define CEPE_TMM_X0 0
#define CEPE_TMM_X1 1
#define CEPE_TMM_W0 2
#define CEPE_TMM_W1 3
#define CEPE_TMM_S00 4
#define CEPE_TMM_S01 5
#define CEPE_TMM_S10 6
#define CEPE_TMM_S11 7

constexpr int64_t kAmxBf16PanelRows = 32, kAmxPairAlign = 16;
// Every tile 16 rows of 64 bytes: activations 16 rows x 16 pairs, weights 16 pairs x 16 columns,
// sums 16 x 16 F32.
const AmxTileConfig kAmxBf16Tiles = {
    1, 0, {}, {64, 64, 64, 64, 64, 64, 64, 64}, {16, 16, 16, 16, 16, 16, 16, 16}};

inline int64_t amx_pairs(int64_t k) {
  return ((k + 1) / 2 + kAmxPairAlign - 1) / kAmxPairAlign * kAmxPairAlign;
}

CEPE_AMX void pack_bf16_rows_amx(const float* x, int64_t m, int64_t k, uint32_t* panels) {
  const int64_t kp = amx_pairs(k);
  const int64_t panel_count = (m + kAmxBf16PanelRows - 1) / kAmxBf16PanelRows;
  for (int64_t r = 0; r < panel_count * kAmxBf16PanelRows; ++r) {
    uint32_t* row = panels + r * kp;
    if (r >= m) {
      std::memset(row, 0, static_cast<size_t>(kp) * sizeof(uint32_t));
      continue;
    }
    const float* xi = x + r * k;
    // 32 values (16 pairs) per conversion, as the VDPBF16PS packing rounds them; zeros past k.
    for (int64_t p0 = 0; p0 < kp; p0 += 16) {
      const int64_t t = 2 * p0;
      const __m512bh b =
          _mm512_cvtne2ps_pbh(_mm512_maskz_loadu_ps(low_lanes(k - t - 16), xi + t + 16),
                              _mm512_maskz_loadu_ps(low_lanes(k - t), xi + t));
      _mm512_storeu_si512(row + p0, (__m512i)b);
    }
  }
}

CEPE_AMX void gemm_bf16_amx(const uint32_t* panels, int64_t m, int64_t k, const uint16_t* w,
                            int64_t n, float* out, int64_t ldo, bool accumulate,
                            uint32_t* scratch) {
  const int64_t kp = amx_pairs(k), kp_real = (k + 1) / 2;
  const int64_t panel_count = (m + kAmxBf16PanelRows - 1) / kAmxBf16PanelRows;
  const int64_t row_stride = kp * 4, block_stride = kBf16BlockCols * 4;
  alignas(64) float sums[kAmxBf16PanelRows][kBf16BlockCols];
  CEPE_MEMORY_BARRIER();
  _tile_loadconfig(&kAmxBf16Tiles);
  for (int64_t j0 = 0; j0 < n; j0 += kBf16BlockCols) {
    const int64_t cols = std::min(kBf16BlockCols, n - j0);
    pack_bf16_block(w + j0 * k, cols, k, scratch);
    if (kp > kp_real)  // the pairs past k meet zeros
      std::memset(scratch + kp_real * kBf16BlockCols, 0,
                  static_cast<size_t>((kp - kp_real) * kBf16BlockCols) * sizeof(uint32_t));
    const int64_t next_rows = std::max<int64_t>(0, std::min(kBf16BlockCols, n - j0 - cols));
    CEPE_MEMORY_BARRIER();
    for (int64_t pn = 0; pn < panel_count; ++pn) {
      const uint32_t* panel = panels + pn * kAmxBf16PanelRows * kp;
      prefetch_next_block(reinterpret_cast<const char*>(w + (j0 + cols) * k), next_rows,
                          static_cast<size_t>(k) * 2, pn, panel_count);
      _tile_zero(CEPE_TMM_S00);
      _tile_zero(CEPE_TMM_S01);
      _tile_zero(CEPE_TMM_S10);
      _tile_zero(CEPE_TMM_S11);
      for (int64_t p0 = 0; p0 < kp; p0 += 16) {
        _tile_loadd(CEPE_TMM_X0, panel + p0, row_stride);
        _tile_loadd(CEPE_TMM_X1, panel + 16 * kp + p0, row_stride);
        _tile_loadd(CEPE_TMM_W0, scratch + p0 * kBf16BlockCols, block_stride);
        _tile_loadd(CEPE_TMM_W1, scratch + p0 * kBf16BlockCols + 16, block_stride);
        _tile_dpbf16ps(CEPE_TMM_S00, CEPE_TMM_X0, CEPE_TMM_W0);
        _tile_dpbf16ps(CEPE_TMM_S01, CEPE_TMM_X0, CEPE_TMM_W1);
        _tile_dpbf16ps(CEPE_TMM_S10, CEPE_TMM_X1, CEPE_TMM_W0);
        _tile_dpbf16ps(CEPE_TMM_S11, CEPE_TMM_X1, CEPE_TMM_W1);
      }
      _tile_stored(CEPE_TMM_S00, &sums[0][0], block_stride);
      _tile_stored(CEPE_TMM_S01, &sums[0][16], block_stride);
      _tile_stored(CEPE_TMM_S10, &sums[16][0], block_stride);
      _tile_stored(CEPE_TMM_S11, &sums[16][16], block_stride);
      const int64_t r0 = pn * kAmxBf16PanelRows;
      const int64_t rows = std::min(kAmxBf16PanelRows, m - r0);
      for (int64_t r = 0; r < rows; ++r)
        store_tile_row(out + (r0 + r) * ldo + j0, low_lanes(cols), low_lanes(cols - 16),
                       _mm512_load_ps(sums[r]), _mm512_load_ps(sums[r] + 16), accumulate);
    }
  }
  _tile_release();
}

// ---- the tables ----

const Kernels kScalar{KernelPath::Scalar,
                      "scalar",
                      dot_q8_0_scalar,
                      dot_q4_0_scalar,
                      dot_f16_scalar,
                      dot_bf16_scalar,
                      quantize_row_q8_0_ref,
                      widen_f16_scalar,
                      widen_bf16_scalar,
                      dequantize_row_q8_0_ref,
                      dequantize_row_q4_0_ref,
                      gemm_x16_scalar<true>,
                      gemm_x16_scalar<false>,
                      nullptr,
                      nullptr,
                      narrow_f16_scalar,
                      dot_f32_scalar,
                      gemm_f32_rows_scalar,
                      nullptr,
                      nullptr,
                      nullptr,
                      nullptr,
                      nullptr,
                      nullptr,
                      nullptr,
                      softmax_exp_scalar,
                      silu_mul_scalar};
const Kernels kAvx2{KernelPath::Avx2,
                    "avx2",
                    dot_q8_0_avx2,
                    dot_q4_0_avx2,
                    dot_f16_avx2,
                    dot_bf16_avx2,
                    quantize_q8_0_avx2,
                    widen_f16_avx2,
                    widen_bf16_avx2,
                    dequantize_q8_0_avx2,
                    dequantize_q4_0_avx2,
                    gemm_x16_avx2<true>,
                    gemm_x16_avx2<false>,
                    nullptr,
                    nullptr,
                    narrow_f16_avx2,
                    dot_f32_avx2,
                    gemm_f32_rows_avx2,
                    nullptr,
                    nullptr,
                    nullptr,
                    nullptr,
                    nullptr,
                    nullptr,
                    attend_row_block_avx2,
                    softmax_exp_avx2,
                    silu_mul_avx2};
// Each level above AVX2 is the level below it plus what it does better.
Kernels avx512_kernels() {
  Kernels k = kAvx2;
  k.path = KernelPath::Avx512;
  k.name = "avx512";
  k.dot_q8_0 = dot_q8_0_avx512;
  k.dot_q4_0 = dot_q4_0_avx512;
  k.dot_f16 = dot_f16_avx512;
  k.dot_bf16 = dot_bf16_avx512;
  k.dot_f32 = dot_f32_avx512;
  k.gemm_f32_rows = gemm_f32_rows_avx512;
  k.pack_f32_panels = pack_f32_panels_avx512;
  k.pack_attention_kv = pack_attention_kv_avx512;
  k.attention_rows = attention_rows_avx512;
  k.attend_row_block = attend_row_block_avx512;
  k.gemm_f32_panels = gemm_f32_panels_avx512;
  k.softmax_exp = softmax_exp_avx512;
  k.silu_mul = silu_mul_avx512;
  return k;
}

Kernels avx512vnni_kernels() {
  Kernels k = avx512_kernels();
  k.path = KernelPath::Avx512Vnni;
  k.name = "avx512vnni";
  k.dot_q8_0 = dot_q8_0_vnni;
  k.dot_q4_0 = dot_q4_0_vnni;
  k.gemm_q4_0x16 = gemm_x16_vnni<true>;
  k.gemm_q8_0x16 = gemm_x16_vnni<false>;
  k.gemm_q4_0x16_tiles = gemm_x16_tiles_vnni<true>;
  k.gemm_q8_0x16_tiles = gemm_x16_tiles_vnni<false>;
  return k;
}

Kernels avx512bf16_kernels() {
  Kernels k = avx512vnni_kernels();
  k.path = KernelPath::Avx512Bf16;
  k.name = "avx512bf16";
  k.pack_bf16_pairs = pack_bf16_pairs_avx512bf16;
  k.gemm_bf16_pairs = gemm_bf16_pairs_avx512bf16;
  return k;
}

Kernels amx_kernels() {
  Kernels k = avx512bf16_kernels();
  k.path = KernelPath::Amx;
  k.name = "amx";
  k.gemm_q4_0x16_tiles = gemm_x16_tiles_amx<true>;
  k.gemm_q8_0x16_tiles = gemm_x16_tiles_amx<false>;
  k.q8_tile_rows = kAmxTileRows;
  k.pack_bf16_pairs = pack_bf16_rows_amx;
  k.gemm_bf16_pairs = gemm_bf16_amx;
  k.bf16_panel_rows = kAmxBf16PanelRows;
  k.bf16_pair_align = kAmxPairAlign;
  // Each call copies the group's blocks as signed quants: larger chunks spread that copy over
  // more rows.
  k.q8_chunk_bytes = int64_t{1} << 20;
  return k;
}

// Built on first use (function-local statics), so a table is whole whenever it is asked for.
const Kernels& table(KernelPath path) {
  static const Kernels avx512 = avx512_kernels();
  static const Kernels avx512vnni = avx512vnni_kernels();
  static const Kernels avx512bf16 = avx512bf16_kernels();
  static const Kernels amx = amx_kernels();
  switch (path) {
    case KernelPath::Scalar:
      return kScalar;
    case KernelPath::Avx2:
      return kAvx2;
    case KernelPath::Avx512:
      return avx512;
    case KernelPath::Avx512Vnni:
      return avx512vnni;
    case KernelPath::Avx512Bf16:
      return avx512bf16;
    case KernelPath::Amx:
      return amx;
  }
  return kScalar;
}

}  // namespace

bool kernel_path_supported(KernelPath path) {
  __builtin_cpu_init();
  const bool avx2 =
      __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && cpu_has_f16c();
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
    case KernelPath::Amx:
      return vnni && __builtin_cpu_supports("avx512bf16") && cpu_has_amx();
  }
  return false;
}

std::vector<KernelPath> all_kernel_paths() {
  return {KernelPath::Scalar,     KernelPath::Avx2,       KernelPath::Avx512,
          KernelPath::Avx512Vnni, KernelPath::Avx512Bf16, KernelPath::Amx};
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
                                 << ": unknown (expected scalar, avx2, avx512, avx512vnni, "
                                    "avx512bf16 or amx)");
    }
    // The highest level. avx512bf16 adds the bf16 GEMM (activations rounded to bf16, used
    // where BackendOptions::bf16_activations allows); CEPE_KERNELS=avx512vnni leaves it out.
    return &table(supported_kernel_paths().back());
  }();
  return *chosen;
}

namespace {
// Σ quants of a Q8_0 activation block (the packed kernels' offset term is −offset times it).
int32_t quant_sum(const BlockQ8_0& blk) {
  int32_t s = 0;
  for (int j = 0; j < 32; ++j) s += blk.qs[j];
  return s;
}
}  // namespace

void quantize_rows_q8_0(const Kernels& kern, const float* x, int64_t m, int64_t k, BlockQ8_0* xq,
                        float* xd, int32_t* xs) {
  const int64_t blocks = (k + 31) / 32;
  for (int64_t i = 0; i < m; ++i) {
    kern.quantize_q8_0(x + i * k, xq + i * blocks, k);
    for (int64_t b = 0; b < blocks; ++b) {
      const BlockQ8_0& blk = xq[i * blocks + b];
      xd[i * blocks + b] = f16_to_f32(blk.d);
      xs[i * blocks + b] = quant_sum(blk);
    }
  }
}

void quantize_q8_tiles(const Kernels& kern, const float* x, int64_t m, int64_t k, int32_t offset,
                       int64_t tile0, int64_t tile1, uint8_t* tiles) {
  const int64_t blocks = (k + 31) / 32, rows = kern.q8_tile_rows;
  const int64_t block_bytes = q8_tile_block_bytes(rows);
  thread_local std::vector<BlockQ8_0> row;
  row.resize(static_cast<size_t>(blocks));
  for (int64_t tile = tile0; tile < tile1; ++tile)
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t i = tile * rows + r;
      if (i < m) kern.quantize_q8_0(x + i * k, row.data(), k);
      for (int64_t b = 0; b < blocks; ++b) {
        uint8_t* xt = tiles + (tile * blocks + b) * block_bytes;
        int32_t term = 0;
        float d = 0.0f;
        if (i < m) {
          const BlockQ8_0& blk = row[static_cast<size_t>(b)];
          term = -offset * quant_sum(blk);
          d = f16_to_f32(blk.d);
          std::memcpy(xt + 32 * r, blk.qs, 32);
        } else {
          std::memset(xt + 32 * r, 0, 32);
        }
        std::memcpy(xt + rows * 32 + 4 * r, &term, 4);
        std::memcpy(xt + rows * 36 + 4 * r, &d, 4);
      }
    }
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
    case DType::Q8_0x16:
    case DType::Q4_0x16:
      break;
  }
  CEPE_THROW("cannot widen " << dtype_name(dtype) << " weights to F32");
}

}  // namespace cepe::cpu
