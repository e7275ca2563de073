// GET /v1/info: what the server runs (model, index, encoder-state store, per-request memory,
// limits, engine settings), rendered from the loaded resources and the config.
#pragma once

#include <string>

#include "config/server_config.h"
#include "server/server.h"

namespace cepe::server {

/// The /v1/info body; `res` is empty (default) until the model is attached.
std::string server_info_json(const Resources& res, const config::ServerConfig& cfg,
                             const char* server_name);

}  // namespace cepe::server
