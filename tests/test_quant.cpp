// Load-time weight formats (--weights) and the CPU kernels behind them:
// - every kernel level this CPU can run against the scalar reference, with tolerances derived
//   from the arithmetic (integer block sums are exact; only F32 summation order differs);
// - the scalar reference against independent double-precision sums and GGUF's error bounds;
// - the CPU linear op for every weight dtype, both the decode (dot) and prefill (tile) paths;
// - the NLL of stories260K and of CEPE fixtures under each format against F32, within bounds
//   stated with their reasons below;
// - `cepe convert weights` and the --weights flag's errors.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <random>

#include "common/system.h"
#include "engine/backend.h"
#include "engine/cpu/kernels.h"
#include "engine/llama2c.h"
#include "engine/models/cepe_llama.h"
#include "engine/quant.h"
#include "engine/safetensors.h"
#include "engine/tokenizer.h"
#include "test_util.h"

namespace fs = std::filesystem;
using namespace cepe;

namespace {

constexpr double kU = 1.0 / (1 << 24);  // unit roundoff of F32

std::vector<float> random_floats(size_t n, uint32_t seed, float scale = 1.0f) {
  std::mt19937 gen(seed);
  std::normal_distribution<float> dist(0.0f, scale);
  std::vector<float> v(n);
  for (auto& f : v) f = dist(gen);
  return v;
}

std::vector<BlockQ8_0> q8(const std::vector<float>& x) {
  std::vector<BlockQ8_0> out((x.size() + 31) / 32);
  quantize_row_q8_0_ref(x.data(), out.data(), static_cast<int64_t>(x.size()));
  return out;
}

std::vector<BlockQ4_0> q4(const std::vector<float>& x) {
  std::vector<BlockQ4_0> out((x.size() + 31) / 32);
  quantize_row_q4_0_ref(x.data(), out.data(), static_cast<int64_t>(x.size()));
  return out;
}

const int64_t kWidths[] = {32, 48, 100, 768, 2048};

// ---- the scalar reference ----

TEST(QuantReference, Q8_0ErrorWithinHalfAStep) {
  for (int64_t n : kWidths) {
    auto x = random_floats(n, 1 + n);
    auto b = q8(x);
    std::vector<float> y(n);
    dequantize_row_q8_0_ref(b.data(), y.data(), n);
    for (int64_t i = 0; i < n; ++i) {
      float amax = 0;
      for (int64_t j = i / 32 * 32; j < std::min<int64_t>(n, i / 32 * 32 + 32); ++j)
        amax = std::max(amax, std::fabs(x[j]));
      const double d = amax / 127.0, d16 = f16_to_f32(b[i / 32].d);
      // Half a quantization step, plus |q| <= 127 times the fp16 rounding of the scale.
      const double bound = 0.5 * d * (1 + 1e-5) + 127 * std::fabs(d - d16) + 1e-7 * std::fabs(x[i]);
      ASSERT_LE(std::fabs(x[i] - y[i]), bound) << "n " << n << " element " << i;
    }
    // Padding of the last block is zero.
    if (n % 32) {
      for (int64_t i = n % 32; i < 32; ++i) EXPECT_EQ(b.back().qs[i], 0);
    }
  }
}

TEST(QuantReference, Q4_0MatchesGgufLayoutAndBound) {
  // A block whose largest magnitude is negative: it maps to level 0 (-8) exactly.
  std::vector<float> x(32);
  for (int i = 0; i < 32; ++i) x[i] = static_cast<float>(i - 16) / 4.0f;  // -4 .. 3.75
  auto b = q4(x);
  EXPECT_FLOAT_EQ(f16_to_f32(b[0].d), 0.5f);  // -4 / -8
  EXPECT_EQ(b[0].qs[0] & 0x0f, 0);            // x[0] = -4 -> -8
  EXPECT_EQ(b[0].qs[0] >> 4, 8);              // x[16] = 0 -> 0
  for (int64_t n : kWidths) {
    auto v = random_floats(n, 7 + n);
    auto blocks = q4(v);
    std::vector<float> y(n);
    dequantize_row_q4_0_ref(blocks.data(), y.data(), n);
    for (int64_t i = 0; i < n; ++i) {
      const double d16 = std::fabs(f16_to_f32(blocks[i / 32].d));
      // Levels -8..7 of d: half a step inside the range; the side opposite the largest weight
      // ends at 7 d, one step short of it, so the worst case there is one step.
      ASSERT_LE(std::fabs(v[i] - y[i]), d16 * (1 + 1e-3) + 1e-6) << "n " << n << " element " << i;
    }
  }
}

TEST(QuantReference, ScalarDotsEqualDoubleSums) {
  for (int64_t n : kWidths) {
    auto w = random_floats(n, 11 + n), x = random_floats(n, 13 + n);
    auto w8 = q8(w), x8 = q8(x);
    auto w4 = q4(w);
    std::vector<float> dw8(n), dw4(n), dx(n);
    dequantize_row_q8_0_ref(w8.data(), dw8.data(), n);
    dequantize_row_q4_0_ref(w4.data(), dw4.data(), n);
    dequantize_row_q8_0_ref(x8.data(), dx.data(), n);
    double e8 = 0, e4 = 0, a8 = 0, a4 = 0;
    for (int64_t i = 0; i < n; ++i) {
      e8 += double(dw8[i]) * dx[i];
      e4 += double(dw4[i]) * dx[i];
      a8 += std::fabs(double(dw8[i]) * dx[i]);
      a4 += std::fabs(double(dw4[i]) * dx[i]);
    }
    const auto& s = cpu::kernels_for(cpu::KernelPath::Scalar);
    const int64_t blocks = (n + 31) / 32;
    // Block sums are exact integers; the F32 sum over blocks has one scale product and one
    // addition per block: error <= (blocks + 2) u sum |terms|.
    EXPECT_NEAR(s.dot_q8_0(w8.data(), x8.data(), blocks), e8, (blocks + 2) * kU * a8 * 2);
    EXPECT_NEAR(s.dot_q4_0(w4.data(), x8.data(), blocks), e4, (blocks + 2) * kU * a4 * 2);
  }
}

// ---- every runnable level against the scalar one ----

class KernelLevels : public ::testing::TestWithParam<cpu::KernelPath> {};

TEST_P(KernelLevels, MatchScalar) {
  const cpu::KernelPath path = GetParam();
  if (!cpu::kernel_path_supported(path))
    GTEST_SKIP() << "this CPU cannot run the " << cpu::kernel_path_name(path)
                 << " kernels (compiled in, not tested here)";
  const auto& k = cpu::kernels_for(path);
  const auto& s = cpu::kernels_for(cpu::KernelPath::Scalar);
  for (int64_t n : kWidths) {
    const int64_t blocks = (n + 31) / 32;
    auto w = random_floats(n, 21 + n), x = random_floats(n, 23 + n, 3.0f);
    x[0] = 0.0f;  // zeros and an all-zero block take the id = 0 branch
    // Quantizing activations: bit-identical blocks.
    std::vector<BlockQ8_0> xr(blocks), xk(blocks);
    s.quantize_q8_0(x.data(), xr.data(), n);
    k.quantize_q8_0(x.data(), xk.data(), n);
    ASSERT_EQ(std::memcmp(xr.data(), xk.data(), blocks * sizeof(BlockQ8_0)), 0)
        << k.name << " quantize_q8_0, n " << n;
    std::vector<float> zeros(64, 0.0f);
    BlockQ8_0 zr[2], zk[2];
    s.quantize_q8_0(zeros.data(), zr, 64);
    k.quantize_q8_0(zeros.data(), zk, 64);
    ASSERT_EQ(std::memcmp(zr, zk, sizeof zr), 0);
    // Widening and dequantizing: exact.
    auto w8 = q8(w);
    auto w4 = q4(w);
    std::vector<uint16_t> wh(n), wb(n);
    for (int64_t i = 0; i < n; ++i) {
      wh[i] = f32_to_f16(w[i]);
      wb[i] = f32_to_bf16(w[i]);
    }
    std::vector<float> a(n), b(n);
    s.dequantize_q8_0(w8.data(), a.data(), n);
    k.dequantize_q8_0(w8.data(), b.data(), n);
    ASSERT_EQ(a, b) << k.name << " dequantize_q8_0";
    s.dequantize_q4_0(w4.data(), a.data(), n);
    k.dequantize_q4_0(w4.data(), b.data(), n);
    ASSERT_EQ(a, b) << k.name << " dequantize_q4_0";
    s.widen_f16(wh.data(), a.data(), n);
    k.widen_f16(wh.data(), b.data(), n);
    ASSERT_EQ(a, b) << k.name << " widen_f16";
    s.widen_bf16(wb.data(), a.data(), n);
    k.widen_bf16(wb.data(), b.data(), n);
    ASSERT_EQ(a, b) << k.name << " widen_bf16";
    // Narrowing to fp16 (the F16 KV cache): round to nearest even on every level, the halfway
    // cases, the overflow edge and half subnormals included.
    std::vector<float> edge(w.begin(), w.begin() + n);
    const float specials[] = {65504.0f,
                              65519.0f,
                              65520.0f,
                              -1e6f,
                              1.0f + 1.0f / 2048,
                              1.0f + 3.0f / 2048,
                              6.0e-8f,
                              3.0e-8f,
                              -2.9e-8f,
                              1e-5f,
                              0.0f,
                              -0.0f};
    for (size_t i = 0; i < std::size(specials) && i < edge.size(); ++i) edge[i] = specials[i];
    std::vector<uint16_t> ha(n), hb(n);
    s.narrow_f16(edge.data(), ha.data(), n);
    k.narrow_f16(edge.data(), hb.data(), n);
    ASSERT_EQ(ha, hb) << k.name << " narrow_f16";
    // Dot products: the same exact terms summed in another order. Each sum's error is at most
    // (terms + 8) u sum |terms| (recursive summation plus the lane reduction), so two sums differ
    // by at most twice that.
    double t8 = 0, t4 = 0, th = 0, tb = 0, tf = 0;
    for (int64_t bl = 0; bl < blocks; ++bl) {
      double s8 = 0, s4 = 0;
      for (int i = 0; i < 32; ++i) {
        s8 += std::abs(int(w8[bl].qs[i]) * int(xr[bl].qs[i]));
        const int nib = i < 16 ? (w4[bl].qs[i] & 15) : (w4[bl].qs[i - 16] >> 4);
        s4 += std::abs((nib - 8) * int(xr[bl].qs[i]));
      }
      const double dx = std::fabs(f16_to_f32(xr[bl].d));
      t8 += s8 * std::fabs(f16_to_f32(w8[bl].d)) * dx;
      t4 += s4 * std::fabs(f16_to_f32(w4[bl].d)) * dx;
    }
    for (int64_t i = 0; i < n; ++i) {
      th += std::fabs(double(f16_to_f32(wh[i])) * x[i]);
      tb += std::fabs(double(bf16_to_f32(wb[i])) * x[i]);
      tf += std::fabs(double(w[i]) * x[i]);
    }
    const double gb = 2 * (blocks + 8) * kU, ge = 2 * (n + 8) * kU;
    EXPECT_NEAR(k.dot_q8_0(w8.data(), xr.data(), blocks), s.dot_q8_0(w8.data(), xr.data(), blocks),
                gb * t8)
        << k.name << " dot_q8_0, n " << n;
    EXPECT_NEAR(k.dot_q4_0(w4.data(), xr.data(), blocks), s.dot_q4_0(w4.data(), xr.data(), blocks),
                gb * t4)
        << k.name << " dot_q4_0, n " << n;
    EXPECT_NEAR(k.dot_f16(wh.data(), x.data(), n), s.dot_f16(wh.data(), x.data(), n), ge * th)
        << k.name << " dot_f16, n " << n;
    EXPECT_NEAR(k.dot_f32(w.data(), x.data(), n), s.dot_f32(w.data(), x.data(), n), ge * tf)
        << k.name << " dot_f32, n " << n;
    EXPECT_NEAR(k.dot_bf16(wb.data(), x.data(), n), s.dot_bf16(wb.data(), x.data(), n), ge * tb)
        << k.name << " dot_bf16, n " << n;
  }
}

// The packed-group kernels (Q4_0x16, Q8_0x16) of every level against double sums of the exact
// block terms: per block the integer sum is exact, so each output is an F32 sum of `blocks`
// products of exact values, within (blocks + 8) u Σ|terms| of the double sum (+ one rounding
// of each scale product, 2u per term). Activation rows 1..9 cover the 4-row tiles and their
// tail; the packing itself round-trips exactly (unpack_row16).
TEST_P(KernelLevels, PackedGroupsMatchDoubleSums) {
  const cpu::KernelPath path = GetParam();
  if (!cpu::kernel_path_supported(path))
    GTEST_SKIP() << "this CPU cannot run the " << cpu::kernel_path_name(path) << " kernels";
  const auto& k = cpu::kernels_for(path);
  for (int64_t n : {32, 100, 512}) {
    const int64_t rows = 16, blocks = (n + 31) / 32, m = 9;
    auto wv = random_floats(rows * n, 41 + n), xv = random_floats(m * n, 43 + n, 3.0f);
    for (DType plain : {DType::Q4_0, DType::Q8_0}) {
      Tensor w = Tensor::empty({rows, n}, DType::F32);
      std::copy(wv.begin(), wv.end(), w.data<float>());
      Tensor q = convert_weight(w, plain);
      Tensor packed = pack_rows16(q);
      ASSERT_EQ(packed.nbytes(), q.nbytes());
      std::vector<char> row(dtype_row_bytes(plain, n));
      for (int64_t r = 0; r < rows; ++r) {
        unpack_row16(packed, r, row.data());
        ASSERT_EQ(std::memcmp(row.data(),
                              static_cast<const char*>(q.raw()) + r * dtype_row_bytes(plain, n),
                              row.size()),
                  0)
            << dtype_name(plain) << " row " << r << " does not round-trip";
      }
      std::vector<BlockQ8_0> xq(m * blocks);
      std::vector<float> xd(m * blocks);
      std::vector<int32_t> xs(m * blocks);
      cpu::quantize_rows_q8_0(k, xv.data(), m, n, xq.data(), xd.data(), xs.data());
      const int64_t ldo = 20;
      std::vector<float> out(m * ldo, 1.0f);
      const auto gemm = plain == DType::Q4_0 ? k.gemm_q4_0x16 : k.gemm_q8_0x16;
      for (bool accumulate : {false, true}) {
        gemm(static_cast<const uint8_t*>(packed.raw()), xq.data(), xd.data(), xs.data(), m, blocks,
             out.data(), ldo, accumulate);
        for (int64_t i = 0; i < m; ++i)
          for (int64_t r = 0; r < rows; ++r) {
            const char* wr = static_cast<const char*>(q.raw()) + r * dtype_row_bytes(plain, n);
            double e = 0, a = 0;
            for (int64_t b = 0; b < blocks; ++b) {
              int32_t isum = 0;
              uint16_t dw;
              std::memcpy(&dw, wr + b * dtype_block_bytes(plain), 2);
              for (int j = 0; j < 32; ++j) {
                int wq;
                if (plain == DType::Q8_0) {
                  wq = reinterpret_cast<const BlockQ8_0*>(wr)[b].qs[j];
                } else {
                  const uint8_t* qs = reinterpret_cast<const BlockQ4_0*>(wr)[b].qs;
                  wq = (j < 16 ? (qs[j] & 15) : (qs[j - 16] >> 4)) - 8;
                }
                isum += wq * xq[i * blocks + b].qs[j];
              }
              const double term = double(isum) * f16_to_f32(dw) * xd[i * blocks + b];
              e += term;
              a += std::fabs(term);
            }
            const double base = accumulate ? 2 * e : e;  // the first pass's result, added again
            ASSERT_NEAR(out[i * ldo + r], base, 2 * (blocks + 10) * kU * a + 1e-6)
                << k.name << " " << dtype_name(plain) << " n " << n << " x row " << i
                << " weight row " << r << (accumulate ? " (accumulate)" : "");
          }
        for (int64_t i = 0; i < m; ++i)
          for (int64_t c = rows; c < ldo; ++c)
            ASSERT_EQ(out[i * ldo + c], 1.0f) << "wrote past the group's 16 columns";
      }
    }
  }
}

// The tiled form of the packed-group kernels (levels that have it) against the row-major form:
// the same operations per output, so equal bit for bit, for 1..33 rows (whole tiles of 8 or 16
// rows, a partial last tile, and a lone partial tile), alone and accumulating; rows past m stay
// untouched. The AMX level alternates even and odd blocks: 4 and 3 blocks (k = 100, 70) end on
// either.
TEST_P(KernelLevels, PackedGroupTilesEqualRowMajor) {
  const cpu::KernelPath path = GetParam();
  if (!cpu::kernel_path_supported(path))
    GTEST_SKIP() << "this CPU cannot run the " << cpu::kernel_path_name(path) << " kernels";
  const auto& k = cpu::kernels_for(path);
  if (k.gemm_q4_0x16_tiles == nullptr || k.gemm_q8_0x16_tiles == nullptr)
    GTEST_SKIP() << "the " << k.name << " level has no tiled group kernels";
  for (const int64_t n : {int64_t{100}, int64_t{70}}) {
    const int64_t rows = 16, blocks = (n + 31) / 32, ldo = 19;
    const auto wv = random_floats(rows * n, 47);
    for (DType plain : {DType::Q4_0, DType::Q8_0}) {
      Tensor w = Tensor::empty({rows, n}, DType::F32);
      std::copy(wv.begin(), wv.end(), w.data<float>());
      Tensor packed = pack_rows16(convert_weight(w, plain));
      const auto* g = static_cast<const uint8_t*>(packed.raw());
      const bool q4 = plain == DType::Q4_0;
      for (int64_t m = 1; m <= 33; ++m) {
        const auto xv = random_floats(m * n, uint32_t(53 + m), 3.0f);
        std::vector<BlockQ8_0> xq(m * blocks);
        std::vector<float> xd(m * blocks);
        std::vector<int32_t> xs(m * blocks);
        cpu::quantize_rows_q8_0(k, xv.data(), m, n, xq.data(), xd.data(), xs.data());
        const int64_t tiles = (m + k.q8_tile_rows - 1) / k.q8_tile_rows;
        std::vector<uint8_t> xt(cpu::q8_tile_bytes(m, blocks, k.q8_tile_rows), 0xAB);
        cpu::quantize_q8_tiles(k, xv.data(), m, n, q4 ? 8 : 128, 0, tiles, xt.data());
        for (bool accumulate : {false, true}) {
          std::vector<float> want((m + 1) * ldo, 0.25f), got = want;
          (q4 ? k.gemm_q4_0x16 : k.gemm_q8_0x16)(g, xq.data(), xd.data(), xs.data(), m, blocks,
                                                 want.data(), ldo, accumulate);
          (q4 ? k.gemm_q4_0x16_tiles : k.gemm_q8_0x16_tiles)(g, xt.data(), m, blocks, got.data(),
                                                             ldo, accumulate);
          for (size_t e = 0; e < want.size(); ++e)
            ASSERT_EQ(std::memcmp(&got[e], &want[e], 4), 0)
                << k.name << " " << dtype_name(plain) << " k " << n << " m " << m << " element "
                << e << (accumulate ? " (accumulate)" : "") << ": " << got[e] << " vs " << want[e];
        }
      }
    }
  }
}

// gemm_f32_rows of every level against double sums: each output is an F32 sum of k exact-input
// products, within (k + 8) u Σ|terms| of the double sum (recursive summation plus the lane
// reduction). Rows 1..9 and weight rows 1..9 cover every tile shape and its tails; k = 37 and
// 100 leave a scalar tail after the vector steps. A row's result must not depend on the rows
// beside it (bit for bit, row alone vs in the batch), and accumulate adds to what is there.
TEST_P(KernelLevels, F32RowsMatchDoubleSums) {
  const cpu::KernelPath path = GetParam();
  if (!cpu::kernel_path_supported(path))
    GTEST_SKIP() << "this CPU cannot run the " << cpu::kernel_path_name(path) << " kernels";
  const auto& kr = cpu::kernels_for(path);
  for (int64_t k : {5, 37, 100, 256})
    for (int64_t m = 1; m <= 9; ++m)
      for (int64_t n = 1; n <= 9; ++n) {
        const auto x = random_floats(size_t(m * k), uint32_t(m * 131 + k));
        const auto w = random_floats(size_t(n * k), uint32_t(n * 71 + k + 7));
        const int64_t ldo = n + 3;
        std::vector<float> out(size_t(m * ldo), -7.0f), acc(size_t(m * ldo), 0.5f);
        kr.gemm_f32_rows(x.data(), m, w.data(), n, k, out.data(), ldo, false);
        kr.gemm_f32_rows(x.data(), m, w.data(), n, k, acc.data(), ldo, true);
        for (int64_t i = 0; i < m; ++i) {
          std::vector<float> alone(static_cast<size_t>(n));
          kr.gemm_f32_rows(x.data() + i * k, 1, w.data(), n, k, alone.data(), n, false);
          for (int64_t j = 0; j < n; ++j) {
            double exact = 0, terms = 0;
            for (int64_t t = 0; t < k; ++t) {
              exact += double(x[i * k + t]) * w[j * k + t];
              terms += std::fabs(double(x[i * k + t]) * w[j * k + t]);
            }
            const float got = out[i * ldo + j];
            ASSERT_NEAR(got, exact, (k + 8) * kU * terms)
                << kr.name << " m " << m << " n " << n << " k " << k << " [" << i << "," << j
                << "]";
            ASSERT_EQ(got, alone[j]) << kr.name << ": row " << i << " depends on its neighbours (m "
                                     << m << " n " << n << " k " << k << ")";
            ASSERT_EQ(acc[i * ldo + j], 0.5f + got) << kr.name << " accumulate";
          }
          for (int64_t j = n; j < ldo; ++j) ASSERT_EQ(out[i * ldo + j], -7.0f) << "wrote past n";
        }
      }
}

// The F32 panel GEMM (AVX-512 levels) for F32, F16 and bf16 weight rows: the weights widened
// exactly, each output one F32 FMA chain: within (k + 2) u Σ|terms| of the double sum, and a row's
// result the same whatever rows come with it (bit for bit: m = 1 against the whole batch).
TEST_P(KernelLevels, F32PanelsMatchDoubleSums) {
  const cpu::KernelPath path = GetParam();
  if (!cpu::kernel_path_supported(path))
    GTEST_SKIP() << "this CPU cannot run the " << cpu::kernel_path_name(path) << " kernels";
  const auto& kr = cpu::kernels_for(path);
  if (!kr.gemm_f32_panels) {
    EXPECT_FALSE(kr.pack_f32_panels) << kr.name << ": pack without GEMM";
    GTEST_SKIP() << kr.name << " has no F32 panel GEMM (needs AVX-512)";
  }
  for (DType type : {DType::F32, DType::F16, DType::BF16})
    for (int64_t k : {1, 31, 100})
      for (int64_t m : {1, 13, 14, 29, 30})
        for (int64_t n : {1, 33, 70}) {
          const auto x = random_floats(size_t(m * k), uint32_t(m * 131 + k));
          const auto wf = random_floats(size_t(n * k), uint32_t(n * 71 + k + 7));
          std::vector<char> w(dtype_row_bytes(type, k) * size_t(n));
          convert_from_f32(wf.data(), w.data(), type, wf.size());
          std::vector<float> wide(wf.size());
          convert_to_f32(w.data(), type, wide.data(), wide.size());
          std::vector<float> panels(size_t(cpu::f32_panel_floats(m, k)), -1.0f);
          std::vector<float> scratch(size_t(cpu::f32_gemm_scratch_floats(k)), -1.0f);
          kr.pack_f32_panels(x.data(), m, k, panels.data());
          const int64_t ldo = n + 3;
          std::vector<float> out(size_t(m * ldo), -7.0f), acc(size_t(m * ldo), 0.5f);
          kr.gemm_f32_panels(panels.data(), m, k, w.data(), type, n, out.data(), ldo, false,
                             scratch.data());
          kr.gemm_f32_panels(panels.data(), m, k, w.data(), type, n, acc.data(), ldo, true,
                             scratch.data());
          for (int64_t i = 0; i < m; ++i) {
            std::vector<float> one(static_cast<size_t>(cpu::f32_panel_floats(1, k)));
            std::vector<float> alone(static_cast<size_t>(n));
            kr.pack_f32_panels(x.data() + i * k, 1, k, one.data());
            kr.gemm_f32_panels(one.data(), 1, k, w.data(), type, n, alone.data(), n, false,
                               scratch.data());
            for (int64_t j = 0; j < n; ++j) {
              double exact = 0, terms = 0;
              for (int64_t t = 0; t < k; ++t) {
                exact += double(x[i * k + t]) * wide[j * k + t];
                terms += std::fabs(double(x[i * k + t]) * wide[j * k + t]);
              }
              const float got = out[i * ldo + j];
              ASSERT_NEAR(got, exact, (k + 2) * kU * terms)
                  << kr.name << " " << dtype_name(type) << " m " << m << " n " << n << " k " << k;
              ASSERT_EQ(got, alone[j]) << kr.name << ": row " << i << " depends on its neighbours";
              ASSERT_EQ(acc[i * ldo + j], 0.5f + got) << kr.name << " accumulate";
            }
            for (int64_t j = n; j < ldo; ++j) ASSERT_EQ(out[i * ldo + j], -7.0f) << "wrote past n";
          }
        }
}

// Keys and values for the attention kernel tests: n cache rows `ld` floats apart, random, as F32
// or as F16 (k and v then hold the F16 values widened, which the reference reads).
struct CacheRows {
  std::vector<float> k, v;
  std::vector<uint16_t> kh, vh;
  bool f16;
  /// The rows as the kernels take them, starting `offset` elements in.
  const void* keys(int64_t offset) const {
    return f16 ? static_cast<const void*>(kh.data() + offset) : k.data() + offset;
  }
  const void* values(int64_t offset) const {
    return f16 ? static_cast<const void*>(vh.data() + offset) : v.data() + offset;
  }
};

CacheRows random_cache_rows(DType type, int64_t n, int64_t ld, uint32_t seed_k, uint32_t seed_v) {
  CacheRows c{random_floats(size_t(n * ld), seed_k, 2.0f),
              random_floats(size_t(n * ld), seed_v, 3.0f),
              {},
              {},
              type == DType::F16};
  if (c.f16) {
    c.kh.resize(c.k.size());
    c.vh.resize(c.v.size());
    for (size_t i = 0; i < c.k.size(); ++i) {
      c.kh[i] = f32_to_f16(c.k[i]);
      c.k[i] = f16_to_f32(c.kh[i]);
      c.vh[i] = f32_to_f16(c.v[i]);
      c.v[i] = f16_to_f32(c.vh[i]);
    }
  }
  return c;
}

// One query row's softmax attention over the first `seen` cache rows (head slice at `offset`),
// in double, with the bound of the tests below: `worst` is the largest score error an hd-term
// F32 sum allows ((hd + 2) u of Σ|q k| scale), `tol` the output's, for n keys in all.
struct ExactAttention {
  std::vector<double> weight;  ///< the softmax weights
  double max = -INFINITY, worst = 0, vmax = 0, tol = 0;
  /// Output column d: Σ_j weight_j v_j[d].
  double out(const CacheRows& c, int64_t ld, int64_t offset, int64_t d) const {
    double o = 0;
    for (size_t j = 0; j < weight.size(); ++j) o += weight[j] * c.v[j * ld + offset + d];
    return o;
  }
};

ExactAttention exact_attention(const float* q, const CacheRows& c, int64_t ld, int64_t offset,
                               int64_t seen, int64_t n, int64_t hd, float scale) {
  ExactAttention e;
  e.weight.resize(static_cast<size_t>(seen));
  for (int64_t j = 0; j < seen; ++j) {
    double dot = 0, mag = 0;
    for (int64_t t = 0; t < hd; ++t) {
      const double prod = double(q[t]) * c.k[j * ld + offset + t];
      dot += prod;
      mag += std::fabs(prod);
    }
    e.weight[j] = dot * scale;
    e.max = std::max(e.max, e.weight[j]);
    e.worst = std::max(e.worst, (hd + 2) * kU * mag * scale);
    for (int64_t d = 0; d < hd; ++d)
      e.vmax = std::max(e.vmax, std::fabs(double(c.v[j * ld + offset + d])));
  }
  double sum = 0;
  for (double& w : e.weight) sum += (w = std::exp(w - e.max));
  for (double& w : e.weight) w /= sum;
  // Plus 3 u per 64 keys: the shared-head kernel's running softmax may rescale its sums once a
  // chunk (the factor, its product with the sums, and the chunk's rescaled numerators).
  e.tol = (2 * e.worst + std::ldexp(1.0, -20) + (n + 4 + 3 * ((n + 63) / 64)) * kU) * e.vmax;
  return e;
}

// The attention panel kernels (AVX-512 levels) against double: keys and values of one head laid
// out from rows `ld` apart (F32, and F16 widened exactly), query rows ldq apart, each row seeing
// its own number of keys (none: zeros; more than there are: all). Bound, per row: a score is an
// hd-term F32 FMA chain times the scale, within (hd + 2) u of Σ|q k| scale; a softmax weight then
// moves by at most twice the worst score error (relative), plus e^x's 2^-21 and the sums' n u, so
// the output is within (2 δs + 2^-20 + (n + 4 + 3 ⌈n / 64⌉) u) max|v| of the exact attention. Head
// widths cover the scalar key layout (8, 12, 80), the transposes (64) and a second block of value
// columns (80); key counts the block edges (31, 32, 33) and several blocks.
TEST_P(KernelLevels, AttentionRowsMatchDouble) {
  const cpu::KernelPath path = GetParam();
  if (!cpu::kernel_path_supported(path))
    GTEST_SKIP() << "this CPU cannot run the " << cpu::kernel_path_name(path) << " kernels";
  const auto& kr = cpu::kernels_for(path);
  if (!kr.attention_rows) {
    EXPECT_FALSE(kr.pack_attention_kv) << kr.name << ": layout without attention";
    GTEST_SKIP() << kr.name << " has no attention panel kernels (needs AVX-512)";
  }
  for (DType type : {DType::F32, DType::F16})
    for (int64_t hd : {8, 12, 64, 80})
      for (int64_t n : {1, 31, 32, 33, 100}) {
        const int64_t ld = 2 * hd + 5, ldq = 3 * hd, ldo = hd + 7;
        const float scale = 1.0f / std::sqrt(static_cast<float>(hd));
        const CacheRows c =
            random_cache_rows(type, n, ld, uint32_t(hd * 7 + n), uint32_t(hd * 11 + n));
        const int64_t head = 1;  // the second head of the rows: offsets hd into them
        const void* kp = c.keys(head * hd);
        const void* vp = c.values(head * hd);
        std::vector<float> keys_t(size_t(cpu::attention_keys_floats(n, hd)), NAN);
        std::vector<float> values(size_t(cpu::attention_values_floats(n, hd)), NAN);
        std::vector<float> scratch(size_t(cpu::attention_scratch_floats(n, hd)), NAN);
        kr.pack_attention_kv(kp, vp, type, n, ld, hd, keys_t.data(), values.data());
        for (int64_t rows : {1, 5, 14}) {
          const auto q = random_floats(size_t(rows * ldq), uint32_t(rows + hd + n), 2.0f);
          std::vector<int64_t> visible(static_cast<size_t>(rows));
          for (int64_t r = 0; r < rows; ++r)
            visible[r] = r == 2 ? 0 : r == 3 ? n + 9 : 1 + r * n / 7;
          std::vector<float> out(size_t(rows * ldo), -7.0f);
          kr.attention_rows(q.data() + head * hd, ldq, rows, hd, keys_t.data(), values.data(), n,
                            visible.data(), scale, out.data(), ldo, nullptr, scratch.data());
          // The partial form, as attention split by key blocks lays it: per row its max and sum,
          // then the unnormalised output row.
          const int64_t pw = hd + 2;
          std::vector<float> part(size_t(rows * pw), -7.0f);
          kr.attention_rows(q.data() + head * hd, ldq, rows, hd, keys_t.data(), values.data(), n,
                            visible.data(), scale, part.data() + 2, pw, part.data(),
                            scratch.data());
          for (int64_t r = 0; r < rows; ++r) {
            const int64_t seen = std::min(visible[r], n);
            const ExactAttention e = exact_attention(q.data() + r * ldq + head * hd, c, ld,
                                                     head * hd, seen, n, hd, scale);
            for (int64_t d = 0; d < hd; ++d)
              ASSERT_NEAR(out[r * ldo + d], e.out(c, ld, head * hd, d), e.tol)
                  << kr.name << " " << dtype_name(type) << " hd " << hd << " n " << n << " rows "
                  << rows << " row " << r << " sees " << seen << " column " << d;
            for (int64_t d = hd; d < ldo; ++d)
              ASSERT_EQ(out[r * ldo + d], -7.0f) << kr.name << ": wrote past hd";
            const float* pr = part.data() + r * pw;
            if (seen == 0) {
              ASSERT_TRUE(pr[0] == -INFINITY && pr[1] == 0.0f) << kr.name << ": stats, no keys";
              for (int64_t d = 0; d < hd; ++d) ASSERT_EQ(pr[2 + d], 0.0f) << kr.name;
              continue;
            }
            ASSERT_NEAR(pr[0], e.max, e.worst + 1e-30) << kr.name << " partial max, row " << r;
            ASSERT_GE(pr[1], 1.0f) << kr.name << ": the max key's term is e^0";
            for (int64_t d = 0; d < hd; ++d)
              ASSERT_NEAR(pr[2 + d] / pr[1], e.out(c, ld, head * hd, d), e.tol)
                  << kr.name << " partial, hd " << hd << " n " << n << " row " << r;
          }
        }
      }
}

// The decode-step attention kernel (one query row of all heads against a block of cache rows,
// AVX2 and above) against double, with the bound of AttentionRowsMatchDouble: each score is an
// hd-term F32 sum (any order: within (hd + 2) u of Σ|q k| scale), so the normalised output is
// within (2 δs + 2^-20 + (n + 4 + 3 ⌈n / 64⌉) u) max|v|. Heads share kv heads (group 3) or not;
// rows carry padding past the kv heads; key counts cover the eight- and sixteen-key batches' edges;
// head widths one to eight AVX-512 vectors, and multiples of 8 that are not of 16 (the 8-wide
// kernel, which the AVX-512 levels hand those to), with the AVX2 value pass's 64-column slices and
// tail; with group 3, heads pair up over a shared kv head in that value pass and heads 2 and 5 do
// not; with group 6 all heads read one kv head (absorbed cross-attention's form), and at encoder
// widths (256, 512) the AVX-512 levels run it as tiles of 4 + 2 heads, with the 4-key tiles'
// tails (n % 4) and several 64-key chunks of its running softmax (100, 300 keys).
TEST_P(KernelLevels, AttendRowBlockMatchesDouble) {
  const cpu::KernelPath path = GetParam();
  if (!cpu::kernel_path_supported(path))
    GTEST_SKIP() << "this CPU cannot run the " << cpu::kernel_path_name(path) << " kernels";
  const auto& kr = cpu::kernels_for(path);
  if (!kr.attend_row_block) {
    EXPECT_LT(path, cpu::KernelPath::Avx2) << kr.name << " should have attend_row_block";
    GTEST_SKIP() << kr.name << " has no decode attention kernel (needs AVX2)";
  }
  for (DType type : {DType::F32, DType::F16})
    for (int64_t hd : {8, 16, 24, 64, 72, 128, 256, 512})
      for (int group : {1, 3, 6})
        for (int64_t n : {1, 7, 8, 9, 15, 16, 17, 33, 100, 300}) {
          const int heads = 6, kv_heads = heads / group;
          const int64_t ld = kv_heads * hd + 3, pw = hd + 3;
          const float scale = 1.0f / std::sqrt(static_cast<float>(hd));
          const CacheRows c = random_cache_rows(type, n, ld, uint32_t(hd * 5 + n + group),
                                                uint32_t(hd * 13 + n + group));
          const auto q = random_floats(size_t(heads * hd), uint32_t(hd + n + 3 * group), 2.0f);
          std::vector<float> scores(size_t(heads * n), NAN), part(size_t(heads * pw), -7.0f);
          kr.attend_row_block(q.data(), c.keys(0), c.values(0), c.f16, n, ld, heads, group, hd,
                              scale, scores.data(), part.data(), pw);
          for (int h = 0; h < heads; ++h) {
            const int64_t off = (h / group) * hd;
            const ExactAttention e =
                exact_attention(q.data() + h * hd, c, ld, off, n, n, hd, scale);
            const float* pr = part.data() + h * pw;
            ASSERT_NEAR(pr[0], e.max, e.worst + 1e-30)
                << kr.name << " " << dtype_name(type) << " hd " << hd << " group " << group << " n "
                << n << " head " << h << ": max";
            ASSERT_GE(pr[1], 1.0f) << kr.name << ": the max key's term is e^0";
            ASSERT_LE(pr[1], n * (1 + 1e-5)) << kr.name << ": n terms of at most 1";
            for (int64_t d = 0; d < hd; ++d)
              ASSERT_NEAR(pr[2 + d] / pr[1], e.out(c, ld, off, d), e.tol)
                  << kr.name << " " << dtype_name(type) << " hd " << hd << " group " << group
                  << " n " << n << " head " << h << " column " << d;
            ASSERT_EQ(pr[hd + 2], -7.0f) << kr.name << ": wrote past the head's values";
          }
        }
}

// softmax_exp and silu_mul on every level against double: each e^x within 4 ulp (2^-21
// relative; the vector levels' polynomial is within ~2), the sum within that plus n u of the
// terms, the max exact; SiLU within 8 ulp (e^x, one add, one divide, one multiply). Inputs span
// softmax's range (scores up to 60 below the max: e^-60 ~ 1e-26) and SiLU's saturation (|g| to
// 100: e^100 overflows, and silu must still give g, or -0). Lengths cover the vector tails.
TEST_P(KernelLevels, ExpKernelsMatchDouble) {
  const cpu::KernelPath path = GetParam();
  if (!cpu::kernel_path_supported(path))
    GTEST_SKIP() << "this CPU cannot run the " << cpu::kernel_path_name(path) << " kernels";
  const auto& kr = cpu::kernels_for(path);
  const double rel = std::ldexp(1.0, -21);
  for (int64_t n : {1, 7, 8, 15, 16, 17, 100, 513}) {
    auto s = random_floats(size_t(n), uint32_t(n + 5), 12.0f);
    s[0] = -48.0f;  // 60 below a max of ~12 at most
    const auto before = s;
    float mx = 0;
    const float sum = kr.softmax_exp(s.data(), n, &mx);
    ASSERT_EQ(mx, *std::max_element(before.begin(), before.end())) << kr.name << " max, n " << n;
    double want_sum = 0;
    for (int64_t j = 0; j < n; ++j) {
      const double want = std::exp(double(before[j] - mx));  // the F32 difference, as in F32
      want_sum += want;
      ASSERT_NEAR(s[j], want, rel * want + 1e-37) << kr.name << " e^x, n " << n << " j " << j;
    }
    ASSERT_NEAR(sum, want_sum, (rel + (n + 1) * kU) * want_sum) << kr.name << " sum, n " << n;

    auto g = random_floats(size_t(n), uint32_t(n + 9), 6.0f);
    const auto u = random_floats(size_t(n), uint32_t(n + 11));
    g[0] = 100.0f;
    if (n > 1) g[1] = -100.0f;
    const auto g0 = g;
    kr.silu_mul(g.data(), u.data(), n);
    for (int64_t i = 0; i < n; ++i) {
      const double want = double(g0[i]) / (1.0 + std::exp(-double(g0[i]))) * u[i];
      // Below g = -88.7 the vector levels clamp e^-g at ~3.3e38: |silu| <= |g| 3.1e-39 there.
      ASSERT_NEAR(g[i], want, 8 * kU * std::fabs(want) + std::fabs(g0[i] * u[i]) * 3.1e-39)
          << kr.name << " silu_mul, g " << g0[i] << " n " << n;
    }
  }
}

// The bf16 GEMM (levels with AVX-512 BF16): the activations are rounded to bf16 (nearest even,
// as f32_to_bf16), every product of two bf16 numbers is exact in F32, and each output sums its
// k products in F32: within (k + 2) u Σ|terms| of the double sum of the rounded products. Shapes
// cover partial panels (m not a multiple of 14), partial blocks (n not a multiple of 32), odd k
// and row strides past n; outputs past n must stay untouched.
TEST_P(KernelLevels, Bf16PairsMatchDoubleSums) {
  const cpu::KernelPath path = GetParam();
  if (!cpu::kernel_path_supported(path))
    GTEST_SKIP() << "this CPU cannot run the " << cpu::kernel_path_name(path) << " kernels";
  const auto& kr = cpu::kernels_for(path);
  if (!kr.gemm_bf16_pairs) {
    EXPECT_FALSE(kr.pack_bf16_pairs) << kr.name << ": pack without GEMM";
    GTEST_SKIP() << kr.name << " has no bf16 GEMM (needs AVX-512 BF16)";
  }
  for (int64_t k : {1, 31, 64, 100, 333})
    for (int64_t m : {1, 13, 14, 15, 29, 40})
      for (int64_t n : {1, 17, 32, 45, 70}) {
        const auto x = random_floats(size_t(m * k), uint32_t(m * 131 + k));
        const auto wf = random_floats(size_t(n * k), uint32_t(n * 71 + k + 7));
        std::vector<uint16_t> w(wf.size());
        for (size_t i = 0; i < wf.size(); ++i) w[i] = f32_to_bf16(wf[i]);
        std::vector<uint32_t> panels(size_t(cpu::bf16_panel_words(kr, m, k)), 0xdeadbeefu);
        std::vector<uint32_t> scratch(size_t(cpu::bf16_block_words(kr, k)), 0xdeadbeefu);
        kr.pack_bf16_pairs(x.data(), m, k, panels.data());
        const int64_t ldo = n + 3;
        std::vector<float> out(size_t(m * ldo), -7.0f), acc(size_t(m * ldo), 0.5f);
        kr.gemm_bf16_pairs(panels.data(), m, k, w.data(), n, out.data(), ldo, false,
                           scratch.data());
        kr.gemm_bf16_pairs(panels.data(), m, k, w.data(), n, acc.data(), ldo, true, scratch.data());
        for (int64_t i = 0; i < m; ++i) {
          for (int64_t j = 0; j < n; ++j) {
            double exact = 0, terms = 0;
            for (int64_t t = 0; t < k; ++t) {
              const double p =
                  double(bf16_to_f32(f32_to_bf16(x[i * k + t]))) * bf16_to_f32(w[j * k + t]);
              exact += p;
              terms += std::fabs(p);
            }
            const float got = out[i * ldo + j];
            ASSERT_NEAR(got, exact, (k + 2) * kU * terms)
                << kr.name << " m " << m << " n " << n << " k " << k << " [" << i << "," << j
                << "]";
            ASSERT_EQ(acc[i * ldo + j], 0.5f + got) << kr.name << " accumulate";
          }
          for (int64_t j = n; j < ldo; ++j) ASSERT_EQ(out[i * ldo + j], -7.0f) << "wrote past n";
        }
      }
}

INSTANTIATE_TEST_SUITE_P(All, KernelLevels, ::testing::ValuesIn(cpu::all_kernel_paths()),
                         [](const auto& info) {
                           return std::string(cpu::kernel_path_name(info.param));
                         });

TEST(KernelLevels, ReportWhatRunsHere) {
  std::string runs, not_here;
  for (auto p : cpu::all_kernel_paths())
    (cpu::kernel_path_supported(p) ? runs : not_here) +=
        std::string(" ") + cpu::kernel_path_name(p);
  std::printf("kernel levels run here:%s; compiled but not runnable here:%s; active: %s\n",
              runs.c_str(), not_here.empty() ? " none" : not_here.c_str(),
              cpu::active_kernels().name);
  EXPECT_TRUE(cpu::kernel_path_supported(cpu::KernelPath::Scalar));
}

// ---- the linear op for every weight dtype ----

struct LinearCase {
  WeightKind kind;
  int64_t m;
};

class QuantLinear : public ::testing::TestWithParam<std::tuple<WeightKind, int64_t, int>> {};

TEST_P(QuantLinear, MatchesDoubleReference) {
  const auto [kind, m, threads] = GetParam();
  const int64_t n = 70, k = 100;  // K not a multiple of 32: the padded last block is exercised
  BackendOptions o;
  o.threads = threads;
  o.weights = kind;
  auto backend = make_backend(Device::CPU, o);
  auto wv = random_floats(n * k, 31), xv = random_floats(m * k, 37);
  Tensor w = Tensor::empty({n, k}, DType::F32);
  std::copy(wv.begin(), wv.end(), w.data<float>());
  Tensor wl = backend->load_weight(w, WeightUse::Matrix);
  // Block kinds are packed in groups of 16 rows (70 = 4 groups + 6 row-major rows).
  const DType plain = weight_kind_dtype(kind, DType::F32);
  ASSERT_EQ(dtype_unpacked(wl.dtype()), plain);
  ASSERT_EQ(dtype_is_packed(wl.dtype()), dtype_is_block(plain));
  Tensor x = Tensor::empty({m, k}, DType::F32);
  std::copy(xv.begin(), xv.end(), x.data<float>());
  Tensor out = Tensor::empty({m, n}, DType::F32);
  backend->linear(x, wl, out, false);
  // Independent reference in double: the weights as stored (dequantized by the scalar code);
  // for block weights on the dot path the activations as the kernels see them (Q8_0).
  std::vector<float> wd(n * k), xd(m * k);
  std::vector<char> row(dtype_row_bytes(plain, k));
  for (int64_t j = 0; j < n; ++j) {
    unpack_row16(wl, j, row.data());
    dequantize_row_ref(row.data(), plain, wd.data() + j * k, k);
  }
  // Packed block weights quantize the activations for any number of rows; bf16 GEMMs (more
  // than 16 rows, CPUs with AVX-512 BF16) round them to bf16.
  const bool x_quantized = dtype_is_block(plain);
  const bool x_bf16 = plain == DType::BF16 && m > 16 && cpu::active_kernels().gemm_bf16_pairs;
  for (int64_t i = 0; i < m; ++i) {
    if (x_quantized) {
      std::vector<BlockQ8_0> b((k + 31) / 32);
      quantize_row_q8_0_ref(xv.data() + i * k, b.data(), k);
      dequantize_row_q8_0_ref(b.data(), xd.data() + i * k, k);
    } else {
      for (int64_t t = 0; t < k; ++t)
        xd[i * k + t] = x_bf16 ? bf16_to_f32(f32_to_bf16(xv[i * k + t])) : xv[i * k + t];
    }
  }
  for (int64_t i = 0; i < m; ++i)
    for (int64_t j = 0; j < n; ++j) {
      double e = 0, a = 0;
      for (int64_t t = 0; t < k; ++t) {
        e += double(wd[j * k + t]) * xd[i * k + t];
        a += std::fabs(double(wd[j * k + t]) * xd[i * k + t]);
      }
      // F32 sums of exact products (F32 and widened weights) or of exact block sums: (k + 8) u
      // sum |terms| bounds either.
      ASSERT_NEAR(out.data<float>()[i * n + j], e, (k + 8) * kU * a + 1e-6)
          << weight_kind_name(kind) << " m " << m << " row " << i << " col " << j;
    }
}

INSTANTIATE_TEST_SUITE_P(All, QuantLinear,
                         ::testing::Combine(::testing::Values(WeightKind::F32, WeightKind::BF16,
                                                              WeightKind::F16, WeightKind::Q8_0,
                                                              WeightKind::Q4_0),
                                            ::testing::Values<int64_t>(1, 3, 16, 17, 40, 1100),
                                            ::testing::Values(1, 2)),
                         [](const auto& info) {
                           return std::string(weight_kind_name(std::get<0>(info.param))) + "_m" +
                                  std::to_string(std::get<1>(info.param)) + "_t" +
                                  std::to_string(std::get<2>(info.param));
                         });

// linears() over several weights of one kind equals one linear() per weight, bit for bit: every
// path splits the weights' columns (or groups, or blocks) between threads as one weight but
// computes each output as linear() does. Widths 70, 48 and 33 leave partial groups and blocks;
// 1 to 40 rows cover the decode dots, the row kernels, the tiled groups and the panel GEMMs.
TEST_P(QuantLinear, FusedLinearsEqualSeparateOnes) {
  const auto [kind, m, threads] = GetParam();
  if (m > 40) GTEST_SKIP() << "covered by the smaller row counts";
  const int64_t k = 100;
  BackendOptions o;
  o.threads = threads;
  o.weights = kind;
  auto backend = make_backend(Device::CPU, o);
  std::vector<Tensor> weights, fused, separate;
  std::vector<LinearTarget> targets;
  for (int64_t n : {70, 48, 33}) {
    const auto wv = random_floats(n * k, uint32_t(61 + n));
    Tensor w = Tensor::empty({n, k}, DType::F32);
    std::copy(wv.begin(), wv.end(), w.data<float>());
    weights.push_back(backend->load_weight(w, WeightUse::Matrix));
    fused.push_back(Tensor::empty({m, n}, DType::F32));
    separate.push_back(Tensor::empty({m, n}, DType::F32));
  }
  for (size_t i = 0; i < weights.size(); ++i) targets.push_back({&weights[i], &fused[i]});
  const auto xv = random_floats(m * k, 67);
  Tensor x = Tensor::empty({m, k}, DType::F32);
  std::copy(xv.begin(), xv.end(), x.data<float>());
  backend->linears(x, targets);
  for (size_t i = 0; i < weights.size(); ++i) {
    backend->linear(x, weights[i], separate[i], false);
    ASSERT_EQ(std::memcmp(fused[i].raw(), separate[i].raw(), fused[i].nbytes()), 0)
        << weight_kind_name(kind) << " m " << m << " weight " << i
        << ": fused and separate results differ";
  }
}

// Packed block weights over many rows and a long k: the backend hands the tiled kernels the
// activation tiles in chunks that fit L2 (one tile a chunk at this k, on every level), and each
// row's result is still the one it gets alone (a decode step's row-major kernels), bit for bit.
TEST(QuantLinear, ChunkedTilesEqualRowsAlone) {
  const int64_t n = 32, k = 32 * 1800, m = 40;
  for (WeightKind kind : {WeightKind::Q8_0, WeightKind::Q4_0}) {
    BackendOptions o;
    o.threads = 2;
    o.weights = kind;
    auto backend = make_backend(Device::CPU, o);
    const auto wv = random_floats(n * k, 71), xv = random_floats(m * k, 73);
    Tensor w = Tensor::empty({n, k}, DType::F32);
    std::copy(wv.begin(), wv.end(), w.data<float>());
    const Tensor wl = backend->load_weight(w, WeightUse::Matrix);
    Tensor x = Tensor::empty({m, k}, DType::F32);
    std::copy(xv.begin(), xv.end(), x.data<float>());
    Tensor out = Tensor::empty({m, n}, DType::F32);
    backend->linear(x, wl, out, false);
    for (int64_t i = 0; i < m; ++i) {
      Tensor xi = Tensor::empty({1, k}, DType::F32);
      std::copy(xv.begin() + i * k, xv.begin() + (i + 1) * k, xi.data<float>());
      Tensor alone = Tensor::empty({1, n}, DType::F32);
      backend->linear(xi, wl, alone, false);
      ASSERT_EQ(std::memcmp(alone.raw(), out.data<float>() + i * n, n * sizeof(float)), 0)
          << weight_kind_name(kind) << " (" << cpu::active_kernels().name << "): row " << i
          << " differs from the row alone";
    }
  }
}

// ---- NLL of real and fixture models under each format ----

struct NllResult {
  double nll;        // mean NLL of ids[1:] (nats per token)
  double max_logit;  // largest |logit| over the sequence (the scale errors are relative to)
};

NllResult mean_nll(CepeModel& model, const std::vector<int32_t>& ids,
                   const std::vector<std::vector<int32_t>>& chunks) {
  auto state = model.new_state();
  if (!chunks.empty()) model.set_context(*state, model.encode(chunks));
  Tensor logits = model.forward(*state, ids, /*all_logits=*/true);
  const int64_t vocab = logits.dim(1);
  double total = 0, max_logit = 0;
  for (size_t t = 0; t + 1 < ids.size(); ++t) {
    const float* row = logits.data<float>() + t * vocab;
    double mx = row[0];
    for (int64_t j = 0; j < vocab; ++j) {
      mx = std::max<double>(mx, row[j]);
      max_logit = std::max<double>(max_logit, std::fabs(row[j]));
    }
    double z = 0;
    for (int64_t j = 0; j < vocab; ++j) z += std::exp(row[j] - mx);
    total += -(row[ids[t + 1]] - mx - std::log(z));
  }
  return {total / static_cast<double>(ids.size() - 1), max_logit};
}

NllResult nll_with(const fs::path& dir, WeightKind kind, const std::vector<int32_t>& ids,
                   const std::vector<std::vector<int32_t>>& chunks, int threads = 2,
                   DType kv_cache = DType::F32) {
  BackendOptions o;
  o.threads = threads;
  o.weights = kind;
  auto backend = make_backend(Device::CPU, o);
  auto model = CepeModel::load(dir, *backend);
  model->set_kv_cache_dtype(kv_cache);
  return mean_nll(*model, ids, chunks);
}

// Bound on |NLL(kind) - NLL(f32)| in nats per token: 2 e L, where L is the largest |logit| of the
// F32 run and e the relative error the format puts on every product: each logit is a sum of
// products whose weights (and, for q8_0/q4_0 decode, activations) carry a relative rounding of at
// most e, so to first order a logit moves by at most e L, and the log-softmax of the target moves
// by at most twice the largest logit change. e: bf16 2^-8 (2^-9 unit roundoff, doubled for the
// rounding's propagation through the layers), f16 2^-11 (likewise), q8_0 2^-7 (half a step, 1/254
// of the block maximum, on the weights and on the activations), q4_0 2^-3 (one step of 1/8 of the
// block maximum at worst: the side opposite the largest weight ends at 7/8). F32 (stored) must
// be identical. An F16 KV cache rounds keys and values once (2^-11, doubled likewise: 2^-10),
// which adds to the weights' e. Random fixture models have large logits (NLL ~8 nats), so their
// bounds are wide; stories260K is a trained model with the same formula.
double relative_error(WeightKind kind) {
  switch (kind) {
    case WeightKind::BF16:
      return std::ldexp(1.0, -8);
    case WeightKind::F16:
      return std::ldexp(1.0, -11);
    case WeightKind::Q8_0:
      return std::ldexp(1.0, -7);
    case WeightKind::Q4_0:
      return std::ldexp(1.0, -3);
    default:
      return 0.0;
  }
}

const WeightKind kKinds[] = {WeightKind::F32, WeightKind::BF16, WeightKind::F16, WeightKind::Q8_0,
                             WeightKind::Q4_0};

void check_nll(const std::string& what, const fs::path& dir, const std::vector<int32_t>& ids,
               const std::vector<std::vector<int32_t>>& chunks, int threads) {
  const NllResult base = nll_with(dir, WeightKind::Stored, ids, chunks, threads);
  for (WeightKind kind : kKinds)
    for (DType kv : {DType::F32, DType::F16}) {
      const double got = nll_with(dir, kind, ids, chunks, threads, kv).nll;
      const double e = relative_error(kind) + (kv == DType::F16 ? std::ldexp(1.0, -10) : 0.0);
      const double bound = 2 * e * base.max_logit + 1e-9;
      std::printf(
          "%s NLL %s, %s KV cache, threads %d: %.5f (f32 %.5f, delta %+.5f, bound 2 e L = %.4f, "
          "L %.2f)\n",
          what.c_str(), weight_kind_name(kind), dtype_name(kv), threads, got, base.nll,
          got - base.nll, bound, base.max_logit);
      EXPECT_LE(std::fabs(got - base.nll), bound)
          << what << " " << weight_kind_name(kind) << " " << dtype_name(kv) << " KV cache";
    }
}

TEST(QuantNll, Stories260K) {
  CEPE_REQUIRE_SHARED("models/stories260K/stories260K.bin", shared);
  const fs::path src = *shared_dir / "models/stories260K";
  const fs::path dir = test::temp_dir("quant_stories");
  convert_llama2c(src / "stories260K.bin", src / "tok512.bin", dir);
  Tokenizer tok(dir / "tokenizer.model");
  std::string text = test::read_file(src / "expected_greedy_200.txt");
  auto ids = tok.encode(text, true);
  if (ids.size() > 200) ids.resize(200);
  check_nll("stories260K", dir, ids, {}, 2);
}

TEST(QuantNll, CepeFixtures) {
  for (const char* name : {"mha_encoder_gqa", "gqa_cross_last2"}) {
    auto f = test::load_fixture(name);
    const auto ids = test::ids_of(f->expected["input_ids"]);
    const auto chunks = test::chunks_of(f->expected["context_ids"]);
    const double reference = f->expected["nll"].GetDouble();
    EXPECT_NEAR(nll_with(f->dir, WeightKind::Stored, ids, chunks).nll, reference, 1e-4)
        << name << ": F32 NLL against the PyTorch reference";
    for (int threads : {1, 2}) check_nll(name, f->dir, ids, chunks, threads);
  }
}

// ---- conversion and flags ----

TEST(QuantLoad, ConvertedWeightsAreNarrowAndNormsStayF32) {
  auto f = test::load_fixture("mha_encoder_gqa");
  BackendOptions o;
  o.weights = WeightKind::Q4_0;
  auto backend = make_backend(Device::CPU, o);
  auto model = CepeModel::load(f->dir, *backend);
  // The loader counts the bytes it holds: q4_0 matrices at 18 bytes per 32 weights.
  EXPECT_GT(model->weight_bytes(), 0u);
  {
    auto f32 = make_backend(Device::CPU, BackendOptions{});
    auto full = CepeModel::load(f->dir, *f32);
    EXPECT_LT(model->weight_bytes(), full->weight_bytes() / 2);
  }
  Tensor w = Tensor::empty({4, 48}, DType::F32);
  for (int i = 0; i < 4 * 48; ++i) w.data<float>()[i] = static_cast<float>(i % 7) - 3.0f;
  EXPECT_EQ(backend->load_weight(w, WeightUse::Matrix).dtype(),
            DType::Q4_0);  // < 16 rows: row-major
  EXPECT_EQ(backend->load_weight(w, WeightUse::Matrix).nbytes(),
            4u * 2 * 18);  // 48 -> 2 blocks per row
  Tensor tall = Tensor::empty({40, 48}, DType::F32);
  for (int i = 0; i < 40 * 48; ++i) tall.data<float>()[i] = static_cast<float>(i % 11) - 5.0f;
  EXPECT_EQ(backend->load_weight(tall, WeightUse::Matrix).dtype(),
            DType::Q4_0x16);  // 2 groups + 8 rows
  EXPECT_EQ(backend->load_weight(tall, WeightUse::Matrix).nbytes(), 40u * 2 * 18);  // same bytes
  EXPECT_EQ(backend->load_weight(w, WeightUse::Vector).dtype(), DType::F32);
}

TEST(QuantLoad, ConvertWeightsCli) {
  const fs::path bin = test::cepe_binary();
  if (!fs::exists(bin)) GTEST_SKIP() << "cepe binary not found at " << bin;
  auto f = test::load_fixture("mha_encoder_gqa");
  const fs::path out = test::temp_dir("quant_convert") / "bf16";
  std::string log;
  ASSERT_EQ(test::run_command(bin.string() + " convert weights --model " + f->dir.string() +
                                  " --out " + out.string() + " --weights bf16",
                              &log),
            0)
      << log;
  WeightStore store = WeightStore::open(out);
  const WeightStore source = WeightStore::open(f->dir);
  ASSERT_EQ(store.names(), source.names());
  for (const auto& name : store.names()) {
    // Each tensor written as it is converted (a streamed write): the bytes of convert_weight.
    const Tensor got = store.get(name), want = convert_weight(source.get(name), DType::BF16);
    ASSERT_EQ(got.dtype(), DType::BF16) << name;
    ASSERT_EQ(got.shape(), want.shape()) << name;
    EXPECT_EQ(std::memcmp(got.raw(), want.raw(), want.nbytes()), 0) << name;
  }
  // The re-typed checkpoint gives the same NLL as loading the F32 one with --weights bf16 (norms
  // are widened back to F32 from bf16 in the first case, kept F32 in the second: bf16 bound).
  const auto ids = test::ids_of(f->expected["input_ids"]);
  const auto chunks = test::chunks_of(f->expected["context_ids"]);
  const NllResult base = nll_with(f->dir, WeightKind::Stored, ids, chunks);
  EXPECT_NEAR(nll_with(out, WeightKind::Stored, ids, chunks).nll,
              nll_with(f->dir, WeightKind::BF16, ids, chunks).nll,
              2 * relative_error(WeightKind::BF16) * base.max_logit);
  // Errors: one line naming the flag, exit status 1.
  EXPECT_EQ(test::run_command(bin.string() + " convert weights --model " + f->dir.string() +
                                  " --out " + out.string() + "2 --weights q4_0",
                              &log),
            1);
  EXPECT_NE(log.find("--weights q4_0"), std::string::npos) << log;
  EXPECT_EQ(test::run_command(
                bin.string() + " generate --model " + f->dir.string() + " --weights q5 --prompt hi",
                &log),
            1);
  EXPECT_NE(log.find("--weights: unknown weights kind 'q5'"), std::string::npos) << log;
  EXPECT_EQ(test::run_command(bin.string() + " generate --model " + f->dir.string() +
                                  " --kv-cache f8 --prompt hi",
                              &log),
            1);
  EXPECT_NE(log.find("--kv-cache: 'f8' is not a KV cache type (auto, f32 or f16)"),
            std::string::npos)
      << log;
}

// Quantizing straight into the packed layout (what the CPU backend loads) gives the bytes of
// quantizing row-major and packing afterwards, whole groups and the row-major tail alike, from
// every source dtype.
TEST(QuantPack, ConvertToPackedEqualsPackAfterConvert) {
  for (int64_t rows : {16, 37, 64}) {
    const int64_t n = 96;
    const auto v = random_floats(rows * n, 7 + rows);
    Tensor w = Tensor::empty({rows, n}, DType::F32);
    std::copy(v.begin(), v.end(), w.data<float>());
    for (DType source : {DType::F32, DType::BF16, DType::F16}) {
      const Tensor src = convert_weight(w, source);
      const Tensor src_threaded = convert_weight(w, source, 3);
      ASSERT_EQ(src_threaded.nbytes(), src.nbytes());
      EXPECT_EQ(std::memcmp(src_threaded.raw(), src.raw(), src.nbytes()), 0)
          << rows << " rows to " << dtype_name(source) << " on 3 threads";
      for (DType plain : {DType::Q4_0, DType::Q8_0}) {
        const DType packed_type = plain == DType::Q4_0 ? DType::Q4_0x16 : DType::Q8_0x16;
        const Tensor expected = pack_rows16(convert_weight(src, plain));
        // Three threads: one group each for 37 and 64 rows (the tail with the last), fewer
        // groups than threads for 16.
        for (int threads : {1, 3}) {
          const Tensor packed = convert_weight(src, packed_type, threads);
          ASSERT_EQ(packed.dtype(), packed_type);
          ASSERT_EQ(packed.nbytes(), expected.nbytes());
          EXPECT_EQ(std::memcmp(packed.raw(), expected.raw(), packed.nbytes()), 0)
              << rows << " rows of " << dtype_name(source) << " to " << dtype_name(packed_type)
              << " on " << threads << " threads";
        }
      }
    }
  }
}

// The bulk F16 conversions (F16C where the CPU has it) give the scalar reference's bits for
// every half (widening all 65536, NaNs with payloads included) and every kind of float
// (narrowing: each half exactly, the halfway points between neighbours, which round to even,
// the overflow edge, subnormals, signed zeros, infinities and NaNs with payloads that F16C
// itself would round otherwise), at every offset of a group of eight and in the tails.
TEST(DTypeConvert, BulkF16EqualsScalar) {
  std::vector<uint16_t> halves(65536 + 5);
  for (size_t i = 0; i < halves.size(); ++i) halves[i] = static_cast<uint16_t>(i * 40503u);
  std::vector<float> wide(halves.size());
  convert_to_f32(halves.data(), DType::F16, wide.data(), wide.size());
  for (size_t i = 0; i < halves.size(); ++i) {
    const float want = f16_to_f32(halves[i]);
    ASSERT_EQ(std::memcmp(&wide[i], &want, 4), 0) << "half 0x" << std::hex << halves[i];
  }
  std::vector<float> floats;
  const auto from_bits = [](uint32_t b) {
    float f;
    std::memcpy(&f, &b, 4);
    return f;
  };
  for (uint32_t h = 0; h < 0x7c00; ++h) {
    const float a = f16_to_f32(static_cast<uint16_t>(h));
    const float b = f16_to_f32(static_cast<uint16_t>(h + 1));
    floats.push_back(a);
    floats.push_back(-0.5f * (a + b));  // exact halfway, or the nearest float to it
  }
  for (uint32_t b : {0x7f800000u, 0xff800000u, 0x7fa00000u, 0xffc00123u, 0x7fc00000u, 0x7f800001u,
                     0x477ff000u, 0x477fefffu, 0x33000000u, 0x33000001u, 0x80000000u})
    for (int at = 0; at < 9; ++at) floats.insert(floats.begin() + at * 4099 + 3, from_bits(b));
  floats.resize(floats.size() / 8 * 8 + 3);
  std::vector<uint16_t> narrow(floats.size());
  convert_from_f32(floats.data(), narrow.data(), DType::F16, floats.size());
  for (size_t i = 0; i < floats.size(); ++i) {
    uint32_t bits;
    std::memcpy(&bits, &floats[i], 4);
    ASSERT_EQ(narrow[i], f32_to_f16(floats[i])) << "float bits 0x" << std::hex << bits;
  }
}

TEST(QuantLoad, FilePagesAreReleasedAfterConversion) {
  auto f = test::load_fixture("gqa_cross_last2");
  WeightStore store = WeightStore::open(f->dir);
  const Tensor t = store.get("lm_head.weight");
  ASSERT_TRUE(t.file_backed());
  for (DType target : {DType::Q8_0, DType::Q8_0x16}) {
    const Tensor q = convert_weight(t, target);
    EXPECT_EQ(q.dtype(), target);
    EXPECT_FALSE(q.file_backed());
    // The view still reads the same values (pages come back from the file).
    Tensor again = convert_weight(store.get("lm_head.weight"), target);
    EXPECT_EQ(std::memcmp(q.raw(), again.raw(), q.nbytes()), 0);
  }
}

// Stored weights are copied out of the file mapping (onto huge pages where whole 2 MB blocks
// allow): the same bytes, no longer a view of the file, and the view still reads them afterwards.
// A tensor of 2 MB or more starts on a 2 MB boundary, so its whole blocks can be huge pages.
TEST(QuantLoad, StoredWeightsAreCopiedOutOfTheFile) {
  auto f = test::load_fixture("gqa_cross_last2");
  WeightStore store = WeightStore::open(f->dir);
  const Tensor t = store.get("lm_head.weight");
  ASSERT_TRUE(t.file_backed());
  const Tensor c = copy_weight(t);
  EXPECT_FALSE(c.file_backed());
  EXPECT_EQ(c.dtype(), t.dtype());
  EXPECT_EQ(c.shape(), t.shape());
  const Tensor again = store.get("lm_head.weight");
  ASSERT_EQ(c.nbytes(), again.nbytes());
  EXPECT_EQ(std::memcmp(c.raw(), again.raw(), c.nbytes()), 0);

  const int64_t rows = 1031, width = 768;  // 3.02 MB of F32: one whole 2 MB block and a tail
  Tensor big = Tensor::empty({rows, width}, DType::F32);
  const auto v = random_floats(size_t(rows * width), 17);
  std::copy(v.begin(), v.end(), big.data<float>());
  const Tensor bc = copy_weight(big);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(bc.raw()) % (uintptr_t{2} << 20), 0u);
  EXPECT_EQ(std::memcmp(bc.raw(), big.raw(), big.nbytes()), 0);
  const Tensor threaded = copy_weight(big, 2);  // one 4 MB chunk: one thread takes it all
  EXPECT_EQ(std::memcmp(threaded.raw(), big.raw(), big.nbytes()), 0);
  Tensor bigger = Tensor::empty({3 * rows, width}, DType::F32);  // 9 MB: three chunks
  for (int i = 0; i < 3; ++i)
    std::copy(v.begin(), v.end(), bigger.data<float>() + i * rows * width);
  const Tensor shared = copy_weight(bigger, 2);
  EXPECT_EQ(std::memcmp(shared.raw(), bigger.raw(), bigger.nbytes()), 0);
  auto backend = make_backend(Device::CPU);
  const Tensor loaded = backend->load_weight(store.get("lm_head.weight"), WeightUse::Matrix);
  EXPECT_FALSE(loaded.file_backed()) << "a stored CPU weight stays a view of the file";
  EXPECT_EQ(std::memcmp(loaded.raw(), again.raw(), again.nbytes()), 0);
  EXPECT_EQ(backend->describe().find("left in the file mapping"), std::string::npos)
      << backend->describe();

