#include "tests/test_util.h"

#include <gtest/gtest.h>

#include <sys/wait.h>
#include <unistd.h>
#include <algorithm>
#include <array>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "common/fileio.h"
#include "engine/backend.h"
#include "engine/generation.h"
#include "engine/models/cepe_llama.h"

namespace cepe::test {

std::filesystem::path source_dir() {
  const char* s = std::getenv("CEPE_SOURCE_DIR");
  return s ? std::filesystem::path(s) : std::filesystem::current_path();
}

std::optional<std::filesystem::path> shared_dir() {
  const char* s = std::getenv("CEPE_SHARED_DIR");
  std::filesystem::path p = s ? std::filesystem::path(s) : source_dir() / ".." / "shared";
  if (!std::filesystem::is_directory(p)) return std::nullopt;
  return std::filesystem::canonical(p);
}

std::filesystem::path cepe_binary() {
  const char* s = std::getenv("CEPE_BINARY");
  return s ? std::filesystem::path(s) : std::filesystem::path("cepe");
}

namespace {
// Directories handed out by temp_dir(), removed when the test binary exits.
struct TempDirs {
  std::vector<std::filesystem::path> dirs;
  ~TempDirs() {
    std::error_code ec;
    for (const auto& d : dirs) std::filesystem::remove_all(d, ec);
  }
};
TempDirs& temp_dirs() {
  static TempDirs t;
  return t;
}
}  // namespace

std::filesystem::path temp_dir(const std::string& tag) {
  std::string tmpl =
      (std::filesystem::temp_directory_path() / ("cepe-" + tag + "-XXXXXX")).string();
  char* p = mkdtemp(tmpl.data());
  if (!p) throw std::runtime_error("mkdtemp failed");
  temp_dirs().dirs.emplace_back(p);
  return std::filesystem::path(p);
}

int run_command(const std::string& command, std::string* output) {
  std::string full = command + " 2>&1";
  FILE* pipe = popen(full.c_str(), "r");
  if (!pipe) return -1;
  std::array<char, 4096> buf;
  std::string out;
  size_t n;
  while ((n = fread(buf.data(), 1, buf.size(), pipe)) > 0) out.append(buf.data(), n);
  int status = pclose(pipe);
  if (output) *output = out;
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

std::string read_file(const std::filesystem::path& path) {
  std::error_code ec;
  return std::filesystem::exists(path, ec) ? read_whole_file(path) : std::string();
}

std::vector<std::string> fixture_names(bool greedy_only) {
  std::vector<std::string> names;
  const std::filesystem::path root = source_dir() / "tests" / "fixtures";
  if (!std::filesystem::exists(root)) return names;
  for (const auto& e : std::filesystem::directory_iterator(root)) {
    const std::filesystem::path expected = e.path() / "expected.json";
    if (!std::filesystem::exists(expected)) continue;
    if (greedy_only && read_file(expected).find("\"greedy\"") == std::string::npos) continue;
    names.push_back(e.path().filename().string());
  }
  std::sort(names.begin(), names.end());
  return names;
}

std::unique_ptr<Fixture> load_fixture(const std::string& name) {
  auto f = std::make_unique<Fixture>();
  f->name = name;
  f->dir = source_dir() / "tests" / "fixtures" / name;
  const std::string text = read_file(f->dir / "expected.json");
  f->expected.Parse(text.c_str(), text.size());
  EXPECT_FALSE(f->expected.HasParseError()) << name;
  return f;
}

std::vector<int32_t> ids_of(const rapidjson::Value& v) {
  std::vector<int32_t> out;
  for (const auto& x : v.GetArray()) out.push_back(x.GetInt());
  return out;
}

std::vector<std::vector<int32_t>> chunks_of(const rapidjson::Value& v) {
  std::vector<std::vector<int32_t>> out;
  for (const auto& c : v.GetArray()) out.push_back(ids_of(c));
  return out;
}

std::vector<int32_t> reference_greedy_tokens(const rapidjson::Value& greedy_case,
                                             const ModelConfig& config) {
  std::vector<int32_t> tokens = ids_of(greedy_case["tokens"]);
  const auto& eos = config.decoder.eos_token_ids;
  if (!tokens.empty() && std::find(eos.begin(), eos.end(), tokens.back()) != eos.end())
    tokens.pop_back();
  return tokens;
}

std::vector<int32_t> greedy(CepeModel& model, const std::vector<int32_t>& prompt,
                            const std::vector<std::vector<int32_t>>& chunks, int max_new) {
  SamplingOptions o;
  o.max_new_tokens = max_new;
  EncodedContext ctx;
  if (!chunks.empty()) ctx = model.encode(chunks);
  Sequence seq(model, nullptr, prompt, ctx, o);
  while (!seq.finished()) step_sequences(model, {&seq});
  return seq.tokens();
}

// Sequences stepped together (continuous batching) give what each gives alone, including a
// sequence without context in a batch whose others cross-attend, in each cross-attention mode
// and with the modes mixed in one batch (a absorbed, b cached: the absorbed rows are gathered).
void check_batched_steps(Device device, CrossAttentionMode mode_a, CrossAttentionMode mode_b) {
  auto f = load_fixture("gqa_cross_last2");
  auto backend = make_backend(device);
  auto model = CepeModel::load(f->dir, *backend);
  const auto& g = f->expected["greedy"];
  const auto prompt_a = ids_of(g["input_ids"]);
  const auto chunks_a = chunks_of(g["context_ids"]);
  const auto prompt_b = ids_of(f->expected["input_ids"]);
  const auto chunks_b = chunks_of(f->expected["context_ids"]);
  const std::vector<int32_t> prompt_c(prompt_b.begin(), prompt_b.begin() + 5);
  const int n = 8;
  const auto alone_a = greedy(*model, prompt_a, chunks_a, n);
  const auto alone_b = greedy(*model, prompt_b, chunks_b, n + 3);
  const auto alone_c = greedy(*model, prompt_c, {}, n);

  SamplingOptions o;
  o.max_new_tokens = n;
  model->set_cross_attention_mode(mode_a);
  Sequence a(*model, nullptr, prompt_a, model->encode(chunks_a), o);
  SamplingOptions ob = o;
  ob.max_new_tokens = n + 3;
  model->set_cross_attention_mode(mode_b);
  Sequence b(*model, nullptr, prompt_b, model->encode(chunks_b), ob);
  Sequence c(*model, nullptr, prompt_c, EncodedContext(), o);
  // c joins one step late, as a request arriving mid-batch would.
  step_sequences(*model, {&a, &b});
  while (!a.finished() || !b.finished() || !c.finished()) step_sequences(*model, {&a, &b, &c});
  EXPECT_EQ(a.tokens(), alone_a);
  EXPECT_EQ(b.tokens(), alone_b);
  EXPECT_EQ(c.tokens(), alone_c);
}

namespace {

constexpr double kUnitRoundoffF32 = 1.0 / (1 << 24);
constexpr double kLambda = 6.0;

// Summation lengths in one block: RMSNorm, q/k/v, scores, softmax + weighted sum, o, MLP.
int64_t stack_chain(const LlamaConfig& c, int64_t keys) {
  const int64_t d = c.hidden_size;
  return d + 3 * d + d / c.num_attention_heads + 2 * keys + d + 2 * d + c.intermediate_size;
}

int64_t longest(const std::vector<std::vector<int32_t>>& chunks) {
  size_t n = 0;
  for (const auto& c : chunks) n = std::max(n, c.size());
  return static_cast<int64_t>(n);
}

double two_evaluations(int64_t chain, double magnitude) {
  return 2.0 * kLambda * std::sqrt(static_cast<double>(chain)) * kUnitRoundoffF32 *
         std::max(1.0, magnitude);
}

}  // namespace

double float32_logit_bound(const ModelConfig& config, int64_t tokens,
                           const std::vector<std::vector<int32_t>>& chunks, double magnitude) {
  const LlamaConfig& dec = config.decoder;
  int64_t n = dec.num_hidden_layers * stack_chain(dec, tokens);
  int64_t context = 0;
  for (const auto& c : chunks) context += static_cast<int64_t>(c.size());
  if (config.is_cepe() && context > 0) {
    const LlamaConfig& enc = *config.encoder;
    n += enc.num_hidden_layers * stack_chain(enc, longest(chunks));
    const int64_t d = dec.hidden_size, e = config.encoder_hidden_size;
    n += config.num_cross_attn_layers *
         (d + d + 2 * e + d / dec.num_attention_heads + 2 * context + d);
  }
  return two_evaluations(n + 2 * dec.hidden_size, magnitude);  // + final norm and LM head
}

double float32_encoder_bound(const ModelConfig& config,
                             const std::vector<std::vector<int32_t>>& chunks, double magnitude) {
  const LlamaConfig& enc = *config.encoder;
  return two_evaluations(
      enc.num_hidden_layers * stack_chain(enc, longest(chunks)) + enc.hidden_size, magnitude);
}

double max_abs(const rapidjson::Value& rows) {
  double m = 0.0;
  for (const auto& row : rows.GetArray())
    for (const auto& v : row.GetArray()) m = std::max(m, std::fabs(v.GetDouble()));
  return m;
}

}  // namespace cepe::test
