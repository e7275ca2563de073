// Every backend op against a scalar double-precision reference on random inputs, for F32, F16 and
// BF16 weights; the CUDA kernels run through the SIMT emulator (on every machine) and on the GPU
// (when there is one); whole models on the committed fixtures, CUDA against the CPU backend.
// Without a GPU every CUDA test skips with "no CUDA device: CUDA backend tests skipped".
//
// Tolerances (|got - want| <= bound, per element):
//  - elementwise F32 ops (rms_norm, rope, silu_mul, layer_norm, add_bias, add, gelu):
//    1e-5 * max(1, |want|); embedding: exact;
//  - F32 GEMMs, and 16-bit weights with F32 activations: kF32Dot * sum_i |x_i w_i| + 1e-6,
//    i.e. relative to the size of the terms, which is what bounds a dot product's rounding;
//  - 16-bit GEMMs whose activations are rounded to the weight type (CUDA, more than
//    kGemvMaxRows rows; the CPU's bf16 GEMM, more than 16 rows): the unit roundoff of that type
//    (bf16 2^-8, f16 2^-11) times sum_i |x_i w_i|, plus the F32 bound;
//  - attention: 2e-5 * max |v| (outputs are convex combinations of values);
//  - model logits on the fixtures: test::float32_logit_bound (derived from the float32 arithmetic,
//    ~4e-4 here) for F32 checkpoints; k16BitLogitTolerance for 16-bit
//    ones (calibrated by CudaNumericsOnCpu below); greedy tokens identical.
#include <gtest/gtest.h>
#include <rapidjson/document.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "common/error.h"
#include "engine/backend.h"
#include "engine/cpu/kernels.h"
#include "engine/cuda/kernels.cuh"  // compiled here by the host compiler: the SIMT emulator
#include "engine/generation.h"
#include "engine/models/cepe_llama.h"
#include "test_util.h"

namespace fs = std::filesystem;
using namespace cepe;
namespace kern = cepe::cuda_kernels;

namespace {

constexpr double kElementwiseRel = 1e-5;
constexpr double kF32Dot = 1e-5;
constexpr double kAttentionRel = 2e-5;
// Max |logit - CPU logit| allowed for 16-bit checkpoints on CUDA (logits here reach ~11).
// Calibrated by CudaNumericsOnCpu: bf16-rounded GEMM operands move the bf16 fixture's logits by
// at most 0.075; a wrong kernel moves them by far more than 0.1.
constexpr double k16BitLogitTolerance = 0.1;

// ---- helpers --------------------------------------------------------------------------------

Tensor random_tensor(std::vector<int64_t> shape, std::mt19937& rng, float scale = 1.0f) {
  Tensor t = Tensor::empty(std::move(shape), DType::F32);
  std::normal_distribution<float> d(0.0f, scale);
  for (int64_t i = 0; i < t.numel(); ++i) t.data<float>()[i] = d(rng);
  return t;
}

Tensor clone(const Tensor& t) {
  Tensor c = Tensor::empty(t.shape(), t.dtype());
  if (t.nbytes()) std::memcpy(c.raw(), t.raw(), t.nbytes());
  return c;
}

// A host F32 tensor stored as `type` (rounded to nearest even).
Tensor as_dtype(const Tensor& f32, DType type) {
  if (type == DType::F32) return clone(f32);
  Tensor t = Tensor::empty(f32.shape(), type);
  convert_from_f32(f32.data<float>(), t.raw(), type, f32.numel());
  return t;
}

// Values of a host tensor of any float dtype, widened.
std::vector<float> widened(const Tensor& t) {
  std::vector<float> v(static_cast<size_t>(t.numel()));
  convert_to_f32(t.raw(), t.dtype(), v.data(), v.size());
  return v;
}

std::vector<float> values(const Tensor& host_f32) {
  return std::vector<float>(host_f32.data<float>(), host_f32.data<float>() + host_f32.numel());
}

// Checks |got - want| <= bound[i] everywhere and reports the worst element.
void expect_within(const std::vector<float>& got, const std::vector<double>& want,
                   const std::vector<double>& bound, const std::string& what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  size_t worst = 0, bad = 0;
  double worst_ratio = 0.0;
  for (size_t i = 0; i < got.size(); ++i) {
    const double err = std::fabs(got[i] - want[i]);
    const double ratio = err / bound[i];
    if (!(err <= bound[i])) ++bad;  // NaN counts as bad
    if (!(ratio <= worst_ratio)) {
      worst_ratio = ratio;
      worst = i;
    }
  }
  EXPECT_EQ(bad, 0u) << what << ": " << bad << " of " << got.size()
                     << " elements out of tolerance; worst at " << worst << ": got " << got[worst]
                     << ", want " << want[worst] << ", bound " << bound[worst];
}

void expect_elementwise(const std::vector<float>& got, const std::vector<double>& want,
                        const std::string& what) {
  std::vector<double> bound(want.size());
  for (size_t i = 0; i < want.size(); ++i)
    bound[i] = kElementwiseRel * std::max(1.0, std::fabs(want[i]));
  expect_within(got, want, bound, what);
}

// ---- scalar references (double) ----------------------------------------------------------------

std::vector<double> ref_embedding(const Tensor& table, const std::vector<int32_t>& ids) {
  const std::vector<float> t = widened(table);
  const int64_t width = table.dim(1);
  std::vector<double> out;
  for (int32_t id : ids)
    for (int64_t c = 0; c < width; ++c) out.push_back(t[id * width + c]);
  return out;
}

std::vector<double> ref_rms_norm(const Tensor& x, const Tensor& w, double eps) {
  const int64_t width = x.dim(-1), rows = x.numel() / width;
  std::vector<double> out;
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = x.data<float>() + r * width;
    double ss = 0.0;
    for (int64_t i = 0; i < width; ++i) ss += double(xr[i]) * xr[i];
    const double inv = 1.0 / std::sqrt(ss / width + eps);
    for (int64_t i = 0; i < width; ++i) out.push_back(w.data<float>()[i] * (xr[i] * inv));
  }
  return out;
}

// out = x · wᵀ (+ init), and sum |x_i w_i| per output (the scale of its rounding error).
void ref_linear(const Tensor& x, const Tensor& weight, const Tensor* init, std::vector<double>* out,
                std::vector<double>* magnitude) {
  const std::vector<float> w = widened(weight);
  const int64_t n = weight.dim(0), k = weight.dim(1), m = x.numel() / k;
  out->assign(static_cast<size_t>(m * n), 0.0);
  magnitude->assign(static_cast<size_t>(m * n), 0.0);
  for (int64_t i = 0; i < m; ++i)
    for (int64_t j = 0; j < n; ++j) {
      double s = init ? init->data<float>()[i * n + j] : 0.0, a = 0.0;
      for (int64_t t = 0; t < k; ++t) {
        const double p = double(x.data<float>()[i * k + t]) * w[j * k + t];
        s += p;
        a += std::fabs(p);
      }
      (*out)[i * n + j] = s;
      (*magnitude)[i * n + j] = a + (init ? std::fabs(init->data<float>()[i * n + j]) : 0.0);
    }
}

std::vector<double> ref_rope(const Tensor& x, int heads, int head_dim, const Tensor& cos,
                             const Tensor& sin) {
  const int half = head_dim / 2;
  const int64_t rows = x.numel() / (int64_t(heads) * head_dim);
  std::vector<double> out(x.data<float>(), x.data<float>() + x.numel());
  for (int64_t t = 0; t < rows; ++t)
    for (int h = 0; h < heads; ++h)
      for (int i = 0; i < half; ++i) {
        const int64_t base = (t * heads + h) * head_dim;
        const double a = x.data<float>()[base + i], b = x.data<float>()[base + i + half];
        const double c = cos.data<float>()[t * half + i], s = sin.data<float>()[t * half + i];
        out[base + i] = a * c - b * s;
        out[base + i + half] = b * c + a * s;
      }
  return out;
}

std::vector<double> ref_silu_mul(const Tensor& g, const Tensor& u) {
  std::vector<double> out;
  for (int64_t i = 0; i < g.numel(); ++i) {
    const double x = g.data<float>()[i];
    out.push_back(x / (1.0 + std::exp(-x)) * u.data<float>()[i]);
  }
  return out;
}