  // Without room for a copy (a reserve no machine has) the weight stays a view of the file, and
  // the backend says how much it left there.
  BackendOptions tight;
  tight.stored_copy_reserve_bytes = uint64_t{1} << 62;
  auto cramped = make_backend(Device::CPU, tight);
  const Tensor mapped = cramped->load_weight(store.get("lm_head.weight"), WeightUse::Matrix);
  EXPECT_TRUE(mapped.file_backed());
  EXPECT_EQ(std::memcmp(mapped.raw(), again.raw(), again.nbytes()), 0);
  EXPECT_NE(cramped->describe().find(" MB of stored weights left in the file mapping"),
            std::string::npos)
      << cramped->describe();
  // Asked to read stored matrices in place, it does so whatever the memory.
  BackendOptions in_place;
  in_place.stored_weights = StoredWeights::Mapped;
  auto mapper = make_backend(Device::CPU, in_place);
  const Tensor kept = mapper->load_weight(store.get("lm_head.weight"), WeightUse::Matrix);
  EXPECT_TRUE(kept.file_backed());
  EXPECT_EQ(kept.raw(), again.raw()) << "the very pages of the mapping";
  EXPECT_NE(mapper->describe().find(" MB of stored weights read in place"), std::string::npos)
      << mapper->describe();
  // A conversion that cannot fit says so before allocating or reading anything: a 4 TB F32
  // matrix (a view over a few bytes: only its shape is ever looked at) to bf16.
  BackendOptions to_bf16;
  to_bf16.weights = WeightKind::BF16;
  float few[4] = {};
  const Tensor huge =
      Tensor::wrap(few, {int64_t{1} << 20, int64_t{1} << 20}, DType::F32, Device::CPU, nullptr);
  try {
    make_backend(Device::CPU, to_bf16)->load_weight(huge, WeightUse::Matrix);
    ADD_FAILURE() << "a 2 TB conversion was not refused";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("--weights bf16: out of memory converting a [1048576, "
                                         "1048576] F32 matrix (2097152 MB as BF16, "),
              std::string::npos)
        << e.what();
  }
  // What the machine reports: some memory, and no more available than in all.
  const auto room = available_memory_bytes(), total = total_memory_bytes();
  ASSERT_TRUE(room && total) << "/proc/meminfo unreadable";
  EXPECT_GT(*total, 0u);
  EXPECT_LE(*room, *total);
}

