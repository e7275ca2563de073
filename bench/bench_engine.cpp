// Engine throughput on one model: encode (chunks x chunk_len; CEPE models only), prefill, decode
// from a one-token prompt and decode after the prefill; peak RSS; with --batch N also decode
// steps of N requests together (each with its own chunks and prompt). --weights picks the
// load-time weight format (stored|f32|bf16|f16|q8_0|q4_0). Plain LLaMA models (no encoder) skip
// the encode phase.
// Phases and warm-up mirror bench/torch_bench.py so the two can be compared side by side
// (bench/run_engine_bench.sh does that and prints the ratios).
#include <immintrin.h>
#include <sys/resource.h>

#include <thread>
#include <vector>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <random>
#include <string>

#include "common/args.h"
#include "common/error.h"
#include "engine/backend.h"
#include "engine/models/cepe_llama.h"
#include "engine/models/model_loader.h"

using namespace cepe;

namespace {

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

std::vector<int32_t> random_ids(std::mt19937& rng, int n, int vocab) {
  std::uniform_int_distribution<int> d(3, vocab - 1);
  std::vector<int32_t> ids(n);
  for (auto& x : ids) x = d(rng);
  return ids;
}

// F32 FLOP/s this machine's cores reach with nothing but independent fused multiply-adds (twelve
// accumulator chains per thread, AVX-512 where the CPU has it, else AVX2): the ceiling of any F32
// GEMM here, so prefill can be read as a share of it on the machine that ran it.
__attribute__((target("avx512f"))) double fma_loop_avx512(int64_t iters) {
  __m512 a[12];
  for (int j = 0; j < 12; ++j) a[j] = _mm512_set1_ps(1.0f + j * 1e-3f);
  const __m512 m = _mm512_set1_ps(0.9999999f), c = _mm512_set1_ps(1e-7f);
  for (int64_t i = 0; i < iters; ++i)
    for (int j = 0; j < 12; ++j) a[j] = _mm512_fmadd_ps(a[j], m, c);
  float out[16], sink = 0.0f;
  for (int j = 0; j < 12; ++j) {
    _mm512_storeu_ps(out, a[j]);
    for (float v : out) sink += v;
  }
  return sink;
}

__attribute__((target("avx2,fma"))) double fma_loop_avx2(int64_t iters) {
  __m256 a[12];
  for (int j = 0; j < 12; ++j) a[j] = _mm256_set1_ps(1.0f + j * 1e-3f);
  const __m256 m = _mm256_set1_ps(0.9999999f), c = _mm256_set1_ps(1e-7f);
  for (int64_t i = 0; i < iters; ++i)
    for (int j = 0; j < 12; ++j) a[j] = _mm256_fmadd_ps(a[j], m, c);
  float out[8], sink = 0.0f;
  for (int j = 0; j < 12; ++j) {
    _mm256_storeu_ps(out, a[j]);
    for (float v : out) sink += v;
  }
  return sink;
}

// Shortest wall time, over `reps` runs, of work(t) on threads t = 0 .. threads-1 all at once.
template <class Work>
double best_parallel_seconds(int threads, int reps, Work work) {
  double best = INFINITY;
  for (int rep = 0; rep < reps; ++rep) {
    const auto t0 = std::chrono::steady_clock::now();
    std::vector<std::thread> pool;
    for (int t = 0; t < threads; ++t) pool.emplace_back([&work, t] { work(t); });
    for (auto& th : pool) th.join();
    best = std::min(best, seconds_since(t0));
  }
  return best;
}

double fma_peak_flops(int threads) {
  const bool avx512 = __builtin_cpu_supports("avx512f");
  const int lanes = avx512 ? 16 : 8;
  const int64_t iters = int64_t(20) << 20;  // ~0.1-0.3 s per thread
  std::vector<double> sinks(threads, 0.0);
  const double secs = best_parallel_seconds(threads, 2, [&](int t) {
    sinks[t] = avx512 ? fma_loop_avx512(iters) : fma_loop_avx2(iters);
  });
  if (sinks[0] == 12345.0) std::fputs("", stderr);  // keeps the loops' results alive
  return 2.0 * 12 * lanes * double(iters) * threads / secs;
}

// Bytes per second this machine streams from memory with `threads` threads (best of 3 reads of
// a buffer of `mib` MiB, by default 256, far past any L3): a decode step that reads every weight
// once cannot beat this divided by its bytes, on any engine.
double read_bandwidth(int threads, int64_t mib) {
  const size_t words = (size_t(mib) << 20) / sizeof(uint64_t);
  std::vector<uint64_t> buf(words, 1);
  const double secs = best_parallel_seconds(threads, 3, [&](int t) {
    const size_t begin = words * t / threads, end = words * (t + 1) / threads;
    uint64_t s = 0;
    for (size_t i = begin; i < end; ++i) s += buf[i];
    if (s != end - begin) std::fprintf(stderr, "bench_engine: bandwidth check summed wrong\n");
  });
  return words * sizeof(uint64_t) / secs;
}

double median(std::vector<double> v) {
  if (v.empty()) return 0.0;
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

int argmax(const float* x, int n) {
  int best = 0;
  for (int i = 1; i < n; ++i)
    if (x[i] > x[best]) best = i;
  return best;
}

}  // namespace

int main(int argc, char** argv) try {
  Args args;
  args.option("model", "model directory")
      .option("threads", "CPU threads (0: all cores)", "0")
      .option("chunks", "encoder chunks (CEPE models)", "32")
      .option("chunk-len", "tokens per encoder chunk", "256")
      .option("prompt-tokens", "prefill length", "512")
      .option("prefill", "alias of --prompt-tokens")
      .option("decode-tokens", "tokens decoded", "64")
      .option("decode", "alias of --decode-tokens")
      .option("weights", "load-time weights: stored|f32|bf16|f16|q8_0|q4_0", "stored")
      .option("device", "cpu or cuda", "cpu")
      .option("cross-attention", "cached or absorbed", "cached")
      .option("kv-cache", "KV cache type: f32, f16 or auto (f16 on cpu with converted weights)",
              "auto")
      .option("stored-weights",
              "with --weights stored: auto (copied while memory allows) or "
              "mapped (read in place)",
              "auto")
      .option("batch", "requests decoded together", "1")
      .option("prefill-runs", "prefills timed, each on a fresh state; the median is reported", "1")
      .option("bandwidth-mb",
              "buffer of the memory-bandwidth probe, allocated after the model's peak RSS is "
              "taken (0: no probe, its figures 0; for runs under a tight memory limit)",
              "256")
      .flag("json", "accepted for clarity: the output is always one JSON object");
  args.parse(std::vector<std::string>(argv + 1, argv + argc));
  if (args.help_requested()) {
    std::fputs(args.usage("bench_engine --model DIR [flags]").c_str(), stdout);
    return 0;
  }
  CEPE_CHECK(args.has("model"), "--model is required");
  const std::string model_dir = args.get("model"), device = args.get("device"),
                    cross_attention = args.get("cross-attention"), weights = args.get("weights");
  const int threads = static_cast<int>(args.get_int("threads", 0, 4096));
  int chunks = static_cast<int>(args.get_int("chunks", 0, 1 << 20));
  const int chunk_len = static_cast<int>(args.get_int("chunk-len", 1, 1 << 20));
  const int prefill =
      static_cast<int>(args.get_int(args.has("prefill") ? "prefill" : "prompt-tokens", 1, 1 << 24));
  const int decode =
      static_cast<int>(args.get_int(args.has("decode") ? "decode" : "decode-tokens", 0, 1 << 24));
  const int batch = static_cast<int>(args.get_int("batch", 1, 4096));
  const int prefill_runs = static_cast<int>(args.get_int("prefill-runs", 1, 1000));
  const int64_t bandwidth_mb = args.get_int("bandwidth-mb", 0, 1 << 20);
  try {
    ModelLoadSettings settings;
    settings.dir = model_dir;
    settings.device = device;
    settings.threads = threads;
    settings.weights = weights;
    settings.cross_attention = cross_attention;
    settings.kv_cache = args.get("kv-cache");
    settings.stored_weights = args.get("stored-weights");
    settings.need_tokenizer = false;
    settings.setting_name = flag_setting_name;
    LoadedModel loaded = load_model(settings);
    const std::unique_ptr<Backend>& backend = loaded.backend;
    const std::unique_ptr<CepeModel>& model = loaded.model;
    const double load_s = loaded.weights_load_seconds;  // as before: the weights, not the device
    const int vocab = model->config().decoder.vocab_size;
    const bool has_encoder = model->config().is_cepe();
    if (!has_encoder) chunks = 0;
    std::mt19937 rng(0);
    std::vector<std::vector<int32_t>> context;
    for (int c = 0; c < chunks; ++c) context.push_back(random_ids(rng, chunk_len, vocab));
    const auto prompt = random_ids(rng, std::max(prefill, 8), vocab);

    // Warm-up on the same code paths (small sizes).
    {
      auto st = model->new_state();
      if (!context.empty()) model->set_context(*st, model->encode({context[0]}));
      model->forward(*st, {prompt.begin(), prompt.begin() + 8}, false);
      model->forward(*st, {5}, false);
    }

    auto t0 = std::chrono::steady_clock::now();
    EncodedContext ctx;
    if (!context.empty()) ctx = model->encode(context);
    backend->synchronize();
    const double encode_s = seconds_since(t0);

    // Decode from a one-token prompt (BOS): the short-context decode figure.
    // Per-step times too: their median shrugs off the stalls a shared machine adds to some steps
    // (the llama.cpp driver reports the same figure).
    double decode_short_s = 0.0;
    std::vector<double> decode_short_steps, decode_steps;
    {
      auto st = model->new_state(decode + 2);
      if (!context.empty()) model->set_context(*st, ctx);
      Tensor l = model->forward(*st, {1}, false);
      t0 = std::chrono::steady_clock::now();
      for (int s = 0; s < decode; ++s) {
        const auto step0 = std::chrono::steady_clock::now();
        l = model->forward(*st, {argmax(l.data<float>(), vocab)}, false);
        backend->synchronize();
        decode_short_steps.push_back(seconds_since(step0));
      }
      decode_short_s = seconds_since(t0);
    }

    // Prefill; with --prefill-runs N, N times on fresh states and the median time (a shared
    // machine's noise moves single runs by 20 %), the last state decoding on.
    std::unique_ptr<DecoderState> state;
    Tensor logits;
    std::vector<double> prefill_times;
    for (int r = 0; r < prefill_runs; ++r) {
      state.reset();
      state = model->new_state(prefill + decode + 1);
      t0 = std::chrono::steady_clock::now();
      if (!context.empty())
        model->set_context(*state, ctx);  // cached: cross-attention K/V, projected once per request
      logits = model->forward(*state, prompt, false);
      backend->synchronize();
      prefill_times.push_back(seconds_since(t0));
    }
    std::sort(prefill_times.begin(), prefill_times.end());
    const double prefill_s = prefill_times[prefill_times.size() / 2];

    t0 = std::chrono::steady_clock::now();
    for (int s = 0; s < decode; ++s) {
      const auto step0 = std::chrono::steady_clock::now();
      const int next = argmax(logits.data<float>(), vocab);
      logits = model->forward(*state, {next}, false);
      backend->synchronize();
      decode_steps.push_back(seconds_since(step0));
    }
    const double decode_s = seconds_since(t0);

    // Bytes a batch-1 decode step must read at least: the decoder's weights once, plus this
    // request's caches (self K/V and what cross-attention reads); against the device's bandwidth
    // this is the step's roofline.
    const double step_bytes =
        static_cast<double>(model->decode_weight_bytes() + state->cache_bytes());

    // Decode steps of `batch` requests together: the others get their own chunks and prompt
    // (encoded and prefilled untimed), then all step at once.
    double batch_step_s = decode_s / std::max(decode, 1);
    size_t batch_cache_bytes = state->cache_bytes();
    if (batch > 1) {
      std::vector<std::unique_ptr<DecoderState>> others;
      std::vector<DecoderState*> all = {state.get()};
      std::vector<int32_t> next_tokens = {argmax(logits.data<float>(), vocab)};
      for (int r = 1; r < batch; ++r) {
        std::vector<std::vector<int32_t>> ctx_r;
        for (int c = 0; c < chunks; ++c) ctx_r.push_back(random_ids(rng, chunk_len, vocab));
        auto st = model->new_state(prefill + decode + 1);
        if (!ctx_r.empty()) model->set_context(*st, model->encode(ctx_r));
        Tensor l = model->forward(*st, random_ids(rng, prefill, vocab), false);
        next_tokens.push_back(argmax(l.data<float>(), vocab));
        all.push_back(st.get());
        batch_cache_bytes += st->cache_bytes();
        others.push_back(std::move(st));
      }
      backend->synchronize();
      t0 = std::chrono::steady_clock::now();
      for (int s = 0; s < decode; ++s) {
        std::vector<std::vector<int32_t>> step_tokens;
        for (int32_t t : next_tokens) step_tokens.push_back({t});
        Tensor l = model->forward_batch(all, step_tokens, false);
        for (int r = 0; r < batch; ++r) next_tokens[r] = argmax(l.data<float>() + r * vocab, vocab);
      }
      backend->synchronize();
      batch_step_s = seconds_since(t0) / std::max(decode, 1);
    }

    struct rusage ru {};
    getrusage(RUSAGE_SELF, &ru);
    const double peak_rss_mb = ru.ru_maxrss / 1024.0;
    const double weights_mb = model->weight_bytes() / 1048576.0;
    // FLOPs of the prefill in the decoder's own linears and causal self-attention (what every
    // engine must do; cross-attention, the encoder and the head are left out).
    const LlamaConfig& dc = model->config().decoder;
    const double q_width = double(dc.num_attention_heads) * dc.head_dim;
    const double kv_width = double(dc.num_key_value_heads) * dc.head_dim;
    const double linear_params =
        dc.hidden_size * (2 * q_width + 2 * kv_width) + 3.0 * dc.hidden_size * dc.intermediate_size;
    const double prefill_flops =
        dc.num_hidden_layers *
        (2.0 * linear_params * prefill + 4.0 * q_width * (double(prefill) * (prefill + 1) / 2));
    const double fma_flops =
        fma_peak_flops(threads > 0 ? threads : std::max(1u, std::thread::hardware_concurrency()));
    const double read_bytes_per_s =
        bandwidth_mb == 0
            ? 0.0
            : read_bandwidth(
                  threads > 0 ? threads : std::max(1u, std::thread::hardware_concurrency()),
                  bandwidth_mb);
    const int64_t enc_tokens = int64_t(chunks) * chunk_len;
    std::printf(
        "{\"engine\": \"cepe-cpp\", \"backend\": \"%s\", \"threads\": %d, \"weights\": \"%s\", "
        "\"load_s\": %.3f, "
        "\"encode\": {\"tokens\": %lld, \"seconds\": %.4f, \"tokens_per_s\": %.2f}, "
        "\"prefill\": {\"tokens\": %d, \"seconds\": %.4f, \"tokens_per_s\": %.2f, \"runs\": %d}, "
        "\"decode_short\": {\"tokens\": %d, \"seconds\": %.4f, \"tokens_per_s\": %.2f, "
        "\"median_step_ms\": %.3f}, "
        "\"decode\": {\"tokens\": %d, \"seconds\": %.4f, \"tokens_per_s\": %.2f, "
        "\"median_step_ms\": %.3f}, "
        "\"weights_mb\": %.1f, \"kv_and_cross_cache_mb\": %.1f, \"peak_rss_mb\": %.1f, "
        "\"peak_device_mb\": %.1f, \"cross_attention\": \"%s\", \"kv_cache\": \"%s\", "
        "\"decode_step_bytes\": %.0f, \"decode_bytes_per_s\": %.4g, "
        "\"batch_decode\": {\"batch\": %d, \"ms_per_step\": %.3f, \"tokens_per_s\": %.2f, "
        "\"cache_mb_per_request\": %.1f}, \"machine_read_gb_s\": %.2f, "
        "\"decode_roofline_tokens_per_s\": %.1f, \"prefill_gflop_s\": %.1f, "
        "\"machine_fma_gflop_s\": %.1f}\n",
        backend->describe().c_str(), threads, weights.c_str(), load_s,
        static_cast<long long>(enc_tokens), encode_s, enc_tokens ? enc_tokens / encode_s : 0.0,
        prefill, prefill_s, prefill / prefill_s, prefill_runs, decode, decode_short_s,
        decode / decode_short_s, 1e3 * median(decode_short_steps), decode, decode_s,
        decode / decode_s, 1e3 * median(decode_steps), weights_mb, state->cache_bytes() / 1048576.0,
        peak_rss_mb, backend_memory(*backend).peak_in_use / 1048576.0,
        cross_attention_mode_name(model->cross_attention_mode()),
        dtype_name(model->kv_cache_dtype()), step_bytes, step_bytes * decode / decode_s, batch,
        1e3 * batch_step_s, batch / batch_step_s, batch_cache_bytes / 1048576.0 / batch,
        read_bytes_per_s / 1e9,
        read_bytes_per_s / static_cast<double>(model->decode_weight_bytes()),
        prefill_flops / prefill_s / 1e9, fma_flops / 1e9);
  } catch (const Error& e) {
    std::fprintf(stderr, "bench_engine: error: %s\n", e.what());
    return 1;
  }
  return 0;
} catch (const std::exception& e) {
  std::fprintf(stderr, "bench_engine: error: %s\n", e.what());
  return 2;
}
