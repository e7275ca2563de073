// Loads what a server answers with (backend, model, tokenizer, index) from its config, with errors
// that name the config field.
#pragma once

#include <memory>

#include "config/server_config.h"
#include "engine/models/model_loader.h"
#include "index/open_index.h"
#include "server/server.h"

namespace cepe::server {

/// The loaded model and index; keep it alive as long as the server that uses it.
struct LoadedResources {
  std::unique_ptr<Backend> backend;                          ///< the device
  std::unique_ptr<CepeModel> model;                          ///< weights and config
  std::unique_ptr<Tokenizer> tokenizer;                      ///< the model's tokenizer.model
  std::shared_ptr<const index::IndexRetriever> retriever;    ///< null when no index is configured
  std::string model_name;                                    ///< name reported in responses
  std::shared_ptr<const index::EncoderStore> encoder_store;  ///< config encoder_store (or null)
  std::shared_ptr<qa::EncodedPassageCache> encoder_cache;    ///< config encoder_cache_mb (or null)
  uint64_t encoder_fingerprint = 0;                          ///< cache key part
  /// The non-owning view Server::attach() takes.
  Resources view() const;
};

/// Loads `config.model` (which must hold tokenizer.model) and, when set, `config.index`;
/// `progress` (optional) hears the model weights' load, as CepeModel::load reports it.
LoadedResources load_resources(const config::ServerConfig& config,
                               const CepeModel::LoadProgress& progress = {});

}  // namespace cepe::server