std::vector<double> ref_layer_norm(const Tensor& x, const Tensor& w, const Tensor& b, double eps) {
  const int64_t width = x.dim(-1), rows = x.numel() / width;
  std::vector<double> out;
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = x.data<float>() + r * width;
    double mean = 0.0, var = 0.0;
    for (int64_t i = 0; i < width; ++i) mean += xr[i];
    mean /= width;
    for (int64_t i = 0; i < width; ++i) var += (xr[i] - mean) * (xr[i] - mean);
    const double inv = 1.0 / std::sqrt(var / width + eps);
    for (int64_t i = 0; i < width; ++i)
      out.push_back((xr[i] - mean) * inv * w.data<float>()[i] + b.data<float>()[i]);
  }
  return out;
}

std::vector<double> ref_add_bias(const Tensor& x, const Tensor& b) {
  const int64_t width = x.dim(-1);
  std::vector<double> out;
  for (int64_t i = 0; i < x.numel(); ++i)
    out.push_back(double(x.data<float>()[i]) + b.data<float>()[i % width]);
  return out;
}

std::vector<double> ref_add(const Tensor& x, const Tensor& y) {
  std::vector<double> out;
  for (int64_t i = 0; i < x.numel(); ++i)
    out.push_back(double(x.data<float>()[i]) + y.data<float>()[i]);
  return out;
}

std::vector<double> ref_gelu(const Tensor& x) {
  std::vector<double> out;
  for (int64_t i = 0; i < x.numel(); ++i) {
    const double v = x.data<float>()[i];
    out.push_back(0.5 * v * (1.0 + std::erf(v / std::sqrt(2.0))));
  }
  return out;
}

// Rows outside every segment keep out_init's values.
std::vector<double> ref_attention(const Tensor& q, const std::vector<AttentionSegment>& segments,
                                  const AttentionShape& shape, const Tensor& out_init) {
  const int hd = shape.head_dim, group = shape.heads / shape.kv_heads;
  const int64_t qs = int64_t(shape.heads) * hd, kvs = int64_t(shape.kv_heads) * hd;
  std::vector<double> out(out_init.data<float>(), out_init.data<float>() + out_init.numel());
  for (const AttentionSegment& sg : segments) {
    const int64_t k_len = sg.k.dim(0);
    for (int64_t i = 0; i < sg.q_len; ++i)
      for (int h = 0; h < shape.heads; ++h) {
        const int kvh = h / group;
        const int64_t limit = sg.causal ? std::min(k_len, sg.causal_offset + i + 1) : k_len;
        const float* qr = q.data<float>() + (sg.q_begin + i) * qs + h * hd;
        double* o = out.data() + (sg.q_begin + i) * qs + h * hd;
        std::fill(o, o + hd, 0.0);
        if (limit <= 0) continue;
        std::vector<double> s(static_cast<size_t>(limit));
        double mx = -INFINITY;
        for (int64_t j = 0; j < limit; ++j) {
          const float* kr = sg.k.data<float>() + j * kvs + kvh * hd;
          double dot = 0.0;
          for (int d = 0; d < hd; ++d) dot += double(qr[d]) * kr[d];
          s[j] = dot * shape.scale;
          mx = std::max(mx, s[j]);
        }
        double sum = 0.0;
        for (double& x : s) sum += (x = std::exp(x - mx));
        for (int64_t j = 0; j < limit; ++j) {
          const float* vr = sg.v.data<float>() + j * kvs + kvh * hd;
          for (int d = 0; d < hd; ++d) o[d] += s[j] / sum * vr[d];
        }
      }
  }
  return out;
}

double max_abs(const Tensor& t) {
  double m = 0.0;
  for (int64_t i = 0; i < t.numel(); ++i) m = std::max(m, double(std::fabs(t.data<float>()[i])));
  return m;
}

// ---- attention cases shared by every implementation ---------------------------------------------

struct AttentionCase {
  std::string name;
  AttentionShape shape;
  Tensor q, out_init;                                 // host F32
  std::vector<Tensor> keys, values;                   // host F32
  std::vector<AttentionSegment> segments;             // k/v are views of keys/values
  std::vector<std::pair<size_t, int64_t>> placement;  // per segment: which keys, first row
};

// A segment over its own k/v of `k_len` rows.
void add_segment(AttentionCase& c, std::mt19937& rng, int64_t q_begin, int64_t q_len, int64_t k_len,
                 bool causal, int64_t offset) {
  const int64_t kvs = int64_t(c.shape.kv_heads) * c.shape.head_dim;
  c.keys.push_back(random_tensor({k_len, kvs}, rng));
  c.values.push_back(random_tensor({k_len, kvs}, rng));
  AttentionSegment s;
  s.q_begin = q_begin;
  s.q_len = q_len;
  s.k = c.keys.back();
  s.v = c.values.back();
  s.causal = causal;
  s.causal_offset = offset;
  c.segments.push_back(s);
  c.placement.emplace_back(c.keys.size() - 1, 0);
}

AttentionCase make_case(const std::string& name, int heads, int kv_heads, int head_dim,
                        int64_t q_rows, uint32_t seed) {
  AttentionCase c;
  c.name = name;
  c.shape = {heads, kv_heads, head_dim, 1.0f / std::sqrt(float(head_dim))};
  std::mt19937 rng(seed);
  c.q = random_tensor({q_rows, int64_t(heads) * head_dim}, rng);
  c.out_init = Tensor::empty({q_rows, int64_t(heads) * head_dim}, DType::F32);
  // Rows outside every segment must keep this value.
  std::fill(c.out_init.data<float>(), c.out_init.data<float>() + c.out_init.numel(), 7.0f);
  return c;
}

std::vector<AttentionCase> attention_cases() {
  std::vector<AttentionCase> cases;
  {  // the encoder: unequal chunks, bidirectional, packed without padding, GQA
    AttentionCase c = make_case("encoder_chunks_gqa", 4, 2, 16, 65, 1);
    std::mt19937 rng(11);
    const int64_t kvs = 2 * 16;
    Tensor k = random_tensor({65, kvs}, rng), v = random_tensor({65, kvs}, rng);
    c.keys = {k};
    c.values = {v};
    int64_t begin = 0;
    for (int64_t len : {7, 13, 1, 40, 4}) {
      AttentionSegment s;
      s.q_begin = begin;
      s.q_len = len;
      s.k = k.rows(begin, len);
      s.v = v.rows(begin, len);
      c.segments.push_back(s);
      c.placement.emplace_back(0, begin);
      begin += len;
    }
    cases.push_back(std::move(c));
  }
  {  // causal prefill, a continued prompt after cached tokens, and a decode row; two rows unused
    AttentionCase c = make_case("causal_offsets", 4, 4, 8, 40, 2);
    std::mt19937 rng(12);
    add_segment(c, rng, 0, 20, 20, true, 0);
    add_segment(c, rng, 20, 17, 22, true, 5);
    add_segment(c, rng, 38, 1, 37, true, 36);
    cases.push_back(std::move(c));
  }
  {  // rows that see no key at all must come out as zeros
    AttentionCase c = make_case("fully_masked_rows", 2, 1, 12, 6, 3);
    std::mt19937 rng(13);
    add_segment(c, rng, 0, 6, 4, true, -3);
    cases.push_back(std::move(c));
  }
  {  // cross-attention of two requests, one of them with several rows
    AttentionCase c = make_case("cross_two_requests", 8, 2, 32, 5, 4);
    std::mt19937 rng(14);
    add_segment(c, rng, 0, 1, 300, false, 0);
    add_segment(c, rng, 1, 4, 77, false, 0);
    cases.push_back(std::move(c));
  }
  {  // a long key range: decode and a few causal rows over 5000 keys, widest head
    AttentionCase c = make_case("long_5000_keys", 4, 2, 128, 4, 5);
    std::mt19937 rng(15);
    add_segment(c, rng, 0, 1, 5000, false, 0);
    add_segment(c, rng, 1, 3, 5000, true, 4997);
    cases.push_back(std::move(c));
  }
  {  // heads wider than the CUDA kernel's 128 (absorbed cross-attention: one shared key head of
     // encoder width, every (row, head) pair a query row), and wide GQA; a row left unused
    AttentionCase c = make_case("wide_heads", 1, 1, 300, 14, 6);
    std::mt19937 rng(16);
    add_segment(c, rng, 0, 12, 500, false, 0);
    add_segment(c, rng, 13, 1, 9, false, 0);
    cases.push_back(std::move(c));
    AttentionCase g = make_case("wide_heads_gqa", 4, 2, 160, 7, 7);
    add_segment(g, rng, 0, 5, 90, false, 0);
    add_segment(g, rng, 5, 2, 33, false, 0);
    cases.push_back(std::move(g));
  }
  return cases;
}

