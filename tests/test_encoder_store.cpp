// The encoder-state store (index/encoder_store) and the component that reads it
// (qa/encoder_states): an f32 store gives exactly the live states, logits and greedy tokens on
// the reference fixtures (a K/V store: exactly the live cached-form logits); bf16/f16/q8_0 stay
// within their derived element bounds, a stated logit bound and the same greedy tokens; stores of
// another model, tokenizer or chunk length are refused with the reason; an interrupted build
// resumes to the same bytes; the LRU cache.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>

#include "common/error.h"
#include "engine/backend.h"
#include "engine/generation.h"
#include "engine/models/cepe_llama.h"
#include "index/encoder_store.h"
#include "qa/encoder_states.h"
#include "test_util.h"

namespace fs = std::filesystem;
using namespace cepe;
using index::StateDType;

namespace {

// The fixtures have no tokenizer.model (their ids are given); the fingerprint hashes the file's
// bytes, so a copy of the fixture with stand-in bytes gives a model directory with one.
fs::path model_with_tokenizer(const std::string& fixture, const std::string& tokenizer_bytes) {
  const fs::path dir = test::temp_dir("encstore_" + fixture);
  for (const auto& e : fs::directory_iterator(test::source_dir() / "tests/fixtures" / fixture))
    fs::copy_file(e.path(), dir / e.path().filename(), fs::copy_options::overwrite_existing);
  std::ofstream(dir / "tokenizer.model", std::ios::binary) << tokenizer_bytes;
  return dir;
}

std::vector<std::string> ids_for(size_t n) {
  std::vector<std::string> ids;
  for (size_t i = 0; i < n; ++i) ids.push_back("passage-" + std::to_string(i));
  return ids;
}

// Builds a store of `chunks` (row i = passage "passage-i") as `cepe index encode` does: all
// chunks in one packed pass (`packed`, as the request packs them) or every chunk alone.
fs::path build_store(CepeModel& model, const index::EncoderFingerprint& fp,
                     const std::vector<std::vector<int32_t>>& chunks, const fs::path& index_dir,
                     bool packed = true) {
  std::vector<index::StoredPassageInfo> infos;
  const auto ids = ids_for(chunks.size());
  for (size_t i = 0; i < chunks.size(); ++i)
    infos.push_back({index::passage_id_hash(ids[i]), static_cast<uint32_t>(chunks[i].size()),
                     index::chunk_token_hash(chunks[i])});
  const fs::path path = index::encoder_store_path(index_dir, fp);
  index::EncoderStoreWriter w(path, fp, infos);
  if (packed) {
    EncodedContext ctx = model.encode(chunks);
    Tensor host = model.backend().to_host_f32(ctx.states);
    int64_t at = 0;
    for (const auto& c : chunks) {
      w.append(host.data<float>() + at * host.dim(1), static_cast<int64_t>(c.size()));
      at += static_cast<int64_t>(c.size());
    }
    w.commit();
  } else {
    for (const auto& c : chunks) {
      EncodedContext ctx = model.encode({c});
      Tensor host = model.backend().to_host_f32(ctx.states);
      w.append(host.data<float>(), ctx.tokens());
      w.commit();
    }
  }
  w.finish();
  return path;
}

// A context's states as one host array, in order (its parts joined, or its one tensor).
std::vector<float> host_rows(const EncodedContext& ctx) {
  std::vector<float> out;
  for (const Tensor& block : ctx.parts.empty() ? std::vector<Tensor>{ctx.states} : ctx.parts)
    out.insert(out.end(), block.data<float>(), block.data<float>() + block.numel());
  return out;
}

std::vector<int32_t> greedy_with(CepeModel& model, const std::vector<int32_t>& prompt,
                                 const EncodedContext& ctx, int max_new) {
  SamplingOptions o;
  o.max_new_tokens = max_new;
  Sequence seq(model, nullptr, prompt, ctx, o);
  while (!seq.finished()) step_sequences(model, {&seq});
  return seq.tokens();
}

Tensor logits_with(CepeModel& model, const std::vector<int32_t>& ids, const EncodedContext& ctx) {
  auto state = model.new_state();
  model.set_context(*state, ctx);
  return model.forward(*state, ids, /*all_logits=*/true);
}

// Unit roundoff of each dtype (round to nearest): |x̂ - x| <= u |x| for values in the normal
// range; Q8_0 instead bounds the error by half a step of its block, see element_bound().
double unit_roundoff(StateDType t) {
  switch (t) {
    case StateDType::F32:
      return 0.0;
    case StateDType::BF16:
      return std::ldexp(1.0, -8);
    case StateDType::F16:
      return std::ldexp(1.0, -11);
    case StateDType::Q8_0:
      return 1.0 / 254.0;
  }
  return 1.0;
}

// Logits read through a store against live encoding's: bit-identical for f32; otherwise the
// logit error is first order in the stored values' rounding, |Δlogit| <~ u · S with S = max|logit|
// times the network's amplification, and we state |Δlogit| <= 8 u max|logit| (u: unit_roundoff).
// Returns max |Δlogit| and max |logit| for the report.
std::pair<double, double> expect_store_logits(const Tensor& stored, const Tensor& live,
                                              StateDType t, const std::string& what) {
  if (stored.numel() != live.numel()) {
    ADD_FAILURE() << what << ": " << stored.numel() << " logits against " << live.numel();
    return {INFINITY, 0.0};
  }
  double max_abs = 0.0, max_diff = 0.0;
  for (int64_t i = 0; i < live.numel(); ++i) {
    max_abs = std::max(max_abs, std::fabs(double(live.data<float>()[i])));
    max_diff =
        std::max(max_diff, std::fabs(double(stored.data<float>()[i]) - live.data<float>()[i]));
  }
  if (t == StateDType::F32)
    EXPECT_EQ(std::memcmp(stored.raw(), live.raw(), live.nbytes()), 0)
        << what << ": f32 logits differ from live encoding (max " << max_diff << ")";
  else
    EXPECT_LE(max_diff, 8.0 * unit_roundoff(t) * max_abs) << what;
  return {max_diff, max_abs};
}

struct FixtureCase {
  std::string fixture;
  StateDType dtype;
};

class StoreOnFixture : public ::testing::TestWithParam<FixtureCase> {};

TEST_P(StoreOnFixture, StatesLogitsAndGreedyAgainstLive) {
  const FixtureCase& c = GetParam();
  auto f = test::load_fixture(c.fixture);
  const auto& g = f->expected["greedy"];
  const auto chunks = test::chunks_of(g["context_ids"]);
  if (chunks.empty()) GTEST_SKIP() << c.fixture << " has no context chunks";
  const fs::path model_dir = model_with_tokenizer(c.fixture, "tokenizer A");
  auto backend = make_backend(Device::CPU);
  auto model = CepeModel::load(model_dir, *backend);
  model->set_cross_attention_mode(CrossAttentionMode::Absorbed);
  const auto fp = index::encoder_fingerprint(model_dir, model->config(), 256, c.dtype);
  const fs::path index_dir = test::temp_dir("encstore_index_" + c.fixture);
  const fs::path path = build_store(*model, fp, chunks, index_dir);

  index::StoreLookup found = index::find_encoder_store(index_dir, fp);
  ASSERT_TRUE(found.store) << path;
  EXPECT_TRUE(found.rejected.empty());
  qa::EncoderStates states(*model);
  states.use_store(found.store);
  const auto ids = ids_for(chunks.size());
  const EncodedContext stored = states.encode(ids, chunks);
  EXPECT_EQ(states.counters().store_hits.load(), chunks.size());
  EXPECT_EQ(states.counters().live_passages.load(), 0u);
  const EncodedContext live = model->encode(chunks);
  ASSERT_EQ(stored.tokens(), live.tokens());
  ASSERT_EQ(stored.chunk_lengths, live.chunk_lengths);

  // On the CPU every passage is its own part. An f32 store's parts are read-only views of the
  // mapped file itself (no per-request copy); other dtypes are decoded into request memory.
  const int64_t width = live.states.dim(1);
  ASSERT_EQ(stored.parts.size(), chunks.size());
  const auto* file_begin = reinterpret_cast<const char*>(found.store->f32_data(0));
  std::vector<float> joined;
  for (size_t i = 0; i < stored.parts.size(); ++i) {
    const Tensor& part = stored.parts[i];
    ASSERT_EQ(part.dim(0), static_cast<int64_t>(chunks[i].size()));
    const auto* at = static_cast<const char*>(part.raw());
    if (c.dtype == StateDType::F32) {
      EXPECT_TRUE(part.file_backed()) << "passage " << i;
      EXPECT_TRUE(at >= file_begin && at + part.nbytes() <= file_begin + found.store->file_bytes())
          << "passage " << i << " was copied out of the store";
    } else {
      EXPECT_FALSE(part.file_backed()) << "passage " << i;
    }
    joined.insert(joined.end(), part.data<float>(), part.data<float>() + part.numel());
  }
  {  // What a request holds for cross-attention: nothing of its own with an f32 store.
    auto state = model->new_state(1);
    model->set_context(*state, stored);
    EXPECT_EQ(state->encoder_state_bytes(), c.dtype == StateDType::F32 ? 0u : live.states.nbytes());
  }
  const float* a = joined.data();
  const float* b = live.states.data<float>();
  double worst_rel = 0.0;
  for (int64_t r = 0; r < live.tokens(); ++r) {
    for (int64_t blk = 0; blk < width; blk += 32) {
      double amax = 0.0;
      for (int64_t j = blk; j < std::min(width, blk + 32); ++j)
        amax = std::max(amax, std::fabs(double(b[r * width + j])));
      for (int64_t j = blk; j < std::min(width, blk + 32); ++j) {
        const double x = b[r * width + j], err = std::fabs(a[r * width + j] - x);
        double bound = 0.0;
        if (c.dtype == StateDType::Q8_0)
          bound = amax / 254.0 * (1.0 + std::ldexp(1.0, -10));  // d/2, d rounded to F16
        else
          bound = unit_roundoff(c.dtype) * std::fabs(x) + 6e-8;  // + F16's subnormal step
        ASSERT_LE(err, bound) << c.fixture << " state [" << r << ", " << j << "]";
        if (amax > 0) worst_rel = std::max(worst_rel, err / amax);
      }
    }
  }

  // Logits: bit-identical for f32, else within 8 u max|logit| (expect_store_logits).
  const auto prompt = test::ids_of(f->expected["input_ids"]);
  const Tensor lg_store = logits_with(*model, prompt, stored);
  const Tensor lg_live = logits_with(*model, prompt, live);
  const auto [max_diff, max_abs] =
      expect_store_logits(lg_store, lg_live, c.dtype, c.fixture + " states store");
  std::printf("[%s %s] max |dstate|/blockmax %.3g, max |dlogit| %.3g (max |logit| %.3g)\n",
              c.fixture.c_str(), index::state_dtype_name(c.dtype), worst_rel, max_diff, max_abs);

  // Greedy: the reference's tokens.
  const auto expected = test::reference_greedy_tokens(g, model->config());
  const auto greedy_prompt = test::ids_of(g["input_ids"]);
  const int max_new = g["max_new_tokens"].GetInt();
  EXPECT_EQ(greedy_with(*model, greedy_prompt, stored, max_new), expected) << c.fixture;
  EXPECT_EQ(greedy_with(*model, greedy_prompt, live, max_new), expected) << c.fixture;
}

std::vector<FixtureCase> fixture_cases() {
  std::vector<FixtureCase> out;
  for (const auto& name : test::fixture_names(/*greedy_only=*/true)) {
    const std::string cfg =
        test::read_file(test::source_dir() / "tests/fixtures" / name / "config.json");
    if (cfg.find("encoder_config") == std::string::npos) continue;  // plain LLaMA
    for (StateDType t : {StateDType::F32, StateDType::BF16, StateDType::F16, StateDType::Q8_0})
      out.push_back({name, t});
  }
  return out;
}

INSTANTIATE_TEST_SUITE_P(Fixtures, StoreOnFixture, ::testing::ValuesIn(fixture_cases()),
                         [](const auto& info) {
                           return info.param.fixture + "_" +
                                  index::state_dtype_name(info.param.dtype);
                         });

// ---------------------------------------------------------------------------------------------
// K/V stores: every cross layer's projected keys and values, read in place on the CPU.

// Builds a K/V store of `chunks` as `cepe index encode --layout kv` does: one packed encoder
// pass, then each chunk's keys and values projected as set_context projects them.
fs::path build_kv_store(CepeModel& model, const index::EncoderFingerprint& fp,
                        const std::vector<std::vector<int32_t>>& chunks,
                        const fs::path& index_dir) {
  std::vector<index::StoredPassageInfo> infos;
  const auto ids = ids_for(chunks.size());
  for (size_t i = 0; i < chunks.size(); ++i)
    infos.push_back({index::passage_id_hash(ids[i]), static_cast<uint32_t>(chunks[i].size()),
                     index::chunk_token_hash(chunks[i])});
  const fs::path path = index::encoder_store_path(index_dir, fp);
  index::EncoderStoreWriter w(path, fp, infos);
  const EncodedContext ctx = model.encode(chunks);
  int64_t at = 0;
  for (const auto& c : chunks) {
    const auto n = static_cast<int64_t>(c.size());
    const std::vector<float> kv =
        qa::stored_kv_values(model.backend(), model.project_chunk(ctx.states.rows(at, n)));
    EXPECT_EQ(kv.size(), static_cast<size_t>(n * fp.token_values()));
    w.append(kv.data(), n);
    at += n;
  }
  w.commit();
  w.finish();
  return path;
}

class KvStoreOnFixture : public ::testing::TestWithParam<FixtureCase> {};

// With an f32 K/V store, logits are bit-identical to live encoding in the cached form (the
// keys and values are the same numbers, attended as the same per-passage blocks) and the greedy
// tokens are the reference's; other dtypes round keys and values once: the logit error is first
// order in that rounding, bounded as for the states store (8 u max|logit|), same greedy tokens.
TEST_P(KvStoreOnFixture, LogitsAndGreedyAgainstLive) {
  const FixtureCase& c = GetParam();
  auto f = test::load_fixture(c.fixture);
  const auto& g = f->expected["greedy"];
  const auto chunks = test::chunks_of(g["context_ids"]);
  if (chunks.empty()) GTEST_SKIP() << c.fixture << " has no context chunks";
  const fs::path model_dir = model_with_tokenizer(c.fixture, "tokenizer A");
  auto backend = make_backend(Device::CPU);
  auto model = CepeModel::load(model_dir, *backend);
  // The stored form is read as cached keys and values whatever the mode; absorbed here shows it.
  model->set_cross_attention_mode(CrossAttentionMode::Absorbed);
  const auto fp = index::cross_kv_fingerprint(model_dir, model->config(), 256, c.dtype);
  const auto fp_states = index::encoder_fingerprint(model_dir, model->config(), 256, c.dtype);
  const fs::path index_dir = test::temp_dir("kvstore_index_" + c.fixture);
  const fs::path path = build_kv_store(*model, fp, chunks, index_dir);
  {  // A run that cannot read K/V stores (a GPU) reports it and does not use it.
    const index::StoreLookup none = index::find_encoder_store(index_dir, fp_states);
    EXPECT_FALSE(none.store);
    ASSERT_EQ(none.rejected.size(), 1u);
    EXPECT_NE(none.rejected[0].find("cross K/V store"), std::string::npos) << none.rejected[0];
  }
  index::StoreLookup found = index::find_encoder_store(index_dir, fp_states, &fp);
  ASSERT_TRUE(found.store) << path;
  ASSERT_EQ(found.store->fingerprint().layout, index::StoreLayout::CrossKV);
  qa::EncoderStates states(*model);
  states.use_store(found.store);
  const EncodedContext stored = states.encode(ids_for(chunks.size()), chunks);
  EXPECT_EQ(states.counters().store_hits.load(), chunks.size());
  EXPECT_EQ(states.counters().live_passages.load(), 0u);
  ASSERT_TRUE(stored.has_projected());
  ASSERT_EQ(stored.projected.size(), chunks.size());
  // f32 and f16 K/V stores are read in place (the CPU attention widens F16 rows as it reads
  // them); bf16 and q8_0 are decoded to F32 per request.
  const bool in_place = c.dtype == StateDType::F32 || c.dtype == StateDType::F16;
  const char* file_begin = c.dtype == StateDType::F16
                               ? reinterpret_cast<const char*>(found.store->f16_data(0))
                               : reinterpret_cast<const char*>(found.store->f32_data(0));
  for (size_t i = 0; i < chunks.size(); ++i)
    for (const Tensor& k : stored.projected[i].k) {
      if (!k.defined()) continue;
      ASSERT_EQ(k.dim(0), static_cast<int64_t>(chunks[i].size()));
      const auto* at = static_cast<const char*>(k.raw());
      if (in_place)
        EXPECT_TRUE(k.file_backed() && at >= file_begin &&
                    at + k.nbytes() <= file_begin + found.store->file_bytes())
            << "passage " << i << " was copied out of the store";
      else
        EXPECT_FALSE(k.file_backed());
    }

  const EncodedContext live = model->encode(chunks);
  auto cached_model = CepeModel::load(model_dir, *backend);
  cached_model->set_cross_attention_mode(CrossAttentionMode::Cached);
  {  // What a request holds for cross-attention: nothing of its own with an f32 store.
    auto with_store = model->new_state(1), with_live = cached_model->new_state(1),
         bare = model->new_state(1);
    model->set_context(*with_store, stored);
    cached_model->set_context(*with_live, live);
    const size_t cross = with_live->cache_bytes() - bare->cache_bytes();
    EXPECT_GT(cross, 0u);
    EXPECT_EQ(with_store->cache_bytes() - bare->cache_bytes(), in_place ? 0u : cross);
  }
  const auto prompt = test::ids_of(f->expected["input_ids"]);
  const Tensor lg_store = logits_with(*model, prompt, stored);
  const Tensor lg_live = logits_with(*cached_model, prompt, live);
  const auto [max_diff, max_abs] =
      expect_store_logits(lg_store, lg_live, c.dtype, c.fixture + " K/V store");
  std::printf("[%s kv %s] max |dlogit| %.3g (max |logit| %.3g)\n", c.fixture.c_str(),
              index::state_dtype_name(c.dtype), max_diff, max_abs);

  const auto expected = test::reference_greedy_tokens(g, model->config());
  const auto greedy_prompt = test::ids_of(g["input_ids"]);
  const int max_new = g["max_new_tokens"].GetInt();
  EXPECT_EQ(greedy_with(*model, greedy_prompt, stored, max_new), expected) << c.fixture;

  // Passages missing from the store are encoded live and projected per request beside the
  // stored ones: one more chunk (a repeat of the first under another id).
  std::vector<std::vector<int32_t>> more = chunks;
  more.push_back(chunks[0]);
  auto more_ids = ids_for(chunks.size());
  more_ids.push_back("not-in-store");
  const EncodedContext mixed = states.encode(more_ids, more);
  ASSERT_EQ(mixed.projected.size(), more.size());
  EXPECT_FALSE(mixed.projected.back().defined());
  EXPECT_EQ(mixed.tokens(), live.tokens() + static_cast<int64_t>(chunks[0].size()));
  const Tensor lg_mixed = logits_with(*model, prompt, mixed);
  EXPECT_EQ(lg_mixed.numel(), lg_live.numel());
}

INSTANTIATE_TEST_SUITE_P(Fixtures, KvStoreOnFixture, ::testing::ValuesIn(fixture_cases()),
                         [](const auto& info) {
                           return info.param.fixture + "_" +
                                  index::state_dtype_name(info.param.dtype);
                         });

// `cepe index encode` packs passages by a token budget, not as a request does. A chunk's states
// do not depend on the other chunks mathematically, but BLAS may block a GEMM differently for
// another row count, so the last bits may differ: states within 1e-5, logits within 5e-5 (the
// reference tolerance is 1e-4) and the same greedy tokens.
TEST(EncoderStore, OtherPackingStaysWithinRounding) {
  for (const std::string name : {"gqa_cross_last2", "dynamic", "linear_tied", "bf16"}) {
    auto f = test::load_fixture(name);
    const auto& g = f->expected["greedy"];
    const auto chunks = test::chunks_of(g["context_ids"]);
    const fs::path model_dir = model_with_tokenizer(name, "tokenizer A");
    // F32 activations: the bf16 GEMM (more than 16 rows) rounds them, the dot path (a short
    // chunk alone) does not, which would move the bf16 fixture by more than the packing does.
    BackendOptions o;
    o.bf16_activations = false;
    auto backend = make_backend(Device::CPU, o);
    auto model = CepeModel::load(model_dir, *backend);
    model->set_cross_attention_mode(CrossAttentionMode::Absorbed);
    const auto fp = index::encoder_fingerprint(model_dir, model->config(), 256, StateDType::F32);
    const fs::path index_dir = test::temp_dir("encstore_alone_" + name);
    build_store(*model, fp, chunks, index_dir, /*packed=*/false);
    qa::EncoderStates states(*model);
    states.use_store(index::find_encoder_store(index_dir, fp).store);
    const EncodedContext stored = states.encode(ids_for(chunks.size()), chunks);
    const EncodedContext live = model->encode(chunks);
    double ds = 0;
    const std::vector<float> stored_rows = host_rows(stored);
    ASSERT_EQ(stored_rows.size(), static_cast<size_t>(live.states.numel()));
    for (int64_t i = 0; i < live.states.numel(); ++i)
      ds = std::max(ds, double(std::fabs(stored_rows[i] - live.states.data<float>()[i])));
    EXPECT_LE(ds, 1e-5) << name;
    const auto prompt = test::ids_of(f->expected["input_ids"]);
    const Tensor a = logits_with(*model, prompt, stored), b = logits_with(*model, prompt, live);
    double dl = 0;
    for (int64_t i = 0; i < a.numel(); ++i)
      dl = std::max(dl, double(std::fabs(a.data<float>()[i] - b.data<float>()[i])));
    EXPECT_LE(dl, 5e-5) << name;
    const auto gp = test::ids_of(g["input_ids"]);
    const int max_new = g["max_new_tokens"].GetInt();
    EXPECT_EQ(greedy_with(*model, gp, stored, max_new), greedy_with(*model, gp, live, max_new));
    std::printf("[%s, chunks encoded alone] max |dstate| %.3g, max |dlogit| %.3g\n", name.c_str(),
                ds, dl);
  }
}

// ---------------------------------------------------------------------------------------------
// Refusals: another model, another tokenizer, another chunk length.

struct Built {
  fs::path model_dir, index_dir;
  std::unique_ptr<Backend> backend;
  std::unique_ptr<CepeModel> model;
};

Built built_store(const std::string& fixture) {
  Built b;
  b.model_dir = model_with_tokenizer(fixture, "tokenizer A");
  b.backend = make_backend(Device::CPU);
  b.model = CepeModel::load(b.model_dir, *b.backend);
  auto f = test::load_fixture(fixture);
  const auto chunks = test::chunks_of(f->expected["greedy"]["context_ids"]);
  b.index_dir = test::temp_dir("encstore_refuse_" + fixture);
  build_store(*b.model,
              index::encoder_fingerprint(b.model_dir, b.model->config(), 256, StateDType::F32),
              chunks, b.index_dir);
  return b;
}

void expect_refused(const Built& b, const fs::path& model_dir, int chunk_tokens,
                    const std::string& reason) {
  auto backend = make_backend(Device::CPU);
  auto model = CepeModel::load(model_dir, *backend);
  std::vector<std::string> reports;
  auto store =
      qa::open_encoder_store("auto", b.index_dir, model_dir, model->config(), chunk_tokens,
                             Device::CPU, [&](const std::string& l) { reports.push_back(l); });
  EXPECT_FALSE(store) << "a mismatching store was used";
  ASSERT_EQ(reports.size(), 1u);
  EXPECT_NE(reports[0].find(reason), std::string::npos) << reports[0];
  // Named explicitly, the same store is an error naming the difference.
  fs::path file;
  for (const auto& e : fs::directory_iterator(index::encoder_store_dir(b.index_dir)))
    file = e.path();
  try {
    qa::open_encoder_store(file.string(), b.index_dir, model_dir, model->config(), chunk_tokens,
                           Device::CPU, {});
    ADD_FAILURE() << "explicit mismatching store accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(reason), std::string::npos) << e.what();
  }
}

TEST(EncoderStoreRefusal, AnotherModel) {
  const Built b = built_store("gqa_cross_last2");
  expect_refused(b, model_with_tokenizer("mha_encoder_gqa", "tokenizer A"), 256,
                 "other encoder weights");
}

TEST(EncoderStoreRefusal, AnotherTokenizer) {
  const Built b = built_store("gqa_cross_last2");
  expect_refused(b, model_with_tokenizer("gqa_cross_last2", "tokenizer B"), 256,
                 "another tokenizer");
}

TEST(EncoderStoreRefusal, AnotherChunkLength) {
  const Built b = built_store("gqa_cross_last2");
  expect_refused(b, b.model_dir, 128, "chunk length 256 tokens (this run uses 128)");
}

// A K/V store holds the decoder's cross-attention projections too: a model whose encoder and
// tokenizer are the same but whose cross_attn.k_proj differs must not read it.
TEST(EncoderStoreRefusal, AnotherDecoderForAKvStore) {
  Built b;
  b.model_dir = model_with_tokenizer("gqa_cross_last2", "tokenizer A");
  b.backend = make_backend(Device::CPU);
  b.model = CepeModel::load(b.model_dir, *b.backend);
  auto f = test::load_fixture("gqa_cross_last2");
  const auto chunks = test::chunks_of(f->expected["greedy"]["context_ids"]);
  b.index_dir = test::temp_dir("kvstore_refuse");
  build_kv_store(*b.model,
                 index::cross_kv_fingerprint(b.model_dir, b.model->config(), 256, StateDType::F32),
                 chunks, b.index_dir);
  // The same checkpoint with one byte of a cross_attn.k_proj tensor changed.
  const fs::path other = test::temp_dir("kvstore_refuse_other");
  for (const auto& e : fs::directory_iterator(b.model_dir))
    fs::copy_file(e.path(), other / e.path().filename(), fs::copy_options::overwrite_existing);
  fs::path st;
  for (const auto& e : fs::directory_iterator(other))
    if (e.path().extension() == ".safetensors") st = e.path();
  std::string bytes = test::read_file(st);
  uint64_t header_len = 0;
  std::memcpy(&header_len, bytes.data(), 8);
  const size_t name = bytes.find("cross_attn.k_proj.weight");
  ASSERT_NE(name, std::string::npos);
  const size_t offsets = bytes.find("\"data_offsets\":[", name);
  ASSERT_LT(offsets, 8 + header_len);
  const uint64_t begin = std::stoull(bytes.substr(offsets + 16, 20));
  bytes[8 + header_len + begin] ^= 0x40;
  std::ofstream(st, std::ios::binary | std::ios::trunc) << bytes;
  expect_refused(b, other, 256, "other cross-attention K/V weights");
}

TEST(EncoderStoreRefusal, ChangedPassageIsEncodedLive) {
  // Same id, other tokens (the passage text changed after the store was built): not used.
  Built b = built_store("gqa_cross_last2");
  auto store = qa::open_encoder_store("auto", b.index_dir, b.model_dir, b.model->config(), 256,
                                      Device::CPU, {});
  ASSERT_TRUE(store);
  qa::EncoderStates states(*b.model);
  states.use_store(store);
  const EncodedContext ctx = states.encode({"passage-0"}, {{5, 6, 7}});
  EXPECT_EQ(states.counters().store_hits.load(), 0u);
  EXPECT_EQ(states.counters().live_passages.load(), 1u);
  EXPECT_EQ(ctx.tokens(), 3);
}

TEST(EncoderStoreFile, CorruptOrTruncatedIsNamed) {
  Built b = built_store("gqa_cross_last2");
  fs::path file;
  for (const auto& e : fs::directory_iterator(index::encoder_store_dir(b.index_dir)))
    file = e.path();
  index::EncoderStore(file).verify();
  const fs::path cut = b.index_dir / "cut.ces";
  fs::copy_file(file, cut);
  fs::resize_file(cut, fs::file_size(file) - 100);
  try {
    index::EncoderStore s(cut);
    ADD_FAILURE() << "truncated store opened";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("cut.ces"), std::string::npos) << e.what();
  }
  const fs::path junk = b.index_dir / "junk.ces";
  std::ofstream(junk) << std::string(5000, 'x');
  EXPECT_THROW(index::EncoderStore s(junk), Error);
}

