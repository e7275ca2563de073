// Shared pieces of the fuzz targets. Each target feeds bytes to the code that reads one kind of
// untrusted input and accepts two outcomes: success, or the error type that tells a user what was
// wrong and where (cepe::Error; server::ApiError for request bodies). Anything else is a bug: a
// crash or sanitizer report, or another exception (std::out_of_range from a stray .at(), "stoi"
// from std::stoi), which would reach the user as a message that names neither field nor line.
//
// Built with clang and -DCEPE_FUZZ_ENGINE=libfuzzer, each target is a libFuzzer binary; otherwise
// it replays files (replay_main.cpp), which is how the corpus in tests/fuzz/corpus runs in ctest.
#pragma once

#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <filesystem>
#include <fstream>
#include <string>
#include <string_view>
#include <typeinfo>

#include "common/error.h"

namespace cepe::fuzz {

/// The input as text (any bytes, NULs included).
inline std::string_view as_text(const uint8_t* data, size_t size) {
  return {reinterpret_cast<const char*>(data), size};
}

/// A directory of this process's own, removed when the process exits normally (an abort leaves
/// it, beside the input that failed).
inline const std::filesystem::path& scratch_dir() {
  struct Dir {
    std::filesystem::path path;
    Dir() {
      const char* tmp = std::getenv("TMPDIR");
      path = std::filesystem::path(tmp && *tmp ? tmp : "/tmp") /
             ("cepe-fuzz-" + std::to_string(::getpid()));
      std::filesystem::create_directories(path);
    }
    ~Dir() {
      std::error_code ec;
      std::filesystem::remove_all(path, ec);
    }
  };
  static const Dir dir;
  return dir.path;
}

/// ../shared's LLaMA-2 tokenizer.model (CEPE_SHARED_DIR names ../shared; CEPE_FUZZ_TOKENIZER a
/// tokenizer of its own); empty, having said once that `target` skips, when it is absent.
inline std::filesystem::path shared_tokenizer(const char* target) {
  std::filesystem::path file;
  if (const char* named = std::getenv("CEPE_FUZZ_TOKENIZER"); named && *named) {
    file = named;
  } else {
    const char* shared = std::getenv("CEPE_SHARED_DIR");
    file = std::filesystem::path(shared && *shared ? shared : "../shared") /
           "models/llama2-tokenizer/tokenizer.model";
  }
  if (std::filesystem::exists(file)) return file;
  std::fprintf(stderr, "%s: SKIP: no tokenizer at %s (set CEPE_FUZZ_TOKENIZER)\n", target,
               file.c_str());
  return {};
}

/// A file named `name` holding `bytes`, in scratch_dir() (rewritten each call).
inline std::filesystem::path write_input(std::string_view bytes, const std::string& name) {
  const auto path = scratch_dir() / name;
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  if (!out.flush()) {
    std::fprintf(stderr, "fuzz harness: cannot write %s\n", path.c_str());
    std::abort();
  }
  return path;
}

/// True when CEPE_FUZZ_SHOW is set: targets then print what their reader said (to read what a
/// seed or a found input reaches).
inline bool showing() {
  static const bool show = std::getenv("CEPE_FUZZ_SHOW") != nullptr;
  return show;
}

/// Stops the run, naming the target's broken promise.
[[noreturn]] inline void fail(const std::string& what) {
  std::fprintf(stderr, "fuzz target failed: %s\n", what.c_str());
  std::abort();
}

/// Runs `read`; returns true when it succeeded, false when it threw cepe::Error or one of
/// `Allowed` with a non-empty one-line message, and aborts on any other outcome.
template <class... Allowed, class Read>
bool expect_clean(Read&& read) {
  auto check_message = [](const std::exception& e) {
    const std::string_view m = e.what();
    if (showing()) std::fprintf(stderr, "  error: %s\n", e.what());
    if (m.empty() || m.find('\n') != std::string_view::npos)
      fail("error message is empty or not one line: '" + std::string(m) + "'");
  };
  try {
    read();
    return true;
  } catch (const cepe::Error& e) {
    check_message(e);
  } catch (const std::exception& e) {
    if (!(dynamic_cast<const Allowed*>(&e) || ...))
      fail(std::string("unexpected exception (") + typeid(e).name() + "): " + e.what());
    check_message(e);
  }
  return false;
}

}  // namespace cepe::fuzz
