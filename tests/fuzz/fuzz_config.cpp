// Configuration a user writes or a checkpoint brings: a model's config.json, the server config
// file and an index's manifest.json. The first byte picks which reader gets the rest.
#include "config/server_config.h"
#include "engine/config.h"
#include "index/manifest.h"
#include "tests/fuzz/fuzz_util.h"

using namespace cepe;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const std::string text(fuzz::as_text(data + 1, size - 1));
  fuzz::expect_clean([&] {
    switch (data[0] % 3) {
      case 0:
        parse_model_config(text, "config.json");
        break;
      case 1: {
        config::ServerConfig server;
        config::apply_config_json(server, text, "server.json");
        config::validate_server_config(server);
        config::server_config_to_json(server);
        break;
      }
      default:
        index::manifest_to_json(index::manifest_from_json(text, "manifest.json"));
    }
  });
  return 0;
}