void check_attention_result(const AttentionCase& c, const std::vector<float>& got,
                            const std::string& who) {
  const std::vector<double> want = ref_attention(c.q, c.segments, c.shape, c.out_init);
  double vmax = 7.0;
  for (const Tensor& v : c.values) vmax = std::max(vmax, max_abs(v));
  expect_within(got, want, std::vector<double>(want.size(), kAttentionRel * vmax),
                who + " attention " + c.name);
}

// ---- backends under test -----------------------------------------------------------------------

const char* kNoCuda = "no CUDA device: CUDA backend tests skipped";

#define SKIP_UNLESS_CUDA() \
  if (!backend_available(Device::CUDA)) GTEST_SKIP() << kNoCuda

std::string device_label(const ::testing::TestParamInfo<Device>& info) {
  return device_name(info.param);
}

class BackendOps : public ::testing::TestWithParam<Device> {
 protected:
  void SetUp() override {
    if (!backend_available(GetParam())) GTEST_SKIP() << kNoCuda;
    backend_ = make_backend(GetParam());
  }
  Backend& b() { return *backend_; }
  // Device copy of a host tensor; in-place ops on it never touch the host original.
  Tensor dev(const Tensor& host) { return b().to_device(clone(host)); }

  std::unique_ptr<Backend> backend_;
};

TEST_P(BackendOps, Embedding) {
  std::mt19937 rng(21);
  const Tensor table = random_tensor({50, 24}, rng);
  const std::vector<int32_t> ids = {0, 49, 7, 7, 3, 22};
  for (DType t : {DType::F32, DType::F16, DType::BF16}) {
    const Tensor stored = as_dtype(table, t);
    Tensor out = b().empty({int64_t(ids.size()), 24}, DType::F32);
    b().embedding(b().load_weight(stored, WeightUse::Table), ids, out);
    const std::vector<double> want = ref_embedding(stored, ids);
    expect_within(values(b().to_host_f32(out)), want, std::vector<double>(want.size(), 0.0),
                  std::string("embedding ") + dtype_name(t));
  }
  Tensor out = b().empty({1, 24}, DType::F32);
  EXPECT_THROW(b().embedding(b().load_weight(table, WeightUse::Table), {50}, out), Error);
}

TEST_P(BackendOps, RmsNorm) {
  std::mt19937 rng(22);
  for (int64_t width : {1, 48, 333, 4096}) {
    const Tensor x = random_tensor({5, width}, rng, 3.0f);
    const Tensor w = random_tensor({width}, rng);
    for (DType t : {DType::F32, DType::BF16}) {
      // Norm weights are loaded as F32 whatever their stored type.
      const Tensor stored = as_dtype(w, t);
      Tensor out = b().empty({5, width}, DType::F32);
      b().rms_norm(dev(x), b().load_weight(stored, WeightUse::Vector), 1e-5f, out);
      const Tensor wide = Tensor::empty({width}, DType::F32);
      convert_to_f32(stored.raw(), t, wide.data<float>(), width);
      expect_elementwise(values(b().to_host_f32(out)), ref_rms_norm(x, wide, 1e-5),
                         "rms_norm width " + std::to_string(width));
    }
  }
}

double linear_unit_roundoff(Device d, DType weight, int64_t rows) {
  // The CPU's bf16 GEMM (more than 16 rows, AVX-512 BF16) rounds activations to bf16 too.
  if (d == Device::CPU)
    return weight == DType::BF16 && rows > 16 && cpu::active_kernels().gemm_bf16_pairs
               ? std::ldexp(1.0, -8)
               : 0.0;
  if (weight == DType::F32 || rows <= kern::kGemvMaxRows) return 0.0;
  return weight == DType::BF16 ? std::ldexp(1.0, -8) : std::ldexp(1.0, -11);
}

TEST_P(BackendOps, Linear) {
  std::mt19937 rng(23);
  struct Shape {
    int64_t m, n, k;
  };
  // Rows 1..8 take the GEMV path on CUDA, more take cuBLAS; k = 100 is not a multiple of 8.
  for (const Shape s : {Shape{1, 96, 64}, Shape{3, 50, 100}, Shape{8, 130, 256}, Shape{9, 64, 48},
                        Shape{40, 257, 512}, Shape{130, 33, 96}}) {
    const Tensor x = random_tensor({s.m, s.k}, rng);
    const Tensor w = random_tensor({s.n, s.k}, rng, 0.05f);
    const Tensor init = random_tensor({s.m, s.n}, rng);
    for (DType t : {DType::F32, DType::F16, DType::BF16}) {
      const Tensor stored = as_dtype(w, t);
      const Tensor wd = b().load_weight(stored, WeightUse::Matrix);
      EXPECT_EQ(wd.dtype(), t) << "weights keep their stored type";
      for (bool acc : {false, true}) {
        Tensor out = acc ? dev(init) : b().empty({s.m, s.n}, DType::F32);
        b().linear(dev(x), wd, out, acc);
        std::vector<double> want, mag;
        ref_linear(x, stored, acc ? &init : nullptr, &want, &mag);
        const double u = linear_unit_roundoff(GetParam(), t, s.m);
        std::vector<double> bound(want.size());
        for (size_t i = 0; i < bound.size(); ++i) bound[i] = (kF32Dot + u) * mag[i] + 1e-6;
        expect_within(values(b().to_host_f32(out)), want, bound,
                      "linear " + std::to_string(s.m) + "x" + std::to_string(s.n) + "x" +
                          std::to_string(s.k) + " " + dtype_name(t) + (acc ? " accumulate" : ""));
      }
    }
  }
  Tensor out = b().empty({2, 3}, DType::F32);
  EXPECT_THROW(b().linear(dev(random_tensor({2, 5}, rng)),
                          b().load_weight(random_tensor({3, 4}, rng), WeightUse::Matrix), out),
               Error);
}

// The absorbed cross-attention's per-head products, against double loops, for MHA and GQA,
// both orientations and every weight dtype.
TEST_P(BackendOps, HeadLinear) {
  std::mt19937 rng(27);
  struct Case {
    int64_t rows;
    int heads, groups;
    int64_t a, b;
  };
  for (const Case c :
       {Case{1, 4, 4, 8, 24}, Case{5, 6, 2, 16, 40}, Case{3, 8, 1, 12, 7}, Case{0, 2, 2, 4, 4}}) {
    const Tensor w = random_tensor({c.groups * c.a, c.b}, rng, 0.1f);
    for (bool transposed : {false, true}) {
      const int64_t in = transposed ? c.b : c.a, out_w = transposed ? c.a : c.b;
      const Tensor x = random_tensor({c.rows, c.heads * in}, rng);
      for (DType t : {DType::F32, DType::F16, DType::BF16}) {
        const Tensor stored = as_dtype(w, t);
        const std::vector<float> wf = widened(stored);
        Tensor out = b().empty({c.rows, c.heads * out_w}, DType::F32);
        b().head_linear(dev(x), b().load_weight(stored, WeightUse::Matrix), c.heads, c.groups,
                        transposed, out);
        std::vector<double> want, bound;
        for (int64_t r = 0; r < c.rows; ++r)
          for (int h = 0; h < c.heads; ++h) {
            const int64_t g = h / (c.heads / c.groups);
            for (int64_t o = 0; o < out_w; ++o) {
              double sum = 0.0, mag = 0.0;
              for (int64_t i = 0; i < in; ++i) {
                // Block g is rows [g*a, (g+1)*a) of [groups*a, b]: element (row, col).
                const int64_t row = g * c.a + (transposed ? o : i), col = transposed ? i : o;
                const double p = double(x.data<float>()[r * c.heads * in + h * in + i]) *
                                 wf[static_cast<size_t>(row * c.b + col)];
                sum += p;
                mag += std::fabs(p);
              }
              want.push_back(sum);
              bound.push_back(kF32Dot * mag + 1e-6);
            }
          }
        expect_within(values(b().to_host_f32(out)), want, bound,
                      "head_linear " + std::to_string(c.rows) + " rows, " +
                          std::to_string(c.heads) + "/" + std::to_string(c.groups) + " " +
                          dtype_name(t) + (transposed ? " transposed" : ""));
      }
    }
  }
  Tensor out = b().empty({2, 3 * 7}, DType::F32);
  const Tensor w = b().load_weight(random_tensor({4, 7}, rng), WeightUse::Matrix);
  for (auto [heads, groups] : {std::pair{3, 2}, std::pair{4, 0}, std::pair{4, 3}}) {
    try {
      b().head_linear(dev(random_tensor({2, heads * 2}, rng)), w, heads, groups, false, out);
      ADD_FAILURE() << "no error for heads " << heads << " groups " << groups;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("head_linear"), std::string::npos) << e.what();
    }
  }
}

