// The C++ CEPE model against the PyTorch reference (tests/reference/, written from CEPE's official
// modeling code): logits within the float32 bound of test::float32_logit_bound (derived from the
// arithmetic: ~4e-4 on these fixtures) and identical greedy tokens on every committed fixture.
// The reference computes in F32 on the stored weights, so these runs keep F32 activations against
// bf16 weights (BackendOptions::bf16_activations = false); the bf16 GEMM, which rounds them, has
// its own test against the same reference below.
#include <gtest/gtest.h>
#include <rapidjson/document.h>

#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <functional>
#include <numeric>
#include <random>

#include "common/error.h"
#include "common/progress.h"
#include "engine/backend.h"
#include "engine/generation.h"
#include "engine/models/cepe_llama.h"
#include "engine/models/model_loader.h"
#include "engine/safetensors.h"
#include "test_util.h"

namespace fs = std::filesystem;
using namespace cepe;

namespace {

using test::chunks_of;
using test::float32_encoder_bound;
using test::float32_logit_bound;
using test::greedy;
using test::ids_of;
using test::load_fixture;
using test::max_abs;

double max_abs_diff(const float* got, const rapidjson::Value& rows, int64_t width) {
  double worst = 0.0;
  int64_t r = 0;
  for (const auto& row : rows.GetArray()) {
    EXPECT_EQ(static_cast<int64_t>(row.Size()), width);
    for (int64_t j = 0; j < width; ++j)
      worst = std::max(worst,
                       std::fabs(got[r * width + j] - row[static_cast<unsigned>(j)].GetDouble()));
    ++r;
  }
  return worst;
}

// Every fixture runs with each way of reading the encoder states: cached K/V; absorbed with the
// cost model's choice (decode steps absorbed, the longer prompts projected for the call); and
// absorbed for every row (the multi-row per-head GEMMs).
struct ModeCase {
  const char* name;
  CrossAttentionMode mode;
  int64_t absorbed_max_rows;
};
const ModeCase kModes[] = {{"cached", CrossAttentionMode::Cached, -1},
                           {"absorbed", CrossAttentionMode::Absorbed, -1},
                           {"absorbed_all_rows", CrossAttentionMode::Absorbed, 1 << 30}};

class ReferenceFixture : public ::testing::TestWithParam<std::tuple<std::string, ModeCase>> {
 protected:
  std::unique_ptr<test::Fixture> fixture() const { return load_fixture(std::get<0>(GetParam())); }
  std::unique_ptr<CepeModel> load(const test::Fixture& f, Backend& backend) const {
    auto model = CepeModel::load(f.dir, backend);
    const ModeCase& m = std::get<1>(GetParam());
    model->set_cross_attention_mode(m.mode, m.absorbed_max_rows);
    return model;
  }
};

// F32 activations whatever the weights (the reference's arithmetic).
std::unique_ptr<Backend> f32_arithmetic_backend() {
  BackendOptions o;
  o.bf16_activations = false;
  return make_backend(Device::CPU, o);
}

TEST_P(ReferenceFixture, LogitsMatchReference) {
  auto f = fixture();
  auto backend = f32_arithmetic_backend();
  auto model = load(*f, *backend);
  const auto& e = f->expected;
  const auto ids = ids_of(e["input_ids"]);
  const auto chunks = chunks_of(e["context_ids"]);
  auto state = model->new_state();
  if (!chunks.empty()) {
    EncodedContext ctx = model->encode(chunks);
    if (e.HasMember("encoder_states")) {
      Tensor states = backend->to_host_f32(ctx.states);
      const double d = max_abs_diff(states.data<float>(), e["encoder_states"], states.dim(1));
      EXPECT_LE(d, float32_encoder_bound(model->config(), chunks, max_abs(e["encoder_states"])))
          << "encoder states of " << f->name;
    }
    model->set_context(*state, ctx);
  }
  Tensor logits = model->forward(*state, ids, /*all_logits=*/true);
  ASSERT_EQ(logits.dim(0), static_cast<int64_t>(ids.size()));
  const double d = max_abs_diff(logits.data<float>(), e["logits"], logits.dim(1));
  const double bound = float32_logit_bound(model->config(), static_cast<int64_t>(ids.size()),
                                           chunks, max_abs(e["logits"]));
  EXPECT_LE(d, bound) << "max |Δlogit| for " << f->name;
  std::printf("[%s, %s] max |dlogit| = %.3g (bound %.3g)\n", f->name.c_str(),
              cross_attention_mode_name(model->cross_attention_mode()), d, bound);
}

// Greedy tokens through the generation loop, and the logits of every incremental (KV-cached)
// step against the reference's.
void check_greedy_case(CepeModel& model, const rapidjson::Value& g, const std::string& what) {
  const auto prompt = ids_of(g["input_ids"]);
  const auto chunks = chunks_of(g["context_ids"]);
  const int max_new = g["max_new_tokens"].GetInt();
  const auto expected_tokens = ids_of(g["tokens"]);
  EXPECT_EQ(greedy(model, prompt, chunks, max_new),
            test::reference_greedy_tokens(g, model.config()))
      << what;

  auto state = model.new_state();
  if (!chunks.empty()) model.set_context(*state, model.encode(chunks));
  std::vector<int32_t> step = prompt;
  const auto& step_logits = g["step_logits"];
  const double bound = float32_logit_bound(
      model.config(), static_cast<int64_t>(prompt.size() + expected_tokens.size()), chunks,
      max_abs(step_logits));
  for (rapidjson::SizeType i = 0; i < step_logits.Size(); ++i) {
    Tensor logits = model.forward(*state, step, /*all_logits=*/false);
    double d = 0.0;
    const auto& row = step_logits[i];
    EXPECT_EQ(static_cast<int64_t>(row.Size()), logits.dim(1));
    for (rapidjson::SizeType j = 0; j < row.Size(); ++j)
      d = std::max(d, std::fabs(logits.data<float>()[j] - row[j].GetDouble()));
    EXPECT_LE(d, bound) << what << " step " << i;
    if (i < expected_tokens.size()) step = {expected_tokens[i]};
  }
}

TEST_P(ReferenceFixture, GreedyTokensMatchReference) {
  auto f = fixture();
  auto backend = f32_arithmetic_backend();
  auto model = load(*f, *backend);
  check_greedy_case(*model, f->expected["greedy"], f->name + " greedy");
  if (f->expected.HasMember("greedy_extra"))
    for (const auto& g : f->expected["greedy_extra"].GetArray())
      check_greedy_case(*model, g, f->name + " greedy_extra");
}

INSTANTIATE_TEST_SUITE_P(
    Fixtures, ReferenceFixture,
    ::testing::Combine(::testing::ValuesIn(test::fixture_names(/*greedy_only=*/true)),
                       ::testing::ValuesIn(kModes)),
    [](const auto& info) { return std::get<0>(info.param) + "_" + std::get<1>(info.param).name; });

// A load reports its progress after every tensor, in bytes of the checkpoint that never go
// back, and ends at the store's total (which a model that reads every tensor also reaches by
// itself); a bar fed by it stays silent for a quick load and draws its last line after a slow one.
TEST(CepeModel, LoadReportsProgress) {
  auto f = load_fixture("gqa_cross_last2");
  const uint64_t total = WeightStore::open(f->dir).total_bytes();
  std::vector<std::pair<uint64_t, uint64_t>> calls;
  auto backend = make_backend(Device::CPU);
  auto model = CepeModel::load(f->dir, *backend,
                               [&](uint64_t done, uint64_t all) { calls.emplace_back(done, all); });
  ASSERT_GE(calls.size(), 3u);
  for (size_t i = 0; i < calls.size(); ++i) {
    EXPECT_EQ(calls[i].second, total) << "call " << i;
    if (i) {
      EXPECT_GE(calls[i].first, calls[i - 1].first) << "call " << i;
    }
  }
  EXPECT_EQ(calls.back().first, total);
  EXPECT_EQ(calls[calls.size() - 2].first, total) << "every tensor of the fixture is read";

  testing::internal::CaptureStderr();
  {
    ProgressBar quick("loading quick", "MB", 0);
    quick.quiet_for(std::chrono::seconds(60));
    quick.byte_counter()(5 << 20, 10 << 20);
    quick.finish();
    ProgressBar slow("loading slow", "MB", 0);
    slow.quiet_for(std::chrono::milliseconds(0));
    slow.byte_counter()(uint64_t{3} << 20, uint64_t{8} << 20);
    slow.finish();
  }
  const std::string err = testing::internal::GetCapturedStderr();
  EXPECT_EQ(err.find("loading quick"), std::string::npos) << err;
  EXPECT_NE(err.find("loading slow"), std::string::npos) << err;
  EXPECT_NE(err.find("3/8 MB"), std::string::npos) << err;
}

// The bf16 fixture with the default options: on CPUs with AVX-512 BF16, GEMMs of more than 16
// rows round the activations to bf16 (2^-9 relative per product) and multiply pairs with
// VDPBF16PS. The logits stay within the tolerance the CUDA backend's bf16-rounded GEMMs are held
// to on the same fixture (test_backends' k16BitLogitTolerance: rounded operands move these logits
// by ~0.08, a wrong kernel by far more than 0.1), the greedy tokens are the reference's, and the
// prompt's logits move (unless this CPU has no bf16 GEMM): the path is really taken.
TEST(CepeModel, Bf16ActivationsStayWithinRounding) {
  constexpr double kBf16LogitTolerance = 0.1;
  auto f = load_fixture("bf16");
  const auto& e = f->expected;
  const auto ids = ids_of(e["input_ids"]);
  const auto chunks = chunks_of(e["context_ids"]);
  auto logits_with = [&](Backend& backend) {
    auto model = CepeModel::load(f->dir, backend);
    auto state = model->new_state();
    model->set_context(*state, model->encode(chunks));
    return model->forward(*state, ids, /*all_logits=*/true);
  };
  auto rounding = make_backend(Device::CPU);
  auto exact = f32_arithmetic_backend();
  const Tensor got = logits_with(*rounding), f32 = logits_with(*exact);
  const double d = max_abs_diff(got.data<float>(), e["logits"], got.dim(1));
  EXPECT_LE(d, kBf16LogitTolerance) << "bf16 fixture, bf16 activations";
  double moved = 0;
  for (int64_t i = 0; i < got.numel(); ++i)
    moved = std::max(moved, double(std::fabs(got.data<float>()[i] - f32.data<float>()[i])));
  const bool has_gemm = rounding->describe().find("bf16 weights: ") != std::string::npos;
  if (has_gemm) {
    EXPECT_GT(moved, 0.0) << "the bf16 GEMM did not run";
  }
  std::printf(
      "[bf16, %s] max |dlogit| vs reference %.3g (tolerance %.2g), vs F32 activations %.3g\n",
      has_gemm ? "bf16 GEMM activations" : "no bf16 GEMM on this CPU", d, kBf16LogitTolerance,
      moved);
  const auto& g = e["greedy"];
  auto tokens_with = [&](Backend& backend) {
    auto model = CepeModel::load(f->dir, backend);
    return greedy(*model, ids_of(g["input_ids"]), chunks_of(g["context_ids"]),
                  g["max_new_tokens"].GetInt());
  };
  EXPECT_EQ(tokens_with(*rounding), tokens_with(*exact)) << "bf16 greedy, bf16 activations";
}

using test::check_batched_steps;

TEST(CepeModel, BatchedStepsEqualSingleSequences) {
  check_batched_steps(Device::CPU, CrossAttentionMode::Cached, CrossAttentionMode::Cached);
}

TEST(CepeModel, BatchedAbsorbedStepsEqualSingleSequences) {
  check_batched_steps(Device::CPU, CrossAttentionMode::Absorbed, CrossAttentionMode::Absorbed);
}

TEST(CepeModel, BatchMixingCrossAttentionModes) {
  check_batched_steps(Device::CPU, CrossAttentionMode::Absorbed, CrossAttentionMode::Cached);
}

// Absorbed: a request holds its encoder states, not per-layer keys and values.
TEST(CepeModel, AbsorbedStateHoldsOnlyEncoderStates) {
  auto f = load_fixture("gqa_cross_last2");
  auto backend = make_backend(Device::CPU);
  auto model = CepeModel::load(f->dir, *backend);
  const EncodedContext ctx = model->encode(chunks_of(f->expected["context_ids"]));
  auto cached = model->new_state(1);
  model->set_context(*cached, ctx);
  model->set_cross_attention_mode(CrossAttentionMode::Absorbed);
  auto absorbed = model->new_state(1);
  model->set_context(*absorbed, ctx);
  const auto& c = model->config().decoder;
  const size_t self_kv = 2 * size_t(c.num_hidden_layers) * c.num_key_value_heads * c.head_dim * 4;
  const size_t cross_kv = 2 * size_t(model->config().num_cross_attn_layers) * ctx.tokens() *
                          c.num_key_value_heads * c.head_dim * 4;
  EXPECT_EQ(cached->cache_bytes(), self_kv + cross_kv);
  EXPECT_EQ(absorbed->cache_bytes(), self_kv + ctx.states.nbytes());
  EXPECT_THROW(parse_cross_attention_mode("fast", Device::CPU, "--cross-attention"), Error);
}

// With an F16 KV cache, cached cross-attention keeps the keys and values projected for a request
// as F16 too, and absorbed cross-attention its encoder states: the state holds half the bytes of
// an F32 one (self and cross caches alike), and the logits move within the rounding's bound.
// Keys and values (or E) rounded once (2^-11 relative, doubled for its propagation as in
// QuantNll: 2^-10) move a logit by at most 2^-10 max|logit| to first order. Absorbed runs with
// its default crossover, for every row (the shared-head decode form) and for none (E widened for
// the per-call projection).
TEST(CepeModel, F16CacheRoundsCrossKeysAndValues) {
  auto f = load_fixture("gqa_cross_last2");
  auto backend = make_backend(Device::CPU);
  auto model = CepeModel::load(f->dir, *backend);
  ASSERT_EQ(model->cross_attention_mode(), CrossAttentionMode::Cached);
  const auto ids = ids_of(f->expected["input_ids"]);
  const EncodedContext ctx = model->encode(chunks_of(f->expected["context_ids"]));
  std::vector<ModeCase> modes(std::begin(kModes), std::end(kModes));
  modes.push_back({"absorbed_no_rows", CrossAttentionMode::Absorbed, 0});
  for (const ModeCase& m : modes) {
    model->set_cross_attention_mode(m.mode, m.absorbed_max_rows);
    auto run = [&](DType kv, size_t* bytes) {
      model->set_kv_cache_dtype(kv);
      auto state = model->new_state(static_cast<int64_t>(ids.size()));
      model->set_context(*state, ctx);
      Tensor logits = model->forward(*state, ids, /*all_logits=*/true);
      *bytes = state->cache_bytes();
      return logits;
    };
    size_t bytes32 = 0, bytes16 = 0;
    const Tensor l32 = run(DType::F32, &bytes32), l16 = run(DType::F16, &bytes16);
    EXPECT_EQ(2 * bytes16, bytes32) << m.name << ": an F16 state holds half the bytes";
    double max_logit = 0, moved = 0;
    for (int64_t i = 0; i < l32.numel(); ++i) {
      max_logit = std::max(max_logit, double(std::fabs(l32.data<float>()[i])));
      moved = std::max(moved, double(std::fabs(l16.data<float>()[i] - l32.data<float>()[i])));
    }
    EXPECT_LE(moved, std::ldexp(1.0, -10) * max_logit) << m.name;
    EXPECT_GT(moved, 0.0) << m.name << ": nothing was rounded";
  }
  model->set_cross_attention_mode(CrossAttentionMode::Cached);
  model->set_kv_cache_dtype(DType::F32);
}

fs::path copy_fixture(const std::string& name, const std::string& tag) {
  const fs::path dst = test::temp_dir(tag);
  fs::copy(test::source_dir() / "tests" / "fixtures" / name, dst,
           fs::copy_options::recursive | fs::copy_options::overwrite_existing);
  return dst;
}

void rewrite_without(const fs::path& dir, const std::string& drop, const std::string& reshape) {
  std::vector<std::pair<std::string, Tensor>> tensors;
  {
    WeightStore store = WeightStore::open(dir);
    for (const auto& name : store.names()) {
      if (name == drop) continue;
      Tensor t = store.get(name);
      Tensor copy = Tensor::empty(t.shape(), t.dtype());
      std::memcpy(copy.raw(), t.raw(), t.nbytes());
      if (name == reshape) copy = copy.reshape({t.numel()});
      tensors.emplace_back(name, copy);
    }
  }
  write_safetensors(dir / "model.safetensors", tensors);
}

std::string load_error(const fs::path& dir) {
  auto backend = make_backend(Device::CPU);
  try {
    CepeModel::load(dir, *backend);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

TEST(CepeModelErrors, MissingTensorIsNamed) {
  const fs::path dir = copy_fixture("gqa_cross_last2", "missing");
  rewrite_without(dir, "model.layers.2.cross_attn.k_proj.weight", "");
  const std::string msg = load_error(dir);
  EXPECT_NE(msg.find("model.layers.2.cross_attn.k_proj.weight"), std::string::npos) << msg;
}

TEST(CepeModelErrors, WrongShapeIsNamed) {
  const fs::path dir = copy_fixture("gqa_cross_last2", "shape");
  rewrite_without(dir, "", "encoder.layers.0.mlp.up_proj.weight");
  const std::string msg = load_error(dir);
  EXPECT_NE(msg.find("encoder.layers.0.mlp.up_proj.weight"), std::string::npos) << msg;
  EXPECT_NE(msg.find("shape"), std::string::npos) << msg;
}

TEST(CepeModelErrors, UnsupportedConfigIsNamed) {
  const fs::path dir = copy_fixture("linear_tied", "config");
  std::string cfg = test::read_file(dir / "config.json");
  const std::string key = "\"num_cross_attn_hidden_states\": 1";
  ASSERT_NE(cfg.find(key), std::string::npos);
  cfg.replace(cfg.find(key), key.size(), "\"num_cross_attn_hidden_states\": 2");
  std::ofstream(dir / "config.json") << cfg;
  const std::string msg = load_error(dir);
  EXPECT_NE(msg.find("num_cross_attn_hidden_states"), std::string::npos) << msg;
}

// load_model (the CLI's and the server's one load sequence) checks every setting and the
// tokenizer before it reads a weight, and names each setting as its caller wrote it. The model
// directory here has config.json and no weights: a settings error that came after the load
// would read "no *.safetensors" instead.
std::string settings_error(ModelLoadSettings s) {
  s.setting_name = [](std::string_view key) { return "config: '" + std::string(key) + "'"; };
  try {
    load_model(s);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

TEST(CepeModelErrors, LoaderChecksSettingsBeforeWeights) {
  const fs::path dir = test::temp_dir("settings");
  fs::copy_file(test::source_dir() / "tests/fixtures/gqa_cross_last2/config.json",
                dir / "config.json");
  const ModelLoadSettings base = [&] {
    ModelLoadSettings s;
    s.dir = dir;
    s.need_tokenizer = false;
    return s;
  }();
  const struct {
    const char* field;
    std::function<void(ModelLoadSettings&)> set;
    const char* expected;
  } cases[] = {
      {"model", [&](auto& s) { s.dir = dir / "nope"; }, "config: 'model'"},
      {"weights", [](auto& s) { s.weights = "f33"; }, "config: 'weights'"},
      {"cross_attention", [](auto& s) { s.cross_attention = "both"; }, "config: 'cross_attention'"},
      {"kv_cache", [](auto& s) { s.kv_cache = "f8"; }, "config: 'kv_cache'"},
      // Before the device is set up (here, without a GPU, that would fail first).
      {"kv_cache on cuda",
       [](auto& s) {
         s.device = "cuda";
         s.kv_cache = "f8";
       },
       "config: 'kv_cache'"},
      {"stored_weights", [](auto& s) { s.stored_weights = "mmap"; }, "config: 'stored_weights'"},
      {"stored_weights mapped, converted",
       [](auto& s) {
         s.stored_weights = "mapped";
         s.weights = "q4_0";
       },
       "needs weights 'stored' (got 'q4_0'"},
      {"tokenizer", [](auto& s) { s.need_tokenizer = true; }, "tokenizer.model not found"},
  };
  for (const auto& c : cases) {
    ModelLoadSettings s = base;
    c.set(s);
    const std::string msg = settings_error(s);
    EXPECT_NE(msg.find(c.expected), std::string::npos) << c.field << ": " << msg;
  }
  // Valid settings reach the weights, which this directory lacks.
  const std::string msg = settings_error(base);
  EXPECT_NE(msg.find("safetensors"), std::string::npos) << msg;
}

// With a model to load, the settings are applied and a missing tokenizer that is not needed
// leaves it null.
TEST(CepeModel, LoaderAppliesSettings) {
  auto f = load_fixture("gqa_cross_last2");
  ModelLoadSettings s;
  s.dir = f->dir;
  s.need_tokenizer = false;
  s.cross_attention = "cached";
  s.kv_cache = "f16";
  LoadedModel loaded = load_model(s);
  ASSERT_TRUE(loaded.model && loaded.backend);
  EXPECT_EQ(loaded.tokenizer, nullptr);
  EXPECT_GT(loaded.weights_load_seconds, 0.0);
  EXPECT_EQ(loaded.model->cross_attention_mode(), CrossAttentionMode::Cached);
  EXPECT_EQ(loaded.model->kv_cache_dtype(), DType::F16);
  s.cross_attention = "absorbed";
  s.kv_cache = "f32";
  loaded = load_model(s);
  EXPECT_EQ(loaded.model->cross_attention_mode(), CrossAttentionMode::Absorbed);
  EXPECT_EQ(loaded.model->kv_cache_dtype(), DType::F32);
  // Matrices read in place give the tokens of copied ones (the same bytes, elsewhere).
  const auto& g = f->expected["greedy"];
  const auto prompt = ids_of(g["input_ids"]);
  const auto chunks = chunks_of(g["context_ids"]);
  const auto tokens = greedy(*loaded.model, prompt, chunks, g["max_new_tokens"].GetInt());
  EXPECT_EQ(tokens, test::reference_greedy_tokens(g, loaded.model->config()));
  EXPECT_EQ(loaded.backend->describe().find("read in place"), std::string::npos)
      << loaded.backend->describe();
  s.stored_weights = "mapped";
  LoadedModel mapped = load_model(s);
  EXPECT_NE(mapped.backend->describe().find(" MB of stored weights read in place"),
            std::string::npos)
      << mapped.backend->describe();
  EXPECT_EQ(greedy(*mapped.model, prompt, chunks, g["max_new_tokens"].GetInt()), tokens);
}

TEST(CepeModelErrors, BadTokensAndChunks) {
  auto backend = make_backend(Device::CPU);
  auto model = CepeModel::load(test::source_dir() / "tests/fixtures/gqa_cross_last2", *backend);
  auto state = model->new_state();
  EXPECT_THROW(model->forward(*state, {1, 100000}, false), Error);
  EXPECT_THROW(model->encode({{1, 2}, {}}), Error);
  EXPECT_THROW(model->forward(*state, {}, false), Error);
}

// Greedy choice is the first largest logit (torch.argmax), and token_logprob's ranking is a full
// sort's (ties: lower id first), on sizes around the selection's 16-lane and 64-wide blocks, with
// planted ties. The log-probabilities are within the float sum's bound of a double log-softmax:
// n values summed in 16 or 8 lanes (or one) err by at most n/lanes·2^-24 relative, plus ~2 ulp
// per e^x; 32000 in one lane gives 2e-3 at worst, so 4e-3 covers every kernel level.
TEST(Sampler, GreedyAndLogprobRankingMatchAFullSort) {
  std::mt19937 rng(3);
  std::normal_distribution<float> normal(0.0f, 2.0f);
  for (int vocab : {1, 2, 15, 16, 17, 63, 64, 65, 100, 1000, 32000}) {
    for (int trial = 0; trial < 20; ++trial) {
      SCOPED_TRACE("vocab " + std::to_string(vocab) + ", trial " + std::to_string(trial));
      std::vector<float> logits(vocab);
      for (auto& x : logits) x = std::round(normal(rng) * 4) / 4;  // coarse: many ties
      if (trial % 3 == 0) logits[rng() % vocab] = logits[rng() % vocab] = 9.0f;  // tied maxima
      std::vector<int32_t> order(vocab);
      std::iota(order.begin(), order.end(), 0);
      std::stable_sort(order.begin(), order.end(),
                       [&](int32_t a, int32_t b) { return logits[a] > logits[b]; });
      Sampler greedy_sampler{SamplingOptions{}};
      ASSERT_EQ(greedy_sampler.sample(logits.data(), vocab), order[0]);
      double mx = logits[order[0]], sum = 0;
      for (float x : logits) sum += std::exp(x - mx);
      const double log_z = mx + std::log(sum);
      const int top = static_cast<int>(rng() % 25);
      const int32_t id = static_cast<int32_t>(rng() % vocab);
      const TokenLogprob lp = token_logprob(logits.data(), vocab, id, top);
      EXPECT_EQ(lp.id, id);
      EXPECT_NEAR(lp.logprob, logits[id] - log_z, 4e-3);
      ASSERT_EQ(lp.top.size(), static_cast<size_t>(std::min(top, vocab)));
      for (size_t r = 0; r < lp.top.size(); ++r) {
        EXPECT_EQ(lp.top[r].first, order[r]) << "rank " << r;
        EXPECT_NEAR(lp.top[r].second, logits[order[r]] - log_z, 4e-3) << "rank " << r;
      }
    }
  }
}

TEST(Rope, InverseFrequenciesAndDynamicBase) {
  const auto inv = rope_inv_freq(10000.0, 8);
  ASSERT_EQ(inv.size(), 4u);
  EXPECT_FLOAT_EQ(inv[0], 1.0f);
  EXPECT_NEAR(inv[2], 1.0 / 100.0, 1e-7);
  LlamaConfig c;
  c.head_dim = 128;
  c.rope_theta = 10000.0;
  c.max_position_embeddings = 4096;
  c.rope_scaling = RopeScalingType::Dynamic;
  c.rope_scaling_factor = 2.0;
  EXPECT_EQ(rope_effective_base(c, 4096), 10000.0);
  // 2 * 8192 / 4096 - 1 = 3, raised to 128/126.
  EXPECT_NEAR(rope_effective_base(c, 8192), 10000.0 * std::pow(3.0, 128.0 / 126.0), 1e-6);
}

}  // namespace