// ---------------------------------------------------------------------------------------------
// An interrupted build (rows appended past the last commit, then the process gone) resumes from
// the commit and ends byte-equal to an uninterrupted build.

TEST(EncoderStoreWriter, ResumeIsByteEqual) {
  index::EncoderFingerprint fp;
  fp.encoder_weights = 1, fp.encoder_config = 2, fp.tokenizer = 3, fp.chunk_tokens = 16;
  fp.width = 64;
  fp.dtype = StateDType::Q8_0;
  std::vector<index::StoredPassageInfo> infos;
  std::vector<std::vector<float>> rows;
  for (int i = 0; i < 10; ++i) {
    const uint32_t n = 1 + (i * 7) % 16;
    infos.push_back({index::passage_id_hash(std::to_string(i)), n, uint64_t(i) * 31});
    std::vector<float> v(n * fp.width);
    for (size_t j = 0; j < v.size(); ++j) v[j] = std::sin(0.37 * double(j + 1000 * i));
    rows.push_back(v);
  }
  const fs::path dir = test::temp_dir("encstore_resume");
  const fs::path whole = dir / "whole.ces", resumed = dir / "resumed.ces";
  {
    index::EncoderStoreWriter w(whole, fp, infos);
    for (const auto& r : rows) w.append(r.data(), static_cast<int64_t>(r.size() / fp.width));
    w.finish();
  }
  {
    index::EncoderStoreWriter w(resumed, fp, infos);
    for (int i = 0; i < 4; ++i) w.append(rows[i].data(), infos[i].tokens);
    w.commit();
    for (int i = 4; i < 6; ++i) w.append(rows[i].data(), infos[i].tokens);  // never committed
  }
  EXPECT_FALSE(fs::exists(resumed)) << "an unfinished store is visible under its final name";
  {
    std::ofstream(resumed.string() + ".partial", std::ios::app) << "torn bytes";
    index::EncoderStoreWriter w(resumed, fp, infos);
    EXPECT_EQ(w.resumed_rows(), 4u);
    for (size_t i = w.resumed_rows(); i < rows.size(); ++i)
      w.append(rows[i].data(), infos[i].tokens);
    w.finish();
  }
  EXPECT_EQ(test::read_file(whole), test::read_file(resumed));
  EXPECT_FALSE(fs::exists(resumed.string() + ".partial.ckpt"));
  // A checkpoint of another build (other passages) is not resumed from.
  infos[0].token_hash ^= 1;
  std::ofstream(dir / "other.ces.partial") << "x";
  index::EncoderStoreWriter other(dir / "other.ces", fp, infos);
  EXPECT_EQ(other.resumed_rows(), 0u);
  index::EncoderStore s(whole);
  s.verify();
  EXPECT_EQ(s.size(), rows.size());
  std::vector<float> back(infos[3].tokens * fp.width);
  s.read(3, back.data());
  for (size_t j = 0; j < back.size(); ++j) EXPECT_NEAR(back[j], rows[3][j], 1.0 / 254 + 1e-3);
}

