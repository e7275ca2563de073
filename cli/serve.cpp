// `cepe serve`: the HTTP QA service. Settings come from a JSON config file (config/server.json
// documents every field) and flags override them one by one (--max-batch for max_batch, ...).
#include <pthread.h>
#include <signal.h>

#include <csignal>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <exception>
#include <filesystem>
#include <iostream>
#include <string>
#include <thread>
#include <vector>

#include "cli/command.h"
#include "common/error.h"
#include "common/fileio.h"
#include "config/server_config.h"
#include "qa/encoder_states.h"
#include "qa/prompt.h"
#include "server/resources.h"
#include "server/server.h"

namespace cepe::cli {
namespace {

// Flag names: the config field with '-' for '_'; the lists take one value per repeated flag.
std::string flag_name(const std::string& field) {
  if (field == "api_keys") return "api-key";
  if (field == "cors_origins") return "cors-origin";
  if (field == "bm25_shards") return "bm25-shard";
  std::string f = field;
  for (char& c : f)
    if (c == '_' || c == '.') c = '-';
  return f;
}

int run_serve(const std::vector<std::string>& argv) {
  Args args;
  args.option("config", "JSON config file (see config/server.json; flags override it)");
  for (const auto& f : config::server_config_fields()) {
    if (f.kind == config::FieldKind::StringList)
      args.multi(flag_name(f.name), f.help);
    else
      args.option(flag_name(f.name), f.help);
  }
  args.flag("print-config", "print the effective configuration as JSON and exit");
  args.parse(argv);
  if (args.help_requested()) {
    std::cout << args.usage("cepe serve [--config FILE] --model DIR [--index DIR] [flags]");
    return 0;
  }
  config::ServerConfig cfg;
  if (args.has("config")) cfg = config::load_server_config(args.get("config"));
  for (const auto& f : config::server_config_fields()) {
    const std::string flag = flag_name(f.name);
    const std::string origin = "--" + flag;
    if (f.kind == config::FieldKind::StringList) {
      const auto values = args.get_all(flag);
      if (values.empty()) continue;
      // Flags replace the file's list rather than extend it, as scalar flags replace values.
      config::ServerConfig fresh;
      fresh.default_stop.clear();
      for (const auto& v : values) config::set_config_field(fresh, f.name, v, origin);
      if (flag == "api-key") cfg.api_keys = fresh.api_keys;
      if (flag == "cors-origin") cfg.cors_origins = fresh.cors_origins;
      if (flag == "bm25-shard") cfg.bm25_shards = fresh.bm25_shards;
      if (flag == "default-stop") {
        cfg.default_stop.clear();
        for (const auto& v : fresh.default_stop)
          cfg.default_stop.push_back(qa::unescape_template(v));
      }
      continue;
    }
    if (!args.has(flag)) continue;
    std::string value = args.get(flag);
    // Templates typed on a command line spell newlines as \n.
    if (std::string(f.name).rfind("prompt.", 0) == 0) value = qa::unescape_template(value);
    config::set_config_field(cfg, f.name, value, origin);
  }
  const std::vector<std::string> listed_keys = cfg.api_keys;  // api_keys / --api-key
  config::load_api_key_file(cfg);
  config::validate_server_config(cfg);
  if (args.is_set("print-config")) {
    std::cout << config::server_config_to_json(cfg) << "\n";
    return 0;
  }

  // Signals are taken synchronously by this thread; every thread started below inherits the mask.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGHUP);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  std::signal(SIGPIPE, SIG_IGN);

  server::Logger logger;
  // Declared before the server so the model outlives every thread that could still touch it.
  server::LoadedResources resources;
  server::Server srv(cfg, &logger);
  srv.start();
  server::LogLine("info", "listening")
      .str("host", cfg.host)
      .num("port", srv.port())
      .flag("batching", cfg.batching)
      .num("max_batch", cfg.max_batch)
      .num("max_queue", cfg.max_queue)
      .write(&logger);

  // SIGHUP re-reads api_key_file: keys are added and revoked without a restart (and without
  // reloading the model). A file that cannot be read or holds no key keeps the keys in use.
  const auto reload_keys = [&] {
    if (cfg.api_key_file.empty()) return;
    try {
      std::vector<std::string> keys = listed_keys;
      for (auto& key : config::read_api_key_file(cfg.api_key_file)) keys.push_back(std::move(key));
      const auto count = static_cast<int64_t>(keys.size());
      srv.set_api_keys(std::move(keys));
      server::LogLine("info", "keys_reloaded").num("keys", count).write(&logger);
    } catch (const std::exception& e) {
      server::LogLine("error", "keys_reload_failed").str("what", e.what()).write(&logger);
    }
  };

  const auto t0 = std::chrono::steady_clock::now();
  // The model loads on its own thread while this one keeps taking signals: a SIGTERM during a
  // long load stops the server now rather than after the load. The load cannot be interrupted,
  // so the process then exits without joining it.
  std::exception_ptr load_error;
  std::atomic<bool> loaded{false};
  // The load's progress: on /readyz as it goes, and a log line every 10 s of a long load.
  auto last_line = t0;
  const auto progress = [&](uint64_t done, uint64_t total) {
    srv.set_load_progress(done, total);
    const auto now = std::chrono::steady_clock::now();
    if (now - last_line < std::chrono::seconds(10) || done >= total) return;
    last_line = now;
    server::LogLine("info", "loading")
        .num("weights_mb_read", static_cast<int64_t>(done >> 20))
        .num("weights_mb", static_cast<int64_t>(total >> 20))
        .write(&logger);
  };
  std::thread loader([&] {
    try {
      resources = server::load_resources(cfg, progress);
    } catch (...) {
      load_error = std::current_exception();
    }
    loaded.store(true);
  });
  const timespec load_tick{0, 50 * 1000 * 1000};
  while (!loaded.load()) {
    const int got = sigtimedwait(&signals, nullptr, &load_tick);
    if (got <= 0) continue;
    if (got == SIGHUP) {
      reload_keys();
      continue;
    }
    server::LogLine("info", "stopping")
        .str("signal", got == SIGTERM ? "SIGTERM" : "SIGINT")
        .str("while", "loading")
        .write(&logger);
    srv.shutdown(std::chrono::milliseconds(0));
    server::LogLine("info", "stopped").flag("clean", true).write(&logger);
    std::fflush(stderr);
    std::_Exit(0);
  }
  loader.join();
  if (load_error) {
    try {
      std::rethrow_exception(load_error);
    } catch (const std::exception& e) {
      server::LogLine("error", "load_failed").str("what", e.what()).write(&logger);
      srv.shutdown(std::chrono::milliseconds(0));
      throw;
    }
  }
  srv.attach(resources.view());
  // The server shares the index from here on: after a reload the old one must go when its last
  // request does, not live on here.
  resources.retriever.reset();
  // SIGHUP also reopens the index when its manifest changed (cepe index add, or a rebuild with
  // --overwrite, swaps in a new directory): new requests search the new index, those retrieving
  // finish on the old one. An index that fails to open (checksums, embedder) keeps the old one.
  const std::filesystem::path manifest_file = std::filesystem::path(cfg.index) / "manifest.json";
  std::string served_manifest;
  if (!cfg.index.empty()) served_manifest = read_whole_file(manifest_file, "the index manifest");
  const auto reload_index = [&] {
    if (cfg.index.empty()) return;
    try {
      const std::string manifest = read_whole_file(manifest_file, "the index manifest");
      if (manifest == served_manifest) {
        server::LogLine("info", "index_unchanged").str("index", cfg.index).write(&logger);
        return;
      }
      const auto t = std::chrono::steady_clock::now();
      index::OpenOptions oo;
      oo.bm25_shards = cfg.bm25_shards;
      std::shared_ptr<const index::IndexRetriever> next = index::open_index(cfg.index, oo);
      const auto passages = static_cast<int64_t>(next->manifest().passages);
      srv.set_retriever(std::move(next));
      served_manifest = manifest;
      server::LogLine("info", "index_reloaded")
          .str("index", cfg.index)
          .num("passages", passages)
          .ms("open_ms",
              std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t)
                  .count())
          .write(&logger);
    } catch (const std::exception& e) {
      server::LogLine("error", "index_reload_failed").str("what", e.what()).write(&logger);
    }
  };
  // With encoder_store auto, SIGHUP also looks for the index's store again: one that
  // `cepe index encode` wrote since (a first one, or one rewritten after cepe index add or remove)
  // replaces the store in use; passages it lacks are encoded live as before.
  std::shared_ptr<const index::EncoderStore> served_store = std::move(resources.encoder_store);
  const auto reload_store = [&] {
    if (cfg.index.empty() || cfg.encoder_store != "auto" || !resources.model->config().is_cepe())
      return;
    try {
      auto found = qa::open_encoder_store(
          "auto", cfg.index, cfg.model, resources.model->config(), cfg.chunk_tokens,
          resources.backend->device(), [&](const std::string& line) {
            server::LogLine("warn", "encoder_store_ignored").str("what", line).write(&logger);
          });
      // The same file (a store is only ever replaced by a rename, so a rewrite has a new inode,
      // even at the same size: e.g. after `index add --replace` of same-length passages).
      if (!found || (served_store && found->file_identity() == served_store->file_identity()))
        return;
      const auto passages = static_cast<int64_t>(found->size());
      const std::string path = found->path().string();
      served_store = found;
      srv.set_encoder_store(std::move(found));
      server::LogLine("info", "encoder_store_reloaded")
          .str("path", path)
          .num("passages", passages)
          .write(&logger);
    } catch (const std::exception& e) {
      server::LogLine("error", "encoder_store_reload_failed").str("what", e.what()).write(&logger);
    }
  };
  const auto reload = [&] {
    if (cfg.api_key_file.empty() && cfg.index.empty()) {
      server::LogLine("warn", "reload_skipped")
          .str("what", "SIGHUP: no api_key_file and no index to reload")
          .write(&logger);
      return;
    }
    reload_keys();
    reload_index();
    reload_store();
  };
  server::LogLine("info", "ready")
      .str("model", resources.model_name)
      .str("index", cfg.index)
      .ms("load_ms",
          std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count())
      .write(&logger);

