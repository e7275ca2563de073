// Per-op micro-benchmarks with Google Benchmark, on the CPU backend: the linear (GEMV at decode,
// GEMM at prefill) for every load-time weight kind, decode attention over a KV cache, and the
// normalisation and activation ops. The F32 linear is the baseline each weight kind is read
// against (items/s = rows x output features; bytes/s = weight bytes streamed per call).
//
//   build/bench/bench_ops [--benchmark_filter=Linear] [--benchmark_min_time=0.2s]
//   CEPE_KERNELS=avx2 build/bench/bench_ops   (force one kernel level)
#include <benchmark/benchmark.h>

#include <algorithm>
#include <cmath>
#include <memory>
#include <random>
#include <vector>

#include "engine/backend.h"
#include "engine/generation.h"
#include "engine/quant.h"

namespace {

using cepe::Backend;
using cepe::DType;
using cepe::Tensor;
using cepe::WeightKind;

Tensor random_f32(std::vector<int64_t> shape, uint32_t seed) {
  Tensor t = Tensor::empty(std::move(shape), DType::F32);
  std::mt19937 rng(seed);
  std::normal_distribution<float> d(0.0f, 0.05f);
  float* p = t.data<float>();
  for (int64_t i = 0; i < t.numel(); ++i) p[i] = d(rng);
  return t;
}

std::unique_ptr<Backend> cpu(WeightKind weights = WeightKind::Stored) {
  cepe::BackendOptions o;
  o.weights = weights;
  return cepe::make_backend(cepe::Device::CPU, o);
}

// x [rows, K] · Wᵀ for W [N, K] converted to `kind` at load time.
void BM_Linear(benchmark::State& state, WeightKind kind) {
  const int64_t rows = state.range(0), k = state.range(1), n = state.range(2);
  auto b = cpu(kind);
  const Tensor w = b->load_weight(random_f32({n, k}, 1), cepe::WeightUse::Matrix);
  const Tensor x = random_f32({rows, k}, 2);
  Tensor out = b->empty({rows, n}, DType::F32);
  for (auto _ : state) {
    b->linear(x, w, out);
    benchmark::DoNotOptimize(out.raw());
  }
  state.SetItemsProcessed(state.iterations() * rows * n);
  state.SetBytesProcessed(state.iterations() * static_cast<int64_t>(w.nbytes()));
  state.SetLabel(cepe::weight_kind_name(kind));
}

// Self-attention of `rows` queries over `keys` keys (12 heads of 64 over kv_heads), timed.
void run_attention(benchmark::State& state, int64_t rows, int64_t keys, bool causal,
                   int64_t kv_heads = 12) {
  constexpr int64_t heads = 12, head_dim = 64;
  auto b = cpu();
  const Tensor q = random_f32({rows, heads * head_dim}, 3);
  const Tensor k = random_f32({keys, kv_heads * head_dim}, 4);
  const Tensor v = random_f32({keys, kv_heads * head_dim}, 5);
  Tensor out = b->empty({rows, heads * head_dim}, DType::F32);
  std::vector<cepe::AttentionSegment> segments(1);
  segments[0].q_len = rows;
  segments[0].k = k;
  segments[0].v = v;
  segments[0].causal = causal;
  cepe::AttentionShape shape;
  shape.heads = static_cast<int>(heads);
  shape.kv_heads = static_cast<int>(kv_heads);
  shape.head_dim = static_cast<int>(head_dim);
  shape.scale = 1.0f / std::sqrt(static_cast<float>(head_dim));
  for (auto _ : state) {
    b->attention(q, segments, shape, out);
    benchmark::DoNotOptimize(out.raw());
  }
  // Items: the query-key pairs the mask keeps (GFLOP/s = items/s x 2 x 2 x 64 / 1e9).
  const int64_t pairs = causal ? rows * (rows + 1) / 2 : rows * keys;
  state.SetItemsProcessed(state.iterations() * pairs * heads);
}

// One decode step's self-attention: one query row per head over `keys` cached rows.
void BM_AttentionDecode(benchmark::State& state) {
  run_attention(state, 1, state.range(0), false);
}

// The same with grouped queries: 12 heads over 3 kv heads (four heads read each cache row).
void BM_AttentionDecodeGqa(benchmark::State& state) {
  run_attention(state, 1, state.range(0), false, 3);
}

// A prefill's causal self-attention: `rows` queries over their own keys.
void BM_AttentionPrefill(benchmark::State& state) {
  run_attention(state, state.range(0), state.range(0), true);
}

// Absorbed cross-attention's decode step: one query row of 12 heads that all read one kv head
// of encoder width 512 (E itself), over `keys` encoder states (GFLOP/s = items/s x 2 x 2 x 512 /
// 1e9).
void BM_AttentionAbsorbed(benchmark::State& state) {
  constexpr int64_t heads = 12, width = 512;
  const int64_t keys = state.range(0);
  auto b = cpu();
  const Tensor q = random_f32({1, heads * width}, 12);
  const Tensor e = random_f32({keys, width}, 13);
  Tensor out = b->empty({1, heads * width}, DType::F32);
  std::vector<cepe::AttentionSegment> segments(1);
  segments[0].q_len = 1;
  segments[0].k = segments[0].v = e;
  cepe::AttentionShape shape;
  shape.heads = static_cast<int>(heads);
  shape.kv_heads = 1;
  shape.head_dim = static_cast<int>(width);
  shape.scale = 0.125f;
  for (auto _ : state) {
    b->attention(q, segments, shape, out);
    benchmark::DoNotOptimize(out.raw());
  }
  state.SetItemsProcessed(state.iterations() * keys * heads);
}

void BM_RmsNorm(benchmark::State& state) {
  const int64_t rows = state.range(0), width = 768;
  auto b = cpu();
  const Tensor x = random_f32({rows, width}, 6), w = random_f32({width}, 7);
  Tensor out = b->empty({rows, width}, DType::F32);
  for (auto _ : state) {
    b->rms_norm(x, w, 1e-5f, out);
    benchmark::DoNotOptimize(out.raw());
  }
  state.SetItemsProcessed(state.iterations() * rows * width);
}

void BM_LayerNorm(benchmark::State& state) {
  const int64_t rows = state.range(0), width = 768;
  auto b = cpu();
  const Tensor x = random_f32({rows, width}, 8), w = random_f32({width}, 9),
               bias = random_f32({width}, 10);
  Tensor out = b->empty({rows, width}, DType::F32);
  for (auto _ : state) {
    b->layer_norm(x, w, bias, 1e-12f, out);
    benchmark::DoNotOptimize(out.raw());
  }
  state.SetItemsProcessed(state.iterations() * rows * width);
}

void BM_Gelu(benchmark::State& state) {
  const int64_t n = state.range(0);
  auto b = cpu();
  Tensor x = random_f32({n}, 11);
  for (auto _ : state) {
    b->gelu(x);
    benchmark::DoNotOptimize(x.raw());
  }
  state.SetItemsProcessed(state.iterations() * n);
}

// Per generated token, after the LM head: choosing the token (greedy argmax, the baseline) and,
// when a request asks for log-probabilities, the log-softmax normaliser plus the n most likely
// tokens (engine/generation.h token_logprob) over a LLaMA vocabulary of 32000 logits.
std::vector<float> vocab_logits(int vocab) {
  std::vector<float> logits(vocab);
  std::mt19937 rng(5);
  std::normal_distribution<float> d(0.0f, 3.0f);
  for (auto& x : logits) x = d(rng);
  return logits;
}

void BM_SampleGreedy(benchmark::State& state) {
  const auto logits = vocab_logits(static_cast<int>(state.range(0)));
  cepe::SamplingOptions o;
  cepe::Sampler sampler(o);
  for (auto _ : state)
    benchmark::DoNotOptimize(sampler.sample(logits.data(), static_cast<int>(logits.size())));
  state.SetItemsProcessed(state.iterations() * state.range(0));
}

// The baselines, in the same binary: the straightforward forms (std::max_element; a scalar
// double-precision exp loop and std::partial_sort), which the engine's first versions were.
void BM_SampleGreedyPlain(benchmark::State& state) {
  const auto logits = vocab_logits(static_cast<int>(state.range(0)));
  for (auto _ : state)
    benchmark::DoNotOptimize(std::max_element(logits.begin(), logits.end()) - logits.begin());
  state.SetItemsProcessed(state.iterations() * state.range(0));
}

void BM_TokenLogprobPlain(benchmark::State& state) {
  const auto logits = vocab_logits(static_cast<int>(state.range(0)));
  const int top = static_cast<int>(state.range(1));
  std::vector<int32_t> ids(logits.size());
  for (auto _ : state) {
    const float mx = *std::max_element(logits.begin(), logits.end());
    double sum = 0;
    for (float x : logits) sum += std::exp(static_cast<double>(x - mx));
    const double log_z = mx + std::log(sum);
    for (size_t i = 0; i < ids.size(); ++i) ids[i] = static_cast<int32_t>(i);
    std::partial_sort(ids.begin(), ids.begin() + top, ids.end(),
                      [&](int32_t a, int32_t b) { return logits[a] > logits[b]; });
    benchmark::DoNotOptimize(logits[7] - log_z);
    benchmark::DoNotOptimize(ids.data());
  }
  state.SetItemsProcessed(state.iterations() * state.range(0));
}

void BM_TokenLogprob(benchmark::State& state) {
  const auto logits = vocab_logits(static_cast<int>(state.range(0)));
  const int top = static_cast<int>(state.range(1));
  for (auto _ : state) {
    auto lp = cepe::token_logprob(logits.data(), static_cast<int>(logits.size()), 7, top);
    benchmark::DoNotOptimize(lp.logprob);
  }
  state.SetItemsProcessed(state.iterations() * state.range(0));
}

// Decode (1 row) and prefill (64 and 512 rows) shapes of a 134M LLaMA's attention projection
// (768 x 768) and MLP (768 -> 2048, 2048 -> 768). GFLOP/s = items/s x 2 K / 1e9.
void linear_shapes(benchmark::internal::Benchmark* b) {
  for (int64_t rows : {1, 64, 512}) {
    b->Args({rows, 768, 768});
    b->Args({rows, 768, 2048});
  }
  b->Args({512, 2048, 768});
  // LLaMA-2-7B's shapes: attention projections, MLP up/gate and down.
  for (int64_t rows : {1, 512}) {
    b->Args({rows, 4096, 4096});
    b->Args({rows, 4096, 11008});
    b->Args({rows, 11008, 4096});
  }
}

BENCHMARK_CAPTURE(BM_Linear, f32, WeightKind::F32)->Apply(linear_shapes);
BENCHMARK_CAPTURE(BM_Linear, bf16, WeightKind::BF16)->Apply(linear_shapes);
BENCHMARK_CAPTURE(BM_Linear, f16, WeightKind::F16)->Apply(linear_shapes);
BENCHMARK_CAPTURE(BM_Linear, q8_0, WeightKind::Q8_0)->Apply(linear_shapes);
BENCHMARK_CAPTURE(BM_Linear, q4_0, WeightKind::Q4_0)->Apply(linear_shapes);
BENCHMARK(BM_AttentionDecode)->Arg(128)->Arg(512)->Arg(2048)->Arg(16384);
BENCHMARK(BM_AttentionDecodeGqa)->Arg(512)->Arg(4096);
BENCHMARK(BM_AttentionPrefill)->Arg(512)->Arg(2048);
BENCHMARK(BM_AttentionAbsorbed)->Arg(1024)->Arg(8192)->Arg(16384);
BENCHMARK(BM_RmsNorm)->Arg(1)->Arg(64);
BENCHMARK(BM_LayerNorm)->Arg(1)->Arg(64);
BENCHMARK(BM_Gelu)->Arg(2048)->Arg(64 * 2048);
BENCHMARK(BM_SampleGreedyPlain)->Arg(32000);
BENCHMARK(BM_SampleGreedy)->Arg(32000);
BENCHMARK(BM_TokenLogprobPlain)->Args({32000, 0})->Args({32000, 5})->Args({32000, 20});
BENCHMARK(BM_TokenLogprob)->Args({32000, 0})->Args({32000, 5})->Args({32000, 20});

}  // namespace

BENCHMARK_MAIN();