// Rows copied from a finished store (what `cepe index encode` does for passages an earlier store
// holds) are the bytes append() would write for the same values, at any position; a row of another
// chunk or of a store with another fingerprint is refused.
TEST(EncoderStoreWriter, CopiedRowsEqualAppendedOnes) {
  index::EncoderFingerprint fp;
  fp.encoder_weights = 1, fp.encoder_config = 2, fp.tokenizer = 3, fp.chunk_tokens = 16;
  fp.width = 40;  // q8_0: a 32-value block and a short one, so row bytes are not 64-aligned
  fp.dtype = StateDType::Q8_0;
  std::vector<index::StoredPassageInfo> infos;
  std::vector<std::vector<float>> rows;
  for (int i = 0; i < 6; ++i) {
    const uint32_t n = 1 + (i * 5) % 7;
    infos.push_back({index::passage_id_hash("p" + std::to_string(i)), n, uint64_t(i) * 977});
    std::vector<float> v(n * fp.width);
    for (size_t j = 0; j < v.size(); ++j) v[j] = std::cos(0.11 * double(j + 313 * i));
    rows.push_back(v);
  }
  const fs::path dir = test::temp_dir("encstore_copy");
  const auto write = [&](const fs::path& path, const std::vector<int>& order) {
    std::vector<index::StoredPassageInfo> list;
    for (int i : order) list.push_back(infos[i]);
    index::EncoderStoreWriter w(path, fp, list);
    for (int i : order) w.append(rows[i].data(), infos[i].tokens);
    w.finish();
  };
  write(dir / "old.ces", {0, 1, 2, 3});
  write(dir / "fresh.ces", {3, 5, 1, 0, 4, 2});
  const index::EncoderStore old(dir / "old.ces");
  {
    const std::vector<int> order = {3, 5, 1, 0, 4, 2};
    std::vector<index::StoredPassageInfo> list;
    for (int i : order) list.push_back(infos[i]);
    index::EncoderStoreWriter w(dir / "copied.ces", fp, list);
    for (int i : order) {
      if (i < 4)
        w.append_stored(old, static_cast<uint64_t>(i));
      else
        w.append(rows[i].data(), infos[i].tokens);
    }
    w.finish();
  }
  EXPECT_EQ(test::read_file(dir / "fresh.ces"), test::read_file(dir / "copied.ces"));
  index::EncoderStore(dir / "copied.ces").verify();
  {
    index::EncoderStoreWriter w(dir / "wrong_row.ces", fp, {infos[0], infos[1]});
    EXPECT_THROW(w.append_stored(old, 1), Error) << "row 1 holds another chunk than passage 0";
    w.append_stored(old, 0);
    w.append_stored(old, 1);
    EXPECT_THROW(w.append_stored(old, 2), Error) << "more rows than passages";
  }
  index::EncoderFingerprint f16 = fp;
  f16.dtype = StateDType::F16;
  index::EncoderStoreWriter w(dir / "other_dtype.ces", f16, {infos[0]});
  try {
    w.append_stored(old, 0);
    ADD_FAILURE() << "copied a q8_0 row into an f16 store";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("another fingerprint"), std::string::npos) << e.what();
  }
}