// The memory figures under the cgroup layouts a server meets, each as a fake procfs and cgroup
// mount: MemAvailable 8 GiB and MemTotal 16 GiB throughout, so a cgroup figure shows as the
// smaller one.
struct FakeSystem {
  SystemRoots roots;
  explicit FakeSystem(const std::string& tag, const std::string& self_cgroup) {
    const fs::path dir = test::temp_dir("system_" + tag);
    roots.proc = (dir / "proc").string();
    roots.cgroup = (dir / "cgroup").string();
    write("proc/meminfo",
          "MemTotal:       16777216 kB\nMemFree:  1 kB\nMemAvailable:    8388608 kB\n");
    write("proc/self/cgroup", self_cgroup);
    fs::create_directories(roots.cgroup);
  }
  void write(const std::string& rel, const std::string& text) const {
    const fs::path path = fs::path(roots.proc).parent_path() / rel;
    fs::create_directories(path.parent_path());
    std::ofstream(path) << text;
  }
};

constexpr uint64_t kMiB = uint64_t{1} << 20, kGiB = uint64_t{1} << 30;

// The stored-weight copy reads the memory figures where BackendOptions::system points. Under a
// cgroup limit whose usage is nearly all file pages a copy is made (those pages count as room);
// a matrix that does not fit stays mapped, and so does a later, smaller one that would fit the
// room alone, as the pages of the mapped matrix, which every step reads, count against it.
TEST(SystemMemory, StoredWeightCopiesFollowTheRoomUnderACgroupLimit) {
  auto f = test::load_fixture("gqa_cross_last2");
  WeightStore store = WeightStore::open(f->dir);
  const Tensor big = store.get("model.layers.0.mlp.up_proj.weight");
  const Tensor small = store.get("model.layers.0.self_attn.q_proj.weight");
  ASSERT_LT(small.nbytes(), big.nbytes());
  const uint64_t reserve = kMiB, anon = 1000, file = 4 * kGiB;
  const auto backend_with_room = [&](const std::string& tag, uint64_t room) {
    const FakeSystem sys(tag, "0::/job\n");
    sys.write("cgroup/job/memory.max", std::to_string(room + anon));
    sys.write("cgroup/job/memory.current", std::to_string(file + anon));
    sys.write("cgroup/job/memory.stat", "anon " + std::to_string(anon) + "\nactive_file " +
                                            std::to_string(file) + "\ninactive_file 0\n");
    BackendOptions o;
    o.stored_copy_reserve_bytes = reserve;
    o.system = sys.roots;
    return make_backend(Device::CPU, o);
  };
  auto roomy = backend_with_room("roomy", reserve + big.nbytes() + small.nbytes());
  EXPECT_FALSE(roomy->load_weight(big, WeightUse::Matrix).file_backed());
  EXPECT_FALSE(roomy->load_weight(small, WeightUse::Matrix).file_backed());
  auto tight = backend_with_room("tight", reserve + big.nbytes() - 1);
  EXPECT_TRUE(tight->load_weight(big, WeightUse::Matrix).file_backed());
  EXPECT_TRUE(tight->load_weight(small, WeightUse::Matrix).file_backed());
  EXPECT_NE(tight->describe().find("left in the file mapping for want of memory"),
            std::string::npos)
      << tight->describe();
}

