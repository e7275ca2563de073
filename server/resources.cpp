#include "server/resources.h"

#include <filesystem>
#include <iostream>

#include "common/error.h"

namespace cepe::server {

Resources LoadedResources::view() const {
  Resources r;
  r.model = model.get();
  r.tokenizer = tokenizer.get();
  r.retriever = retriever.get();
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
  CEPE_CHECK(fs::is_directory(dir), "config: 'model' " << dir.string() << ": not a directory");
  const fs::path tok = dir / "tokenizer.model";
  CEPE_CHECK(fs::exists(tok), "config: 'model': " << tok.string()
                                                  << " not found (the server needs the model's "
                                                     "sentencepiece tokenizer)");
  // The index is opened first: it is cheap to check and a wrong path should not wait for a
  // multi-gigabyte model to load.
  if (!config.index.empty()) {
    CEPE_CHECK(fs::is_directory(config.index),
               "config: 'index' " << config.index << ": not a directory");
    index::OpenOptions oo;
    oo.bm25_shards = config.bm25_shards;
    out.retriever = index::open_index(config.index, oo);
  }
  BackendOptions bo;
  bo.threads = config.threads;  // honoured on the engine thread: every CPU region names its team
  bo.weights = parse_weight_kind(config.weights, "config: 'weights'");
  out.backend = make_backend(parse_device(config.device), bo);
  // The settings and the tokenizer before the weights, as the index: a bad value should not wait
  // for the load.
  const auto cross_attention = parse_cross_attention_mode(
      config.cross_attention, out.backend->device(), "config: 'cross_attention'");
  const auto kv_cache =
      parse_kv_cache_type(config.kv_cache, out.backend->device(), bo.weights, "config: 'kv_cache'");
  out.tokenizer = load_model_tokenizer(dir, load_model_config(dir));
  out.model = CepeModel::load(dir, *out.backend, progress);
  out.model->set_cross_attention_mode(cross_attention);
  out.model->set_kv_cache_dtype(kv_cache);
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