// ---------------------------------------------------------------------------------------------
// The LRU cache and the component with a cache.

TEST(EncodedPassageCache, LruByBytes) {
  auto t = [](int64_t rows) { return Tensor::zeros({rows, 4}, DType::F32); };
  const std::string ka = qa::EncodedPassageCache::key(1, "a", 0);
  const std::string kb = qa::EncodedPassageCache::key(1, "b", 0);
  const std::string kc = qa::EncodedPassageCache::key(1, "c", 0);
  qa::EncodedPassageCache cache(2 * (64 + ka.size()));  // room for two 4-row entries
  cache.put(ka, t(4));
  cache.put(kb, t(4));
  EXPECT_TRUE(cache.get(ka).defined());  // a is now the most recent
  cache.put(kc, t(4));                   // evicts b
  EXPECT_EQ(cache.evictions(), 1u);
  EXPECT_FALSE(cache.get(kb).defined());
  EXPECT_TRUE(cache.get(kc).defined());
  EXPECT_EQ(cache.hits(), 2u);
  EXPECT_EQ(cache.misses(), 1u);
  EXPECT_EQ(cache.entries(), 2u);
  EXPECT_LE(cache.bytes(), cache.capacity());
  cache.put(qa::EncodedPassageCache::key(1, "huge", 0), t(1000));  // larger than the cache
  EXPECT_EQ(cache.entries(), 2u);
  // Another fingerprint is another key.
  EXPECT_NE(qa::EncodedPassageCache::key(2, "a", 0), ka);
}