TEST(SystemMemory, MeminfoAloneWithoutACgroupLimit) {
  const FakeSystem v1("v1none", "4:memory:/\n1:cpu:/\n");
  v1.write("cgroup/memory/memory.limit_in_bytes", "9223372036854771712\n");
  v1.write("cgroup/memory/memory.usage_in_bytes", "1000\n");
  EXPECT_EQ(available_memory_bytes(v1.roots), 8 * kGiB);
  EXPECT_EQ(total_memory_bytes(v1.roots), 16 * kGiB);
  const FakeSystem v2("v2max", "0::/user.slice\n");
  v2.write("cgroup/user.slice/memory.max", "max\n");
  v2.write("cgroup/user.slice/memory.current", "1000\n");
  EXPECT_EQ(available_memory_bytes(v2.roots), 8 * kGiB);
  EXPECT_EQ(total_memory_bytes(v2.roots), 16 * kGiB);
  FakeSystem none("nothing", "");
  none.roots.proc += "-missing";
  EXPECT_FALSE(available_memory_bytes(none.roots));
  EXPECT_FALSE(total_memory_bytes(none.roots));
}

TEST(SystemMemory, CgroupV1LimitAtThePathAndForAContainer) {
  // The host's view: the process's cgroup below the mount.
  const FakeSystem host("v1host", "5:cpu:/\n4:memory,hugetlb:/batch/job7\n");
  host.write("cgroup/memory/batch/job7/memory.limit_in_bytes", std::to_string(kGiB) + "\n");
  host.write("cgroup/memory/batch/job7/memory.usage_in_bytes", std::to_string(256 * kMiB));
  EXPECT_EQ(available_memory_bytes(host.roots), 768 * kMiB);
  EXPECT_EQ(total_memory_bytes(host.roots), kGiB);
  // A container without a cgroup namespace: /proc/self/cgroup names the host's path, the mount
  // shows the container's own cgroup at its root.
  const FakeSystem container("v1docker", "4:memory:/docker/0123abcd\n");
  container.write("cgroup/memory/memory.limit_in_bytes", std::to_string(2 * kGiB));
  container.write("cgroup/memory/memory.usage_in_bytes", std::to_string(2 * kGiB + 5));
  EXPECT_EQ(available_memory_bytes(container.roots), 0u) << "usage past the limit: no room";
  EXPECT_EQ(total_memory_bytes(container.roots), 2 * kGiB);
  // The limit set on an ancestor: memory.stat's hierarchical figure.
  const FakeSystem nested("v1nested", "4:memory:/batch/job7\n");
  nested.write("cgroup/memory/batch/job7/memory.limit_in_bytes", "9223372036854771712\n");
  nested.write("cgroup/memory/batch/job7/memory.stat",
               "cache 4096\nhierarchical_memory_limit " + std::to_string(3 * kGiB) +
                   "\nhierarchical_memsw_limit 9223372036854771712\n");
  nested.write("cgroup/memory/batch/job7/memory.usage_in_bytes", std::to_string(kGiB));
  EXPECT_EQ(available_memory_bytes(nested.roots), 2 * kGiB);
  EXPECT_EQ(total_memory_bytes(nested.roots), 3 * kGiB);
  // File pages the cgroup has read (a model file) count as room, as MemAvailable counts them:
  // the usage is 1.5 GiB of which 1 GiB is file cache (the cgroup's and its children's:
  // the total_ figures).
  const FakeSystem cached("v1cache", "4:memory:/job\n");
  cached.write("cgroup/memory/job/memory.limit_in_bytes", std::to_string(2 * kGiB));
  cached.write("cgroup/memory/job/memory.usage_in_bytes", std::to_string(kGiB + 512 * kMiB));
  cached.write("cgroup/memory/job/memory.stat",
               "active_file 1\ninactive_file 2\ntotal_active_file " + std::to_string(768 * kMiB) +
                   "\ntotal_inactive_file " + std::to_string(256 * kMiB) + "\n");
  EXPECT_EQ(available_memory_bytes(cached.roots), 2 * kGiB - 512 * kMiB);
}

