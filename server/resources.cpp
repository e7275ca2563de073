#include "server/resources.h"

#include <filesystem>
#include <iostream>

#include "common/error.h"

namespace cepe::server {

Resources LoadedResources::view() const {
  Resources r;
  r.model = model.get();
  r.tokenizer = tokenizer.get();
  r.retriever = retriever;
  r.model_name = model_name;
  r.encoder_store = encoder_store;
  r.encoder_cache = encoder_cache;
  r.encoder_fingerprint = encoder_fingerprint;
  return r;
}

LoadedResources load_resources(const config::ServerConfig& config,
                               const CepeModel::LoadProgress& progress) {
  namespace fs = std::filesystem;
  LoadedResources out;
  const fs::path dir = config.model;
  // The index is opened first: it is cheap to check and a wrong path should not wait for a
  // multi-gigabyte model to load.
  if (!config.index.empty()) {
    CEPE_CHECK(fs::is_directory(config.index),
               "config: 'index' " << config.index << ": not a directory");
    index::OpenOptions oo;
    oo.bm25_shards = config.bm25_shards;
    out.retriever = index::open_index(config.index, oo);
  }
  ModelLoadSettings settings;
  settings.dir = dir;
  settings.device = config.device;
  settings.threads =
      config.threads;  // honoured on the engine thread: every CPU region names its team
  settings.weights = config.weights;
  settings.cross_attention = config.cross_attention;
  settings.kv_cache = config.kv_cache;
  settings.stored_weights = config.stored_weights;
  settings.setting_name = [](std::string_view key) { return "config: '" + std::string(key) + "'"; };
  LoadedModel loaded = load_model(settings, progress);
  out.backend = std::move(loaded.backend);
  out.model = std::move(loaded.model);
  out.tokenizer = std::move(loaded.tokenizer);
  // Passage states: the store when one matches; otherwise (with an index or caller passages) the
  // LRU cache. A store that does not match is reported once here and never used.
  if (out.model->config().is_cepe()) {
    out.encoder_store = qa::open_encoder_store(
        config.encoder_store, config.index, dir, out.model->config(), config.chunk_tokens,
        out.backend->device(),
        [](const std::string& line) { std::cerr << "cepe serve: " << line << "\n"; });
    if (!out.encoder_store && config.encoder_cache_mb > 0) {
      out.encoder_cache =
          std::make_shared<qa::EncodedPassageCache>(size_t(config.encoder_cache_mb) << 20);
      out.encoder_fingerprint =
          index::encoder_fingerprint(dir, out.model->config(), config.chunk_tokens,
                                     index::StateDType::F32)
              .digest();
    }
  }
  out.model_name = config.model_name;
  if (out.model_name.empty()) {
    out.model_name = fs::absolute(dir).lexically_normal().filename().string();
    if (out.model_name.empty())
      out.model_name = fs::absolute(dir).parent_path().filename().string();
  }
  return out;
}

}  // namespace cepe::server