TEST(EncoderStates, CacheGivesTheLiveStates) {
  auto f = test::load_fixture("gqa_cross_last2");
  auto backend = make_backend(Device::CPU);
  auto model = CepeModel::load(f->dir, *backend);
  const auto chunks = test::chunks_of(f->expected["greedy"]["context_ids"]);
  qa::EncoderStates states(*model);
  states.use_cache(std::make_shared<qa::EncodedPassageCache>(1 << 20), 42);
  const auto ids = ids_for(chunks.size());
  const EncodedContext first = states.encode(ids, chunks);
  EXPECT_EQ(states.counters().live_passages.load(), chunks.size());
  // The second request: one new passage first, then the cached ones.
  std::vector<std::vector<int32_t>> chunks2 = {{9, 8, 7, 6}};
  std::vector<std::string> ids2 = {"new"};
  for (size_t i = 0; i < chunks.size(); ++i) {
    chunks2.push_back(chunks[i]);
    ids2.push_back(ids[i]);
  }
  const EncodedContext second = states.encode(ids2, chunks2);
  EXPECT_EQ(states.counters().cache_hits.load(), chunks.size());
  const EncodedContext alone = model->encode({chunks2[0]});
  ASSERT_EQ(second.tokens(), alone.tokens() + first.tokens());
  const int64_t w = first.states.dim(1);
  // The new passage is the live encoding of it; the cached ones are the first request's bytes.
  const std::vector<float> rows2 = host_rows(second);
  EXPECT_EQ(std::memcmp(rows2.data(), alone.states.raw(), alone.states.nbytes()), 0);
  EXPECT_EQ(
      std::memcmp(rows2.data() + alone.tokens() * w, first.states.raw(), first.states.nbytes()), 0);
  // Cache hits are the entries themselves, not copies.
  ASSERT_EQ(second.parts.size(), chunks2.size());
  EXPECT_EQ(second.parts[1].raw(),
            states.cache()
                ->get(qa::EncodedPassageCache::key(42, ids[0], index::chunk_token_hash(chunks[0])))
                .raw());
}