TEST(SystemMemory, CgroupV2LimitOnTheCgroupOrAnAncestor) {
  const FakeSystem v2("v2", "0::/system.slice/cepe.service\n");
  v2.write("cgroup/system.slice/cepe.service/memory.max", "max\n");
  v2.write("cgroup/system.slice/cepe.service/memory.current", std::to_string(512 * kMiB));
  v2.write("cgroup/system.slice/memory.max", std::to_string(4 * kGiB));
  EXPECT_EQ(available_memory_bytes(v2.roots), 4 * kGiB - 512 * kMiB);
  EXPECT_EQ(total_memory_bytes(v2.roots), 4 * kGiB);
  // The service's own, lower limit wins.
  v2.write("cgroup/system.slice/cepe.service/memory.max", std::to_string(kGiB));
  EXPECT_EQ(available_memory_bytes(v2.roots), 512 * kMiB);
  // File pages in memory.current count as room (v2's memory.stat figures are the subtree's).
  v2.write("cgroup/system.slice/cepe.service/memory.stat",
           "anon 1\nfile 3\nactive_file " + std::to_string(128 * kMiB) + "\ninactive_file " +
               std::to_string(256 * kMiB) + "\n");
  EXPECT_EQ(available_memory_bytes(v2.roots), 512 * kMiB + 384 * kMiB);
  // A container with its own cgroup namespace ("0::/"), or without one (the host's path, absent
  // below the mount): the mount's root is its cgroup.
  for (const char* self : {"0::/\n", "0::/kubepods/pod42/ctr\n"}) {
    const FakeSystem ctr("v2ctr", self);
    ctr.write("cgroup/memory.max", std::to_string(6 * kGiB));
    ctr.write("cgroup/memory.current", std::to_string(kGiB));
    EXPECT_EQ(available_memory_bytes(ctr.roots), 5 * kGiB) << self;
    EXPECT_EQ(total_memory_bytes(ctr.roots), 6 * kGiB) << self;
  }
}

}  // namespace