TEST_P(BackendOps, Rope) {
  std::mt19937 rng(24);
  const int heads = 3, hd = 16;
  const Tensor x = random_tensor({7, heads * hd}, rng);
  const Tensor cos = random_tensor({7, hd / 2}, rng), sin = random_tensor({7, hd / 2}, rng);
  Tensor xd = dev(x);
  b().rope(xd, heads, hd, dev(cos), dev(sin));
  expect_elementwise(values(b().to_host_f32(xd)), ref_rope(x, heads, hd, cos, sin), "rope");
}

TEST_P(BackendOps, SiluMulAndCopyRows) {
  std::mt19937 rng(25);
  const Tensor g = random_tensor({9, 31}, rng, 4.0f), u = random_tensor({9, 31}, rng);
  Tensor gd = dev(g);
  b().silu_mul(gd, dev(u));
  expect_elementwise(values(b().to_host_f32(gd)), ref_silu_mul(g, u), "silu_mul");

  const Tensor src = random_tensor({6, 5}, rng), dst0 = random_tensor({8, 5}, rng);
  Tensor dst = dev(dst0);
  b().copy_rows(dev(src), 2, dst, 4, 3);
  std::vector<double> want(dst0.data<float>(), dst0.data<float>() + dst0.numel());
  for (int r = 0; r < 3; ++r)
    for (int c = 0; c < 5; ++c) want[(4 + r) * 5 + c] = src.data<float>()[(2 + r) * 5 + c];
  expect_within(values(b().to_host_f32(dst)), want, std::vector<double>(want.size(), 0.0),
                "copy_rows");
  EXPECT_THROW(b().copy_rows(dev(src), 4, dst, 0, 3), Error);
}

TEST_P(BackendOps, LayerNormBiasAddGelu) {
  std::mt19937 rng(28);
  for (int64_t width : {1, 32, 333, 768}) {
    // Rows centred far from zero: a one-pass variance would cancel badly here.
    Tensor x = random_tensor({5, width}, rng, 3.0f);
    for (int64_t i = 0; i < x.numel(); ++i) x.data<float>()[i] += 10.0f;
    const Tensor w = random_tensor({width}, rng), bias = random_tensor({width}, rng);
    for (DType t : {DType::F32, DType::BF16}) {
      const Tensor ws = as_dtype(w, t), bs = as_dtype(bias, t);
      Tensor wide_w = Tensor::empty({width}, DType::F32),
             wide_b = Tensor::empty({width}, DType::F32);
      convert_to_f32(ws.raw(), t, wide_w.data<float>(), width);
      convert_to_f32(bs.raw(), t, wide_b.data<float>(), width);
      const std::vector<double> want = ref_layer_norm(x, wide_w, wide_b, 1e-12);
      Tensor out = b().empty({5, width}, DType::F32);
      b().layer_norm(dev(x), b().load_weight(ws, WeightUse::Vector),
                     b().load_weight(bs, WeightUse::Vector), 1e-12f, out);
      expect_elementwise(values(b().to_host_f32(out)), want,
                         "layer_norm width " + std::to_string(width));
      Tensor xd = dev(x);  // in place, as the BERT encoder calls it
      b().layer_norm(xd, b().load_weight(ws, WeightUse::Vector),
                     b().load_weight(bs, WeightUse::Vector), 1e-12f, xd);
      expect_elementwise(values(b().to_host_f32(xd)), want,
                         "layer_norm in place, width " + std::to_string(width));
    }
    Tensor xd = dev(x);
    b().add_bias(xd, dev(bias));
    expect_elementwise(values(b().to_host_f32(xd)), ref_add_bias(x, bias), "add_bias");
    const Tensor y = random_tensor({5, width}, rng);
    xd = dev(x);
    b().add(xd, dev(y));
    expect_elementwise(values(b().to_host_f32(xd)), ref_add(x, y), "add");
  }
  const Tensor g = random_tensor({7, 129}, rng, 4.0f);
  Tensor gd = dev(g);
  b().gelu(gd);
  expect_elementwise(values(b().to_host_f32(gd)), ref_gelu(g), "gelu");
  Tensor x = dev(random_tensor({2, 8}, rng));
  Tensor out = b().empty({2, 8}, DType::F32);
  EXPECT_THROW(
      b().layer_norm(x, dev(random_tensor({7}, rng)), dev(random_tensor({8}, rng)), 1e-5f, out),
      Error);
  EXPECT_THROW(b().add_bias(x, dev(random_tensor({7}, rng))), Error);
  EXPECT_THROW(b().add(x, dev(random_tensor({3, 8}, rng))), Error);
}

TEST_P(BackendOps, Attention) {
  for (const AttentionCase& c : attention_cases()) {
    // Device copies of the k/v tensors; segments that were views of one packed tensor stay views
    // of its device copy.
    std::vector<Tensor> dk, dv;
    for (size_t i = 0; i < c.keys.size(); ++i) {
      dk.push_back(dev(c.keys[i]));
      dv.push_back(dev(c.values[i]));
    }
    std::vector<AttentionSegment> segs = c.segments;
    for (size_t i = 0; i < segs.size(); ++i) {
      const auto [owner, row0] = c.placement[i];
      segs[i].k = dk[owner].rows(row0, segs[i].k.dim(0));
      segs[i].v = dv[owner].rows(row0, segs[i].v.dim(0));
    }
    Tensor out = dev(c.out_init);
    b().attention(dev(c.q), segs, c.shape, out);
    check_attention_result(c, values(b().to_host_f32(out)), device_name(GetParam()));
  }
}

