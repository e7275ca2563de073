// The one load sequence every model command and the server share: settings as the user wrote
// them are checked, then the tokenizer, then the weights are read, so that a typo or a wrong
// tokenizer never waits for a multi-gigabyte checkpoint.
#pragma once

#include <filesystem>
#include <functional>
#include <memory>
#include <string>
#include <string_view>

#include "engine/backend.h"
#include "engine/models/cepe_llama.h"
#include "engine/tokenizer.h"

namespace cepe {

/// How to load a model, as written in flags or a config file (parsed and checked by load_model).
struct ModelLoadSettings {
  std::filesystem::path dir;             ///< model directory (config.json, *.safetensors, ...)
  std::string device = "cpu";            ///< "cpu" or "cuda" (parse_device)
  int threads = 0;                       ///< CPU threads, 0 = all cores
  std::string weights = "stored";        ///< load-time weights kind (parse_weight_kind)
  std::string cross_attention = "auto";  ///< parse_cross_attention_mode
  std::string kv_cache = "auto";         ///< parse_kv_cache_type
  std::string stored_weights = "auto";   ///< parse_stored_weights
  bool need_tokenizer = true;            ///< a missing tokenizer.model is an error, not null
  /// Names a setting in errors, given its key ("model", "weights", "cross_attention",
  /// "kv_cache", "stored_weights"): "--kv-cache" for a flag, "config: 'kv_cache'" for a config
  /// file. Unset: the key itself.
  std::function<std::string(std::string_view key)> setting_name;
};

/// A setting's key as a command-line flag: "kv_cache" -> "--kv-cache".
std::string flag_setting_name(std::string_view key);

/// A model, its backend and its tokenizer, loaded from one directory.
struct LoadedModel {
  std::unique_ptr<Backend> backend;      ///< the device the model runs on
  std::unique_ptr<CepeModel> model;      ///< weights and config
  std::unique_ptr<Tokenizer> tokenizer;  ///< null when absent and not needed
  double weights_load_seconds = 0;       ///< wall time of reading the weights (no device setup)
};

/// Checks every setting and the tokenizer (against config.json), then loads the weights, with
/// the cross-attention mode and KV-cache type applied; `progress` hears the weights' load.
LoadedModel load_model(const ModelLoadSettings& settings,
                       const CepeModel::LoadProgress& progress = {});

}  // namespace cepe
