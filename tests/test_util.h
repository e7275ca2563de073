// Helpers shared by the tests: where the sources, ../shared and the CLI are.
#pragma once

#include <rapidjson/document.h>

#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "engine/models/cepe_llama.h"

namespace cepe::test {

/// Project root (CEPE_SOURCE_DIR).
std::filesystem::path source_dir();
/// ../shared beside the project, or nullopt when absent (tests then GTEST_SKIP with a message).
std::optional<std::filesystem::path> shared_dir();
/// Path of the built `cepe` binary (CEPE_BINARY).
std::filesystem::path cepe_binary();
/// A fresh temporary directory, removed at exit.
std::filesystem::path temp_dir(const std::string& tag);
/// Runs a shell command; returns its exit status and fills `output` with stdout+stderr.
int run_command(const std::string& command, std::string* output);
/// Reads a whole file; empty when it does not exist (yet: a server log not written to).
std::string read_file(const std::filesystem::path& path);

/// A PyTorch reference fixture (tests/fixtures/NAME: a model and its expected.json).
struct Fixture {
  std::string name;              ///< directory name
  std::filesystem::path dir;     ///< the model directory
  rapidjson::Document expected;  ///< expected.json, parsed
};
/// Names of the committed fixtures, sorted; `greedy_only` keeps those with greedy references.
std::vector<std::string> fixture_names(bool greedy_only);
/// Loads one fixture (a parse error fails the calling test).
std::unique_ptr<Fixture> load_fixture(const std::string& name);
/// A JSON array of token ids.
std::vector<int32_t> ids_of(const rapidjson::Value& v);
/// A JSON array of arrays of token ids (context chunks).
std::vector<std::vector<int32_t>> chunks_of(const rapidjson::Value& v);
/// A fixture greedy case's reference tokens as our generation emits them: the reference keeps a
/// final EOS in its list, our generation ends on it without emitting it.
std::vector<int32_t> reference_greedy_tokens(const rapidjson::Value& greedy_case,
                                             const ModelConfig& config);
/// Greedy ids through the generation loop, as the reference's incremental loop produces them
/// (EOS ends it and is kept out).
std::vector<int32_t> greedy(CepeModel& model, const std::vector<int32_t>& prompt,
                            const std::vector<std::vector<int32_t>>& chunks, int max_new);
/// Largest |logit difference| two float32 evaluations of `config` may show for a sequence of
/// `tokens` tokens with encoder `chunks`, given the logits' largest magnitude. Derived from the
/// arithmetic as tests/reference/tolerance.py explains (the same formula): a dot product of length
/// n errs by at most 6 sqrt(n) u sum|x_i y_i| (u = 2^-24; Higham & Mary 2019, probability of a
/// miss < 3e-8), n is the total length of the float32 sums on one logit's path, sum|x_i y_i| is
/// stood in for by max(1, magnitude), and two evaluations double it. ~4e-4 on the fixtures, whose
/// measured cross-machine differences are ~1.5e-5; real defects move logits by > 1e-2.
double float32_logit_bound(const ModelConfig& config, int64_t tokens,
                           const std::vector<std::vector<int32_t>>& chunks, double magnitude);
/// The same bound for encoder states (the encoder's sums only), given their largest magnitude.
double float32_encoder_bound(const ModelConfig& config,
                             const std::vector<std::vector<int32_t>>& chunks, double magnitude);
/// Largest |value| of a JSON array of arrays of numbers.
double max_abs(const rapidjson::Value& rows);

/// Sequences stepped together (continuous batching) on `device` give each one's solo tokens: two
/// with context (the first attached in mode_a, the second in mode_b) and one without, which
/// joins a step late (fixture gqa_cross_last2).
void check_batched_steps(Device device, CrossAttentionMode mode_a, CrossAttentionMode mode_b);

}  // namespace cepe::test

/// Skips the test when ../shared (or a file under it) is missing.
#define CEPE_REQUIRE_SHARED(rel, var)                                                   \
  auto var##_dir = ::cepe::test::shared_dir();                                          \
  if (!var##_dir || !std::filesystem::exists(*var##_dir / (rel)))                       \
    GTEST_SKIP() << "../shared/" << (rel)                                               \
                 << " not found: skipping (tests that need the shared data run in CI)"; \
  const std::filesystem::path var = *var##_dir / (rel)