// Keys and values given in parts (a request's passages read where they lie) give the
// attention over the same rows joined, on every CPU path: decode rows (<= 4 per segment), wide
// absorbed rows split by key blocks, GQA, several segments, beside a causal segment in the same
// call. Key-block results are merged in a fixed order, so 1 and 2 threads agree bit for bit.
// The F16 KV cache: keys and values stored as fp16 are widened as they are read, so attention
// over them is attention over F32 tensors holding the same rounded numbers: bit for bit on the
// prefill path (panel kernels or row tiles: head slices widened as they are laid out), to the
// last few bits on the decode
// path (a few rows: cache rows widened one at a time), causal as the cache is; and copy_rows
// rounds F32 rows into an F16 cache exactly as f32_to_f16 does.
TEST(CpuAttention, F16KeysEqualRoundedF32Keys) {
  struct Shape {
    std::string name;
    int heads, kv_heads, head_dim;
    int64_t q_len, k_len, offset;
  };
  const std::vector<Shape> shapes = {
      {"decode_one", 4, 2, 16, 1, 700, 699},
      {"decode_three", 4, 4, 32, 3, 129, 126},
      {"gqa_prefill", 8, 2, 32, 40, 73, 33},
      {"prefill_from_zero", 2, 1, 64, 90, 90, 0},
  };
  for (const Shape& sh : shapes) {
    AttentionCase c = make_case(sh.name, sh.heads, sh.kv_heads, sh.head_dim, sh.q_len, 51);
    std::mt19937 rng(52);
    add_segment(c, rng, 0, sh.q_len, sh.k_len, true, sh.offset);
    std::vector<AttentionSegment> half = c.segments;
    for (Tensor* t : {&c.keys.back(), &c.values.back()}) {
      Tensor h = Tensor::empty(t->shape(), DType::F16);
      auto cpu = make_backend(Device::CPU);
      cpu->copy_rows(*t, 0, h, 0, t->dim(0));  // the cache write under test
      const uint16_t* hv = static_cast<const uint16_t*>(h.raw());
      float* f = t->data<float>();
      for (int64_t i = 0; i < t->numel(); ++i) {
        ASSERT_EQ(hv[i], f32_to_f16(f[i])) << sh.name << ": copy_rows rounded element " << i;
        f[i] = f16_to_f32(hv[i]);  // the F32 case now holds the rounded numbers
      }
      (t == &c.keys.back() ? half[0].k : half[0].v) = h;
    }
    for (int threads : {1, 2}) {
      BackendOptions options;
      options.threads = threads;
      auto cpu = make_backend(Device::CPU, options);
      Tensor from_f32 = clone(c.out_init), from_f16 = clone(c.out_init);
      cpu->attention(c.q, c.segments, c.shape, from_f32);
      cpu->attention(c.q, half, c.shape, from_f16);
      const std::vector<float> a = values(from_f32), b = values(from_f16);
      if (sh.q_len > 4) {  // prefill paths: the same arithmetic on the same numbers
        EXPECT_EQ(a, b) << sh.name << " (" << threads
                        << " threads): F16 keys differ from rounded F32 keys";
      } else {
        // The decode loops are vectorised by the compiler, whose lane split may follow the
        // rows' alignment (cache rows vs the widening buffer): the same terms summed in another
        // order, head_dim-term dot products and a softmax over values of |v| <= 1, so within a
        // few dozen units in the last place of 1.
        float vmax = 0.0f;
        for (const Tensor* t : {&c.values.back()})
          for (int64_t i = 0; i < t->numel(); ++i)
            vmax = std::max(vmax, std::fabs(t->data<float>()[i]));
        const float tol = 4.0f * sh.head_dim * std::ldexp(1.0f, -24) * std::max(1.0f, vmax);
        for (size_t i = 0; i < a.size(); ++i)
          ASSERT_NEAR(a[i], b[i], tol) << sh.name << " (" << threads << " threads) element " << i;
      }
      check_attention_result(c, values(from_f16), "cpu (F16 keys and values)");
    }
  }
  // Keys and values must share a dtype; nothing else is widened.
  auto cpu = make_backend(Device::CPU);
  std::mt19937 rng(53);
  AttentionCase c = make_case("mixed", 2, 2, 8, 2, 54);
  add_segment(c, rng, 0, 2, 4, true, 2);
  AttentionSegment seg = c.segments[0];
  seg.k = Tensor::empty(seg.k.shape(), DType::F16);
  Tensor out = clone(c.out_init);
  try {
    cpu->attention(c.q, {seg}, c.shape, out);
    FAIL() << "F16 keys with F32 values were accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("both F32 or both F16"), std::string::npos) << e.what();
  }
}

TEST(CpuAttention, KeysInPartsEqualJoinedKeys) {
  struct Shape {
    std::string name;
    int heads, kv_heads, head_dim;
    std::vector<int64_t> q_lens;  // one non-causal segment per entry
  };
  const std::vector<Shape> shapes = {
      {"decode_rows", 4, 2, 16, {1, 3}},
      {"absorbed_wide", 1, 1, 96, {36, 12}},
      {"gqa_prefill", 8, 2, 32, {40}},
  };
  const std::vector<int64_t> part_rows = {50, 130, 7, 600, 1};
  for (const Shape& sh : shapes) {
    std::mt19937 rng(31);
    int64_t q_rows = 0;
    for (int64_t n : sh.q_lens) q_rows += n;
    const int64_t causal_rows = 5;
    AttentionCase joined =
        make_case(sh.name, sh.heads, sh.kv_heads, sh.head_dim, q_rows + causal_rows, 41);
    std::vector<AttentionSegment> in_parts;
    int64_t q_begin = 0;
    for (int64_t q_len : sh.q_lens) {
      int64_t total = 0;
      for (int64_t n : part_rows) total += n;
      add_segment(joined, rng, q_begin, q_len, total, false, 0);
      // The same rows as separate tensors: a part never shares memory with the next one.
      AttentionSegment seg;
      seg.q_begin = q_begin;
      seg.q_len = q_len;
      int64_t row = 0;
      for (int64_t n : part_rows) {
        seg.k_parts.push_back(clone(joined.keys.back().rows(row, n)));
        seg.v_parts.push_back(clone(joined.values.back().rows(row, n)));
        row += n;
      }
      in_parts.push_back(seg);
      q_begin += q_len;
    }
    add_segment(joined, rng, q_begin, causal_rows, 9, true, 4);
    in_parts.push_back(joined.segments.back());
    std::vector<std::vector<float>> results;
    for (int threads : {1, 2}) {
      BackendOptions options;
      options.threads = threads;
      auto cpu = make_backend(Device::CPU, options);
      Tensor out = clone(joined.out_init);
      cpu->attention(joined.q, in_parts, joined.shape, out);
      results.push_back(values(out));
      check_attention_result(joined, results.back(),
                             "cpu (keys in parts, " + std::to_string(threads) + " threads)");
    }
    // The causal rows go through row tiles whose size follows the thread count; compare the rest.
    const size_t cross = static_cast<size_t>(q_rows * sh.heads * sh.head_dim);
    EXPECT_TRUE(std::equal(results[0].begin(), results[0].begin() + cross, results[1].begin()))
        << sh.name << ": cross-attention rows depend on the thread count";
  }
  // Parts must pair up and cannot be causal.
  auto cpu = make_backend(Device::CPU);
  std::mt19937 rng(32);
  AttentionCase c = make_case("bad_parts", 2, 2, 8, 2, 42);
  AttentionSegment seg;
  seg.q_len = 2;
  seg.k_parts = {random_tensor({3, 16}, rng)};
  Tensor out = clone(c.out_init);
  EXPECT_THROW(cpu->attention(c.q, {seg}, c.shape, out), Error);
  seg.v_parts = {random_tensor({3, 16}, rng)};
  seg.causal = true;
  EXPECT_THROW(cpu->attention(c.q, {seg}, c.shape, out), Error);
}

// Shape checks are shared (op_checks), so every device refuses the same arguments, with the op
// named; the CPU backend used to divide by a zero kv_heads here.
TEST_P(BackendOps, BadShapesThrowNamingTheOp) {
  std::mt19937 rng(31);
  auto expect_throw = [](auto&& call, const std::string& what) {
    try {
      call();
      ADD_FAILURE() << "no error for " << what;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(what), std::string::npos) << e.what();
    }
  };
  const Tensor q = dev(random_tensor({3, 16}, rng));
  const Tensor kv = dev(random_tensor({5, 16}, rng));
  Tensor out = b().empty({3, 16}, DType::F32);
  AttentionSegment sg;
  sg.q_len = 3;
  sg.k = kv;
  sg.v = kv;
  expect_throw([&] { b().attention(q, {sg}, {2, 0, 8, 1.0f}, out); }, "attention");
  expect_throw([&] { b().attention(q, {sg}, {2, 3, 8, 1.0f}, out); }, "attention");
  sg.q_len = 4;  // past the last query row
  expect_throw([&] { b().attention(q, {sg}, {2, 2, 8, 1.0f}, out); }, "attention");
  const Tensor w = dev(random_tensor({16}, rng)), short_bias = dev(random_tensor({15}, rng));
  expect_throw([&] { b().layer_norm(q, w, short_bias, 1e-5f, out); }, "layer_norm");
  Tensor x = dev(random_tensor({3, 16}, rng));
  expect_throw([&] { b().add_bias(x, short_bias); }, "add_bias");
  expect_throw([&] { b().add(x, kv); }, "add");
  expect_throw([&] { b().silu_mul(x, kv); }, "silu_mul");
  expect_throw([&] { b().rms_norm(q, short_bias, 1e-5f, out); }, "rms_norm");
  // Checks the CPU backend lacked before they were shared: a zero-width weight and zero heads
  // divided by zero; a 1-D table and a negative count went unchecked.
  expect_throw(
      [&] {
        b().linear(q, b().load_weight(Tensor::zeros({4, 0}, DType::F32), WeightUse::Matrix), out);
      },
      "linear");
  expect_throw([&] { b().rope(x, 0, 16, w, w); }, "rope");
  expect_throw([&] { b().embedding(w, {1}, out); }, "embedding");
  expect_throw([&] { b().copy_rows(q, 0, out, 0, -1); }, "copy_rows");
}

