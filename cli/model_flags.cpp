#include "cli/model_flags.h"

#include <chrono>
#include <limits>

#include "common/error.h"
#include "common/progress.h"

namespace cepe::cli {

void add_model_flags(Args& args) {
  args.option("model", "model directory (config.json, *.safetensors, tokenizer.model)")
      .option("device", "cpu or cuda", "cpu")
      .option("threads", "CPU threads (0 = all cores)", "0")
      .option("weights",
              "what the linears and embedding tables are converted to at load time: stored (as "
              "in the checkpoint), f32, bf16, f16, q8_0 or q4_0 (norms stay F32; all but stored "
              "need --device cpu)",
              "stored")
      .option("cross-attention",
              "how decoding reads the encoder states: cached (per-layer K/V kept per request), "
              "absorbed (only the states kept), auto (absorbed on cpu, cached on cuda)",
              "auto")
      .option("kv-cache",
              "KV cache element type (self-attention, and cached cross-attention K/V): f32, f16 "
              "(cpu; halves the caches) or auto (f16 on cpu with --weights bf16, f16, q8_0 or "
              "q4_0, else f32)",
              "auto")
      .option("stored-weights",
              "with --weights stored on cpu: auto (matrices copied out of the file mapping while "
              "memory allows: faster steps) or mapped (all read in place through the page cache: "
              "least memory, shared by every process on the checkpoint)",
              "auto");
}

LoadedModel load_model(const Args& args, bool need_tokenizer) {
  ModelLoadSettings settings;
  settings.dir = args.get("model");
  settings.device = args.get("device");
  settings.threads = static_cast<int>(args.get_int("threads", 0, 1024));
  settings.weights = args.get("weights");
  settings.cross_attention = args.get("cross-attention");
  settings.kv_cache = args.get("kv-cache");
  settings.need_tokenizer = need_tokenizer;
  settings.stored_weights = args.get("stored-weights");
  settings.setting_name = flag_setting_name;
  // A bar only for a load that takes a while (a 7B checkpoint's copy or conversion).
  ProgressBar bar("loading " + settings.dir.string(), "MB", 0);
  bar.quiet_for(std::chrono::seconds(2));
  LoadedModel lm = cepe::load_model(settings, bar.byte_counter());
  bar.finish();
  return lm;
}

void add_sampling_flags(Args& args, int default_max_new_tokens) {
  args.option("max-new-tokens", "stop after this many generated tokens",
              std::to_string(default_max_new_tokens))
      .option("temperature", "0 = greedy; > 0 samples from softmax(logits / T)", "0")
      .option("top-k", "sample among the k most likely tokens (0 = all)", "0")
      .option("top-p", "sample from the smallest set with this much probability", "1")
      .option("seed", "random seed for sampling", "0")
      .multi("stop", "stop before this string");
}

SamplingOptions sampling_options(const Args& args) {
  SamplingOptions o;
  o.max_new_tokens = static_cast<int>(args.get_int("max-new-tokens", 0, 1 << 20));
  o.temperature = static_cast<float>(args.get_double("temperature", 0.0, 100.0));
  o.top_k = static_cast<int>(args.get_int("top-k", 0, std::numeric_limits<int>::max()));
  o.top_p = static_cast<float>(args.get_double("top-p", 1e-6, 1.0));
  o.seed = static_cast<uint64_t>(args.get_int("seed", 0, std::numeric_limits<long long>::max()));
  o.stop = args.get_all("stop");
  return o;
}

std::vector<std::vector<int32_t>> split_chunks(const std::vector<int32_t>& ids, int chunk_tokens) {
  std::vector<std::vector<int32_t>> chunks;
  for (size_t i = 0; i < ids.size(); i += chunk_tokens)
    chunks.emplace_back(ids.begin() + i, ids.begin() + std::min(ids.size(), i + chunk_tokens));
  return chunks;
}

}  // namespace cepe::cli