// A caller's passages have no id: they are cached by their tokens, so the same text again is a hit
// with the same bytes, and a different text (even with the same length) is a miss, never a
// neighbour's states.
TEST(EncoderStates, CallerPassagesAreCachedByTheirTokens) {
  auto f = test::load_fixture("gqa_cross_last2");
  auto backend = make_backend(Device::CPU);
  auto model = CepeModel::load(f->dir, *backend);
  const auto chunks = test::chunks_of(f->expected["greedy"]["context_ids"]);
  ASSERT_FALSE(chunks.empty());
  qa::EncoderStates states(*model);
  states.use_cache(std::make_shared<qa::EncodedPassageCache>(1 << 20), 42);
  const std::vector<std::string> no_ids(chunks.size());
  const EncodedContext first = states.encode(no_ids, chunks);
  EXPECT_EQ(states.counters().cache_hits.load(), 0u);
  const EncodedContext again = states.encode(no_ids, chunks);
  EXPECT_EQ(states.counters().cache_hits.load(), chunks.size());
  EXPECT_EQ(states.counters().live_passages.load(), chunks.size());
  const std::vector<float> again_rows = host_rows(again);
  ASSERT_EQ(again_rows.size() * sizeof(float), first.states.nbytes());
  EXPECT_EQ(std::memcmp(again_rows.data(), first.states.raw(), first.states.nbytes()), 0);
  std::vector<int32_t> other = chunks[0];
  other.back() = other.back() == 5 ? 6 : 5;  // same length, one token changed
  const EncodedContext changed = states.encode({""}, {other});
  EXPECT_EQ(states.counters().cache_hits.load(), chunks.size());
  EXPECT_EQ(states.counters().live_passages.load(), chunks.size() + 1);
  const EncodedContext alone = model->encode({other});
  EXPECT_EQ(std::memcmp(changed.states.raw(), alone.states.raw(), alone.states.nbytes()), 0);
  // An id-keyed entry and a content-keyed one never share a key.
  EXPECT_NE(qa::EncodedPassageCache::content_key(42, chunks[0]),
            qa::EncodedPassageCache::key(42, "", 0));
}

}  // namespace