TEST_P(BackendOps, IdentityWeightShowsActivationRounding) {
  // x · I is exact in any arithmetic, so the result is x as the GEMM saw it: rounded to the
  // weight's type on CUDA beyond kGemvMaxRows rows, untouched otherwise.
  std::mt19937 rng(27);
  const int64_t k = 40;
  Tensor eye = Tensor::zeros({k, k}, DType::F32);
  for (int64_t i = 0; i < k; ++i) eye.data<float>()[i * k + i] = 1.0f;
  for (int64_t m : {int64_t{3}, int64_t{kern::kGemvMaxRows + 5}}) {
    const Tensor x = random_tensor({m, k}, rng);
    for (DType t : {DType::F16, DType::BF16}) {
      Tensor out = b().empty({m, k}, DType::F32);
      b().linear(dev(x), b().load_weight(as_dtype(eye, t), WeightUse::Matrix), out);
      const bool rounds = GetParam() == Device::CUDA && m > kern::kGemvMaxRows;
      const std::vector<float> want = rounds ? widened(as_dtype(x, t)) : values(x);
      EXPECT_EQ(values(b().to_host_f32(out)), want)
          << "identity GEMM, " << m << " rows, " << dtype_name(t);
    }
  }
}

TEST_P(BackendOps, AttentionRejectsBadShapes) {
  std::mt19937 rng(26);
  const Tensor q = random_tensor({2, 8}, rng);
  AttentionSegment s;
  s.q_len = 2;
  s.k = dev(random_tensor({3, 6}, rng));  // not kv_heads * head_dim wide
  s.v = s.k;
  Tensor out = b().empty({2, 8}, DType::F32);
  EXPECT_THROW(b().attention(dev(q), {s}, {2, 1, 4, 0.5f}, out), Error);
}

INSTANTIATE_TEST_SUITE_P(Devices, BackendOps, ::testing::Values(Device::CPU, Device::CUDA),
                         device_label);

// ---- the CUDA kernels through the SIMT emulator (runs everywhere) ----------------------------

TEST(EmulatedKernels, ElementwiseAndNorm) {
  std::mt19937 rng(31);
  const Tensor table = random_tensor({40, 20}, rng);
  const std::vector<int32_t> ids = {3, 39, 0, 3};
  for (DType t : {DType::F32, DType::F16, DType::BF16}) {
    const Tensor stored = as_dtype(table, t);
    std::vector<float> out(ids.size() * 20);
    const kern::ElemType et = t == DType::F32   ? kern::ElemType::F32
                              : t == DType::F16 ? kern::ElemType::F16
                                                : kern::ElemType::BF16;
    kern::launch_embedding(stored.raw(), et, ids.data(), 4, 20, out.data(), nullptr);
    const std::vector<double> want = ref_embedding(stored, ids);
    expect_within(out, want, std::vector<double>(want.size(), 0.0), "emulated embedding");
  }
  for (int64_t width : {1, 37, 300}) {
    const Tensor x = random_tensor({3, width}, rng, 2.0f), w = random_tensor({width}, rng);
    std::vector<float> out(static_cast<size_t>(3 * width));
    kern::launch_rms_norm(x.data<float>(), w.data<float>(), 1e-6f, 3, width, out.data(), nullptr);
    expect_elementwise(out, ref_rms_norm(x, w, 1e-6), "emulated rms_norm");
    // In place, as the kernel allows.
    Tensor y = clone(x);
    kern::launch_rms_norm(y.data<float>(), w.data<float>(), 1e-6f, 3, width, y.data<float>(),
                          nullptr);
    expect_elementwise(values(y), ref_rms_norm(x, w, 1e-6), "emulated rms_norm in place");
  }
  {
    const int heads = 2, hd = 12;
    const Tensor x = random_tensor({5, heads * hd}, rng);
    const Tensor cos = random_tensor({5, hd / 2}, rng), sin = random_tensor({5, hd / 2}, rng);
    Tensor y = clone(x);
    kern::launch_rope(y.data<float>(), 5, heads, hd, cos.data<float>(), sin.data<float>(), nullptr);
    expect_elementwise(values(y), ref_rope(x, heads, hd, cos, sin), "emulated rope");
  }
  {
    const Tensor g = random_tensor({700}, rng, 5.0f), u = random_tensor({700}, rng);
    Tensor y = clone(g);
    kern::launch_silu_mul(y.data<float>(), u.data<float>(), 700, nullptr);
    expect_elementwise(values(y), ref_silu_mul(g, u), "emulated silu_mul");
  }
  for (int64_t width : {1, 37, 300, 768}) {  // BERT ops
    Tensor x = random_tensor({3, width}, rng, 2.0f);
    for (int64_t i = 0; i < x.numel(); ++i) x.data<float>()[i] -= 5.0f;
    const Tensor w = random_tensor({width}, rng), bias = random_tensor({width}, rng);
    std::vector<float> out(static_cast<size_t>(3 * width));
    kern::launch_layer_norm(x.data<float>(), w.data<float>(), bias.data<float>(), 1e-12f, 3, width,
                            out.data(), nullptr);
    expect_elementwise(out, ref_layer_norm(x, w, bias, 1e-12), "emulated layer_norm");
    Tensor y = clone(x);
    kern::launch_layer_norm(y.data<float>(), w.data<float>(), bias.data<float>(), 1e-12f, 3, width,
                            y.data<float>(), nullptr);
    expect_elementwise(values(y), ref_layer_norm(x, w, bias, 1e-12),
                       "emulated layer_norm in place");
    y = clone(x);
    kern::launch_add_bias(y.data<float>(), bias.data<float>(), 3, width, nullptr);
    expect_elementwise(values(y), ref_add_bias(x, bias), "emulated add_bias");
    const Tensor z = random_tensor({3, width}, rng);
    y = clone(x);
    kern::launch_add(y.data<float>(), z.data<float>(), 3 * width, nullptr);
    expect_elementwise(values(y), ref_add(x, z), "emulated add");
    y = clone(x);
    kern::launch_gelu(y.data<float>(), 3 * width, nullptr);
    expect_elementwise(values(y), ref_gelu(x), "emulated gelu");
  }
  {  // rounding to 16 bits is bit-exact with the host conversions (ties, tiny and huge values)
    Tensor x = random_tensor({600}, rng, 100.0f);
    const float special[] = {0.0f, -0.0f, 1e-30f, 65504.0f, 65520.0f, 1e6f, 1.00390625f, 3e-8f};
    std::copy(std::begin(special), std::end(special), x.data<float>());
    for (bool bf16 : {true, false}) {
      std::vector<uint16_t> got(600);
      kern::launch_to_16bit(x.data<float>(), got.data(), 600, bf16, nullptr);
      for (int i = 0; i < 600; ++i) {
        const float v = x.data<float>()[i];
        ASSERT_EQ(got[i], bf16 ? f32_to_bf16(v) : f32_to_f16(v)) << "value " << v;
      }
    }
  }
}

TEST(EmulatedKernels, SoftmaxRows) {
  std::mt19937 rng(34);
  for (int64_t n : {1, 31, 257, 3000}) {
    const int64_t rows = 3, ld = n + 5;  // padded rows: the tail past n stays untouched
    Tensor s = random_tensor({rows, ld}, rng, 8.0f);
    const Tensor before = clone(s);
    kern::launch_softmax_rows(s.data<float>(), rows, n, ld, nullptr);
    for (int64_t r = 0; r < rows; ++r) {
      const float* x = before.data<float>() + r * ld;
      double mx = -INFINITY, sum = 0.0;
      for (int64_t j = 0; j < n; ++j) mx = std::max(mx, double(x[j]));
      for (int64_t j = 0; j < n; ++j) sum += std::exp(double(x[j]) - mx);
      for (int64_t j = 0; j < ld; ++j) {
        const double want = j < n ? std::exp(double(x[j]) - mx) / sum : x[j];
        ASSERT_NEAR(s.data<float>()[r * ld + j], want, 1e-6 + 1e-5 * std::fabs(want))
            << "softmax n " << n << " row " << r << " col " << j;
      }
    }
  }
}

