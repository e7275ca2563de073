#include "engine/models/model_loader.h"

#include <algorithm>
#include <chrono>

#include "common/error.h"
#include "engine/config.h"
#include "engine/quant.h"

namespace cepe {

std::string flag_setting_name(std::string_view key) {
  std::string flag = "--" + std::string(key);
  std::replace(flag.begin(), flag.end(), '_', '-');
  return flag;
}

LoadedModel load_model(const ModelLoadSettings& s, const CepeModel::LoadProgress& progress) {
  const auto name = [&](std::string_view key) {
    return s.setting_name ? s.setting_name(key) : std::string(key);
  };
  LoadedModel out;
  CEPE_CHECK(std::filesystem::is_directory(s.dir),
             name("model") << " " << s.dir.string() << ": not a directory");
  const Device device = parse_device(s.device);
  BackendOptions options;
  options.threads = s.threads;
  options.weights = parse_weight_kind(s.weights, name("weights"));
  options.stored_weights =
      parse_stored_weights(s.stored_weights, device, options.weights, name("stored_weights"));
  const auto cross_attention =
      parse_cross_attention_mode(s.cross_attention, device, name("cross_attention"));
  const auto kv_cache = parse_kv_cache_type(s.kv_cache, device, options.weights, name("kv_cache"));
  // config.json once: the tokenizer is checked against it, then the weights are loaded by it.
  ModelConfig config = load_model_config(s.dir);
  const std::filesystem::path tokenizer = s.dir / "tokenizer.model";
  if (std::filesystem::exists(tokenizer)) {
    out.tokenizer = load_model_tokenizer(s.dir, config);
  } else {
    CEPE_CHECK(!s.need_tokenizer, name("model") << ": " << tokenizer.string()
                                                << " not found (the model directory needs its "
                                                   "sentencepiece tokenizer.model)");
  }
  // The device last among the checks: setting up a GPU takes a while, and may fail.
  out.backend = make_backend(device, options);
  const auto start = std::chrono::steady_clock::now();
  out.model = CepeModel::load(s.dir, std::move(config), *out.backend, progress);
  out.weights_load_seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  out.model->set_cross_attention_mode(cross_attention);
  out.model->set_kv_cache_dtype(kv_cache);
  return out;
}

}  // namespace cepe