  int sig = 0;
  for (;;) {
    if (sigwait(&signals, &sig) != 0) continue;
    if (sig != SIGHUP) break;
    reload();
  }
  server::LogLine("info", "stopping")
      .str("signal", sig == SIGTERM ? "SIGTERM" : "SIGINT")
      .num("grace_ms", cfg.shutdown_grace_ms)
      .num("in_flight", srv.in_flight())
      .write(&logger);
  std::atomic<bool> done{false};
  bool clean = false;
  std::thread stopper([&] {
    clean = srv.shutdown(std::chrono::milliseconds(cfg.shutdown_grace_ms));
    done.store(true);
  });
  // A second signal during the grace period means "now".
  const timespec tick{0, 100 * 1000 * 1000};
  while (!done.load()) {
    const int got = sigtimedwait(&signals, nullptr, &tick);
    if (got == SIGHUP) {
      reload();
    } else if (got > 0) {
      server::LogLine("warn", "forced_exit").num("in_flight", srv.in_flight()).write(&logger);
      std::fflush(stderr);
      std::_Exit(1);
    }
  }
  stopper.join();
  server::LogLine("info", "stopped").flag("clean", clean).write(&logger);
  return 0;
}

}  // namespace

CEPE_REGISTER_COMMAND("serve", "answer questions over HTTP (POST /ask, streaming, metrics)",
                      run_serve);

}  // namespace cepe::cli