TEST(EmulatedKernels, Gemv16) {
  std::mt19937 rng(32);
  for (int64_t k : {64, 100, 264}) {  // 100: no 16-byte loads
    for (int64_t m = 1; m <= kern::kGemvMaxRows; ++m) {
      const int64_t n = 19;
      const Tensor x = random_tensor({m, k}, rng), init = random_tensor({m, n}, rng);
      const Tensor w = random_tensor({n, k}, rng, 0.05f);
      for (DType t : {DType::F16, DType::BF16}) {
        const Tensor stored = as_dtype(w, t);
        for (bool acc : {false, true}) {
          Tensor out = acc ? clone(init) : Tensor::zeros({m, n}, DType::F32);
          kern::launch_gemv16(x.data<float>(), stored.data<uint16_t>(), t == DType::BF16,
                              out.data<float>(), m, n, k, acc, nullptr);
          std::vector<double> want, mag;
          ref_linear(x, stored, acc ? &init : nullptr, &want, &mag);
          std::vector<double> bound(want.size());
          for (size_t i = 0; i < bound.size(); ++i) bound[i] = kF32Dot * mag[i] + 1e-6;
          expect_within(values(out), want, bound,
                        "emulated gemv16 m=" + std::to_string(m) + " k=" + std::to_string(k));
        }
      }
    }
  }
}

// Runs the attention kernels on host memory exactly as the backend drives them on the device.
std::vector<float> emulated_attention(const AttentionCase& c, int forced_splits,
                                      int multiprocessors, int* splits_used) {
  std::vector<kern::AttnSegment> segs;
  for (const AttentionSegment& s : c.segments) {
    kern::AttnSegment d;
    d.k = s.k.data<float>();
    d.v = s.v.data<float>();
    d.q_begin = s.q_begin;
    d.q_len = s.q_len;
    d.k_len = s.k.dim(0);
    d.causal = s.causal;
    d.causal_offset = s.causal_offset;
    segs.push_back(d);
  }
  const kern::AttnPlan plan =
      kern::plan_attention(segs, c.shape.heads, multiprocessors, forced_splits);
  *splits_used = plan.splits;
  Tensor out = clone(c.out_init);
  kern::AttnParams p;
  p.q = c.q.data<float>();
  p.out = out.data<float>();
  p.q_stride = c.q.dim(1);
  p.kv_stride = int64_t(c.shape.kv_heads) * c.shape.head_dim;
  p.q_rows = c.q.dim(0);
  p.heads = c.shape.heads;
  p.kv_heads = c.shape.kv_heads;
  p.head_dim = c.shape.head_dim;
  p.scale = c.shape.scale;
  p.splits = plan.splits;
  const size_t slots = static_cast<size_t>(plan.splits * p.q_rows * p.heads);
  // NaN-filled: a partial the combine step reads without the main kernel writing it shows up.
  std::vector<float> part_o(slots * p.head_dim, NAN), part_ml(slots * 2, NAN);
  p.part_o = part_o.data();
  p.part_ml = part_ml.data();
  kern::launch_attention(p, segs.data(), plan.items.data(), int64_t(plan.items.size()), nullptr);
  return values(out);
}

TEST(EmulatedKernels, AttentionAllSplits) {
  for (const AttentionCase& c : attention_cases()) {
    // Wider heads never reach the kernel: the CUDA backend runs them by GEMM + softmax_rows.
    if (c.shape.head_dim > kern::kAttnMaxHeadDim) continue;
    for (int forced : {1, 2, 5, 0}) {
      int used = 0;
      const std::vector<float> got = emulated_attention(c, forced, 132, &used);
      check_attention_result(c, got,
                             "emulated (splits " + std::to_string(used) +
                                 (forced ? ", forced)" : ", planned for 132 SMs)"));
    }
  }
}

TEST(EmulatedKernels, PlanSplitsOnlyWhenTheGpuWouldIdle) {
  std::vector<kern::AttnSegment> decode(1), prefill(1);
  decode[0].q_len = 1;
  decode[0].k_len = 12800;
  prefill[0].q_len = 2048;
  prefill[0].k_len = 2048;
  EXPECT_GT(kern::plan_attention(decode, 32, 132).splits, 1);
  EXPECT_EQ(kern::plan_attention(prefill, 32, 132).splits, 1);
  EXPECT_EQ(kern::plan_attention(prefill, 32, 132).items.size(), 2048u / kern::kAttnRows);
  decode[0].k_len = 10;  // too few keys to be worth splitting
  EXPECT_EQ(kern::plan_attention(decode, 32, 132).splits, 1);
}

// The emulator must catch the bugs it exists to catch.
void divergent_barrier_kernel() {
  if (simt::thread_x() < 16)
    simt::sync_block();
  else
    simt::sync_warp();
}
void overflowing_kernel() {
  simt::shared_floats()[simt::thread_x()] = 1.0f;
}

TEST(EmulatedKernels, EmulatorReportsDivergenceAndOverflow) {
  const simt::Dim3 grid{1, 1, 1}, block{64, 1, 1};
  EXPECT_THROW(simt::emu::launch(grid, block, 0, [] { divergent_barrier_kernel(); }),
               std::logic_error);
  EXPECT_THROW(simt::emu::launch(grid, block, 16 * sizeof(float), [] { overflowing_kernel(); }),
               std::logic_error);
  EXPECT_NO_THROW(simt::emu::launch(grid, block, 64 * sizeof(float), [] { overflowing_kernel(); }));
}

// ---- CUDA-specific behaviour ------------------------------------------------------------------

TEST(CudaBackend, UnavailableDeviceIsOneClearError) {
  if (backend_available(Device::CUDA)) GTEST_SKIP() << "a CUDA device is present";
  try {
    make_backend(Device::CUDA);
    FAIL() << "make_backend(CUDA) succeeded without a device";
  } catch (const Error& e) {
    const std::string msg = e.what();
    EXPECT_TRUE(msg.find("no CUDA device") != std::string::npos ||
                msg.find("no CUDA backend") != std::string::npos)
        << msg;
    EXPECT_EQ(msg.find('\n'), std::string::npos) << msg;
  }
}

TEST(CudaBackend, MemoryBudgetIsEnforced) {
  SKIP_UNLESS_CUDA();
  BackendOptions o;
  o.memory_budget_bytes = 64 << 10;
  auto backend = make_backend(Device::CUDA, o);
  Tensor small = backend->empty({1024}, DType::F32);
  try {
    auto model = CepeModel::load(test::source_dir() / "tests/fixtures/gqa_cross_last2", *backend);
    FAIL() << "a model larger than the budget loaded";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("model does not fit"), std::string::npos) << e.what();
  }
  EXPECT_LE(backend_memory(*backend).in_use, o.memory_budget_bytes);
  EXPECT_GE(backend_memory(*backend).in_use, small.nbytes());
}

TEST(CudaBackend, TensorsOutliveTheBackendAndMemoryIsReturned) {
  SKIP_UNLESS_CUDA();
  auto backend = make_backend(Device::CUDA);
  const size_t before = backend_memory(*backend).in_use;
  {
    Tensor t = backend->empty({1 << 20}, DType::F32);
    EXPECT_EQ(backend_memory(*backend).in_use, before + t.nbytes());
  }
  EXPECT_EQ(backend_memory(*backend).in_use, before);
  Tensor kept = backend->to_device(Tensor::zeros({16}, DType::F32));
  backend.reset();  // the tensor's deleter keeps the device context alive
  kept = Tensor();
  SUCCEED();
}

// ---- whole models on the fixtures
// ----------------------------------------------------------------

using test::chunks_of;
using test::greedy;
using test::ids_of;
using test::load_fixture;

std::vector<std::string> fixture_names() {
  return test::fixture_names(/*greedy_only=*/false);
}

bool has_16bit_weights(const fs::path& dir) {
  const std::string cfg = test::read_file(dir / "config.json");
  return cfg.find("\"bfloat16\"") != std::string::npos ||
         cfg.find("\"float16\"") != std::string::npos;
}

// Logit tolerance against the CPU backend for fixture `f`: k16BitLogitTolerance for 16-bit
// checkpoints, otherwise the derived float32 bound for its scoring sequence.
double fixture_tolerance(const test::Fixture& f) {
  if (has_16bit_weights(f.dir)) return k16BitLogitTolerance;
  const auto& e = f.expected;
  return test::float32_logit_bound(load_model_config(f.dir), ids_of(e["input_ids"]).size(),
                                   chunks_of(e["context_ids"]), test::max_abs(e["logits"]));
}

// Scoring logits and encoder states of `model` against the CPU backend's, and greedy tokens
// against the reference's, for one fixture.
void compare_with_cpu(CepeModel& model, const std::string& name, double tolerance) {
  auto f = load_fixture(name);
  auto cpu = make_backend(Device::CPU);
  auto cpu_model = CepeModel::load(f->dir, *cpu);
  const auto& e = f->expected;
  const auto ids = ids_of(e["input_ids"]);
  const auto chunks = chunks_of(e["context_ids"]);
  auto state = model.new_state();
  auto cpu_state = cpu_model->new_state();
  if (!chunks.empty()) {
    EncodedContext ctx = model.encode(chunks), cpu_ctx = cpu_model->encode(chunks);
    const Tensor got = model.backend().to_host_f32(ctx.states);
    const Tensor want = cpu_ctx.states;
    std::vector<double> w(want.data<float>(), want.data<float>() + want.numel());
    expect_within(values(got), w, std::vector<double>(w.size(), tolerance),
                  name + " encoder states");
    model.set_context(*state, ctx);
    cpu_model->set_context(*cpu_state, cpu_ctx);
  }
  const Tensor logits = model.forward(*state, ids, true);
  const Tensor cpu_logits = cpu_model->forward(*cpu_state, ids, true);
  std::vector<double> w(cpu_logits.data<float>(), cpu_logits.data<float>() + cpu_logits.numel());
  expect_within(values(logits), w, std::vector<double>(w.size(), tolerance), name + " logits");
  double worst = 0.0;
  for (size_t i = 0; i < w.size(); ++i)
    worst = std::max(worst, std::fabs(logits.data<float>()[i] - w[i]));
  std::printf("[%s on %s] max |dlogit| vs cpu = %.3g (tolerance %.3g)\n", name.c_str(),
              model.backend().describe().c_str(), worst, tolerance);

  std::vector<const rapidjson::Value*> runs = {&e["greedy"]};
  if (e.HasMember("greedy_extra"))
    for (const auto& g : e["greedy_extra"].GetArray()) runs.push_back(&g);
  for (const rapidjson::Value* g : runs) {
    EXPECT_EQ(greedy(model, ids_of((*g)["input_ids"]), chunks_of((*g)["context_ids"]),
                     (*g)["max_new_tokens"].GetInt()),
              test::reference_greedy_tokens(*g, model.config()))
        << name << " greedy tokens";
  }
}

class CudaFixture : public ::testing::TestWithParam<std::string> {};

TEST_P(CudaFixture, LogitsAndGreedyTokensMatchCpu) {
  SKIP_UNLESS_CUDA();
  auto f = load_fixture(GetParam());
  auto backend = make_backend(Device::CUDA);
  auto model = CepeModel::load(f->dir, *backend);
  compare_with_cpu(*model, GetParam(), fixture_tolerance(*f));
}

INSTANTIATE_TEST_SUITE_P(Fixtures, CudaFixture, ::testing::ValuesIn(fixture_names()),
                         [](const auto& info) { return info.param; });

// Absorbed cross-attention on the GPU (head_linear by strided-batched cuBLAS, encoder-width
// heads by GEMM + row softmax) against the CPU backend's cached form.
TEST(CudaModel, AbsorbedCrossAttentionMatchesCpu) {
  SKIP_UNLESS_CUDA();
  for (const std::string& name : fixture_names()) {
    auto f = load_fixture(name);
    auto backend = make_backend(Device::CUDA);
    auto model = CepeModel::load(f->dir, *backend);
    model->set_cross_attention_mode(CrossAttentionMode::Absorbed);
    compare_with_cpu(*model, name, fixture_tolerance(*f));
  }
}

TEST(CudaModel, BatchedStepsEqualSingleSequences) {
  SKIP_UNLESS_CUDA();
  test::check_batched_steps(Device::CUDA, CrossAttentionMode::Cached, CrossAttentionMode::Cached);
  test::check_batched_steps(Device::CUDA, CrossAttentionMode::Absorbed, CrossAttentionMode::Cached);
}

// ---- the CUDA backend's rounding, emulated on the CPU (runs everywhere) ----------------------

// The CPU backend with the one rounding the CUDA backend adds: GEMMs against 16-bit weights with
// more than kGemvMaxRows rows see activations rounded to the weight's type (cuBLAS tensor-core
// operands). Everything else in the CUDA backend is F32 like the CPU's, so this shows whether
// k16BitLogitTolerance and identical greedy tokens are realistic before a GPU ever runs.
class CudaNumericsOnCpu final : public Backend {
 public:
  CudaNumericsOnCpu() : cpu_(make_backend(Device::CPU)) {}
  Device device() const override { return Device::CPU; }
  std::string describe() const override { return "cpu with CUDA 16-bit GEMM rounding"; }
  Tensor empty(std::vector<int64_t> shape, DType dtype) override {
    return cpu_->empty(std::move(shape), dtype);
  }
  Tensor load_weight(const Tensor& host, WeightUse use) override {
    return cpu_->load_weight(host, use);
  }
  Tensor to_device(const Tensor& host) override { return cpu_->to_device(host); }
  Tensor to_host_f32(const Tensor& t) override { return cpu_->to_host_f32(t); }
  void embedding(const Tensor& table, const std::vector<int32_t>& ids, Tensor& out) override {
    cpu_->embedding(table, ids, out);
  }
  void rms_norm(const Tensor& x, const Tensor& w, float eps, Tensor& out) override {
    cpu_->rms_norm(x, w, eps, out);
  }
  void linear(const Tensor& x, const Tensor& weight, Tensor& out, bool accumulate) override {
    const int64_t rows = x.numel() / weight.dim(1);
    if (weight.dtype() == DType::F32 || rows <= kern::kGemvMaxRows)
      return cpu_->linear(x, weight, out, accumulate);
    Tensor rounded = as_dtype(x, weight.dtype());
    Tensor back = Tensor::empty(x.shape(), DType::F32);
    convert_to_f32(rounded.raw(), rounded.dtype(), back.data<float>(), x.numel());
    cpu_->linear(back, weight, out, accumulate);
  }
  void linears(const Tensor& x, std::span<const LinearTarget> targets) override {
    for (const LinearTarget& target : targets) linear(x, *target.weight, *target.out, false);
  }
  void rope(Tensor& x, int heads, int hd, const Tensor& cos, const Tensor& sin) override {
    cpu_->rope(x, heads, hd, cos, sin);
  }
  void copy_rows(const Tensor& src, int64_t sr, Tensor& dst, int64_t dr, int64_t n) override {
    cpu_->copy_rows(src, sr, dst, dr, n);
  }
  void silu_mul(Tensor& gate, const Tensor& up) override { cpu_->silu_mul(gate, up); }
  void layer_norm(const Tensor& x, const Tensor& w, const Tensor& b, float eps,
                  Tensor& out) override {
    cpu_->layer_norm(x, w, b, eps, out);
  }
  void add_bias(Tensor& x, const Tensor& bias) override { cpu_->add_bias(x, bias); }
  void add(Tensor& x, const Tensor& y) override { cpu_->add(x, y); }
  void gelu(Tensor& x) override { cpu_->gelu(x); }
  void head_linear(const Tensor& x, const Tensor& weight, int heads, int groups, bool transposed,
                   Tensor& out) override {
    cpu_->head_linear(x, weight, heads, groups, transposed, out);
  }
  void attention(const Tensor& q, const std::vector<AttentionSegment>& segments,
                 const AttentionShape& shape, Tensor& out) override {
    cpu_->attention(q, segments, shape, out);
  }

 private:
  std::unique_ptr<Backend> cpu_;
};

class CudaNumericsFixture : public ::testing::TestWithParam<std::string> {};

TEST_P(CudaNumericsFixture, SixteenBitToleranceHoldsWithCudaRounding) {
  auto f = load_fixture(GetParam());
  if (!has_16bit_weights(f->dir)) GTEST_SKIP() << "F32 checkpoint: no 16-bit GEMMs to round";
  CudaNumericsOnCpu backend;
  auto model = CepeModel::load(f->dir, backend);
  compare_with_cpu(*model, GetParam(), k16BitLogitTolerance);
}

INSTANTIATE_TEST_SUITE_P(Fixtures, CudaNumericsFixture, ::testing::ValuesIn(fixture_names()),
                         [](const auto& info) { return info.param; });

}  // namespace
