// The `bert` embedder against tests/fixtures/bert_tiny (a random-weight BERT written by
// tests/reference/bert_reference.py, whose pure-PyTorch forward computed the expected ids and
// float64 embeddings): ids equal, embeddings within kTolerance for mean and CLS pooling, with and
// without normalisation and prefixes; batched equals one at a time; "bert." prefixed checkpoints;
// error messages; and `cepe index build/search --embedder bert:DIR` end to end.
#include <gtest/gtest.h>
#include <rapidjson/document.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <string>
#include <vector>

#include "common/error.h"
#include "engine/backend.h"
#include "engine/safetensors.h"
#include "retriever/bert_embedder.h"
#include "retriever/embedder.h"
#include "test_util.h"

namespace fs = std::filesystem;
using namespace cepe;
using namespace cepe::retriever;

namespace {

// Max |embedding - reference| per element (F32 forward vs the float64 reference).
constexpr double kTolerance = 1e-4;
// Packing several texts into one forward changes GEMM shapes (and so summation order) only.
constexpr double kBatchTolerance = 1e-5;

fs::path fixture() {
  return test::source_dir() / "tests" / "fixtures" / "bert_tiny";
}

struct Setting {
  std::string name, pooling, prefix;
  bool normalize = false;
};

struct Expected {
  std::vector<std::string> texts;
  std::vector<Setting> settings;
  std::map<std::string, std::vector<std::vector<int32_t>>> ids;
  std::map<std::string, std::vector<std::vector<double>>> embeddings;
};

const Expected& expected() {
  static const Expected e = [] {
    Expected x;
    const std::string json = test::read_file(fixture() / "expected_embeddings.json");
    rapidjson::Document d;
    d.Parse(json.c_str(), json.size());
    if (d.HasParseError()) throw std::runtime_error("bad expected_embeddings.json");
    for (const auto& t : d["texts"].GetArray())
      x.texts.emplace_back(t.GetString(), t.GetStringLength());
    for (const auto& s : d["settings"].GetArray())
      x.settings.push_back({s["name"].GetString(), s["pooling"].GetString(),
                            s["prefix"].GetString(), s["normalize"].GetBool()});
    for (const auto& s : x.settings) {
      for (const auto& row : d["ids"][s.name.c_str()].GetArray()) {
        std::vector<int32_t> ids;
        for (const auto& v : row.GetArray()) ids.push_back(v.GetInt());
        x.ids[s.name].push_back(ids);
      }
      for (const auto& row : d["embeddings"][s.name.c_str()].GetArray()) {
        std::vector<double> v;
        for (const auto& f : row.GetArray()) v.push_back(f.GetDouble());
        x.embeddings[s.name].push_back(v);
      }
    }
    return x;
  }();
  return e;
}

std::string spec_for(const Setting& s, const fs::path& dir, const std::string& extra = "") {
  std::string spec =
      "bert:" + dir.string() + ",pooling=" + s.pooling + ",normalize=" + (s.normalize ? "1" : "0");
  if (s.prefix == "query: ") spec += ",query_prefix=" + s.prefix;
  if (s.prefix == "passage: ") spec += ",passage_prefix=" + s.prefix;
  return spec + extra;
}

// Embeds every fixture text the way the setting's prefix says (queries, passages or raw texts).
std::vector<float> embed_all(const BertEmbedder& e, const Setting& s,
                             const std::vector<std::string>& texts) {
  std::vector<float> out(texts.size() * static_cast<size_t>(e.dim()));
  if (s.prefix == "query: ") {
    e.embed_queries(texts, out.data());
  } else if (s.prefix == "passage: ") {
    std::vector<retriever::PassageView> views;
    for (const auto& t : texts) views.push_back({"id", "", t});
    e.embed_passages(views, out.data());
  } else {
    e.embed_texts(texts, out.data());
  }
  return out;
}

double max_error(const std::vector<float>& got, const std::vector<std::vector<double>>& want,
                 int dim) {
  double worst = 0.0;
  for (size_t i = 0; i < want.size(); ++i)
    for (int c = 0; c < dim; ++c)
      worst = std::max(worst, std::fabs(got[i * dim + c] - want[i][static_cast<size_t>(c)]));
  return worst;
}

void check_against_reference(const std::string& extra) {
  const Expected& x = expected();
  ASSERT_EQ(x.settings.size(), 4u);
  for (const Setting& s : x.settings) {
    BertEmbedder e(spec_for(s, fixture(), extra));
    ASSERT_EQ(e.dim(), 32);
    for (size_t i = 0; i < x.texts.size(); ++i)
      EXPECT_EQ(e.encode(s.prefix + x.texts[i]), x.ids.at(s.name)[i])
          << s.name << ": ids of text " << i;
    const std::vector<float> got = embed_all(e, s, x.texts);
    const double err = max_error(got, x.embeddings.at(s.name), e.dim());
    std::cout << "[ bert    ] " << s.name << extra << ": max |embedding - reference| = " << err
              << "\n";
    EXPECT_LE(err, kTolerance) << s.name;
    if (s.normalize)
      for (size_t i = 0; i < x.texts.size(); ++i) {
        double ss = 0;
        for (int c = 0; c < e.dim(); ++c) ss += double(got[i * 32 + c]) * got[i * 32 + c];
        EXPECT_NEAR(ss, 1.0, 1e-5) << s.name << " text " << i;
      }
  }
}

TEST(BertEmbedder, MatchesReferenceOnCpu) {
  check_against_reference("");
}

TEST(BertEmbedder, MatchesReferenceOnCuda) {
  if (!backend_available(Device::CUDA))
    GTEST_SKIP() << "no CUDA device: CUDA backend tests skipped";
  check_against_reference(",device=cuda");
}

TEST(BertEmbedder, BatchedEqualsOneAtATime) {
  const Expected& x = expected();
  for (const Setting& s : x.settings) {
    BertEmbedder e(spec_for(s, fixture()));
    const std::vector<float> batched = embed_all(e, s, x.texts);
    for (size_t i = 0; i < x.texts.size(); ++i) {
      const std::vector<float> one = embed_all(e, s, {x.texts[i]});
      for (int c = 0; c < e.dim(); ++c)
        ASSERT_NEAR(one[static_cast<size_t>(c)], batched[i * 32 + c], kBatchTolerance)
            << s.name << " text " << i << " dim " << c;
    }
  }
}

TEST(BertEmbedder, PassagesJoinTitleAndText) {
  BertEmbedder e("bert:" + fixture().string() + ",passage_prefix=passage: ");
  std::vector<float> a(32), b(32);
  e.embed_passages({{"p1", "Paris", "is the capital of France."}}, a.data());
  e.embed_texts({"passage: Paris is the capital of France."}, b.data());
  EXPECT_EQ(a, b);
}

TEST(BertEmbedder, FactorySpecFingerprintAndDescribe) {
  const std::string dir = fixture().string();
  auto e = create_embedder("bert:" + dir + ",pooling=cls,query_prefix=query: ,normalize=1");
  EXPECT_EQ(e->kind(), "bert");
  EXPECT_EQ(e->dim(), 32);
  EXPECT_EQ(e->describe().at("query_prefix"), "\"query: \"");
  EXPECT_EQ(e->describe().at("pooling"), "cls");
  // The spec records an absolute directory and the options verbatim; it recreates the embedder.
  EXPECT_EQ(e->spec(), "bert:" + fs::absolute(dir).lexically_normal().string() +
                           ",pooling=cls,query_prefix=query: ,normalize=1");
  auto again = create_embedder(e->spec());
  EXPECT_EQ(again->fingerprint(), e->fingerprint());
  auto mean = create_embedder("bert:" + dir + ",query_prefix=query: ,normalize=1");
  EXPECT_NE(mean->fingerprint(), e->fingerprint());
  EXPECT_EQ(create_embedder("bert:" + dir)->describe().at("max_tokens"), "48");
  EXPECT_EQ(create_embedder("bert:" + dir + ",max_tokens=8")->describe().at("max_tokens"), "8");
}

// Copies the fixture to a temporary directory, with its tensors renamed / dropped / converted.
fs::path rewritten_fixture(const std::string& tag, const std::string& prefix,
                           const std::string& drop, DType dtype = DType::F32) {
  const fs::path dir = test::temp_dir("bert_" + tag);
  for (const char* f : {"config.json", "vocab.txt", "tokenizer_config.json"})
    fs::copy_file(fixture() / f, dir / f, fs::copy_options::overwrite_existing);
  const WeightStore store = WeightStore::open(fixture());
  std::vector<std::pair<std::string, Tensor>> tensors;
  for (const std::string& name : store.names()) {
    if (name == drop) continue;
    const Tensor t = store.get(name);
    Tensor c = Tensor::empty(t.shape(), dtype);
    convert_from_f32(t.data<float>(), c.raw(), dtype, t.numel());
    tensors.emplace_back(prefix + name, c);
  }
  write_safetensors(dir / "model.safetensors", tensors);
  return dir;
}

TEST(BertEmbedder, AcceptsBertPrefixedCheckpointsAnd16BitWeights) {
  const Expected& x = expected();
  const Setting& s = x.settings[0];
  const std::vector<float> want = embed_all(BertEmbedder(spec_for(s, fixture())), s, x.texts);
  const fs::path prefixed = rewritten_fixture("prefixed", "bert.", "");
  EXPECT_EQ(embed_all(BertEmbedder(spec_for(s, prefixed)), s, x.texts), want);
  // BF16 weights (activations stay F32): close to the F32 result, within bf16's resolution.
  const fs::path bf16 = rewritten_fixture("bf16", "", "", DType::BF16);
  const BertEmbedder e(spec_for(s, bf16));
  EXPECT_EQ(e.describe().at("weights"), "BF16");
  const std::vector<float> got = embed_all(e, s, x.texts);
  for (size_t i = 0; i < got.size(); ++i) ASSERT_NEAR(got[i], want[i], 0.05) << i;
}

std::string error_of(const std::string& spec) {
  try {
    BertEmbedder e(spec);
  } catch (const Error& err) {
    return err.what();
  }
  ADD_FAILURE() << spec << " was accepted";
  return "";
}

void expect_mentions(const std::string& message, const std::vector<std::string>& parts) {
  for (const auto& p : parts) EXPECT_NE(message.find(p), std::string::npos) << message;
}

TEST(BertEmbedder, MissingTensorNamesTensorAndFile) {
  const std::string t = "encoder.layer.1.attention.output.LayerNorm.bias";
  const fs::path dir = rewritten_fixture("missing", "", t);
  expect_mentions(error_of("bert:" + dir.string()), {t, "model.safetensors"});
}

TEST(BertEmbedder, BadConfigFieldsAreNamed) {
  const std::string config = test::read_file(fixture() / "config.json");
  auto with_config = [&](const std::string& from, const std::string& to) {
    const fs::path dir = rewritten_fixture("config", "", "");
    std::string c = config;
    const size_t at = c.find(from);
    EXPECT_NE(at, std::string::npos) << from;
    c.replace(at, from.size(), to);
    std::ofstream(dir / "config.json") << c;
    return error_of("bert:" + dir.string());
  };
  expect_mentions(with_config("\"hidden_act\": \"gelu\"", "\"hidden_act\": \"relu\""),
                  {"hidden_act", "relu", "config.json"});
  expect_mentions(with_config("\"hidden_size\": 32", "\"hidden_size\": 30"),
                  {"hidden_size", "config.json"});
  expect_mentions(with_config("\"num_attention_heads\": 4,", ""),
                  {"num_attention_heads", "config.json"});
  // A shape that disagrees with config.json names the tensor.
  expect_mentions(with_config("\"intermediate_size\": 64", "\"intermediate_size\": 48"),
                  {"encoder.layer.0.intermediate.dense.weight", "model.safetensors", "[64, 32]"});
}

TEST(BertEmbedder, MissingFilesAndBadSpecs) {
  const fs::path dir = rewritten_fixture("novocab", "", "");
  fs::remove(dir / "vocab.txt");
  expect_mentions(error_of("bert:" + dir.string()), {(dir / "vocab.txt").string()});
  expect_mentions(error_of("bert:/nonexistent/model"), {"/nonexistent/model/config.json"});
  const std::string f = fixture().string();
  expect_mentions(error_of("bert:" + f + ",pooling=max"), {"pooling=max"});
  expect_mentions(error_of("bert:" + f + ",normalise=1"), {"unknown option 'normalise'"});
  expect_mentions(error_of("bert:" + f + ",max_tokens=4096"), {"max_tokens=4096", "48"});
  expect_mentions(error_of("bert:"), {"no model directory"});
}

TEST(BertEmbedder, IndexBuildAndSearchEndToEnd) {
  const fs::path dir = test::temp_dir("bert_e2e");
  {
    std::ofstream c(dir / "corpus.jsonl");
    c << R"({"id": "p1", "title": "Paris", "text": "Paris is the capital of France."})"
      << "\n"
      << R"({"id": "p2", "title": "Dog", "text": "The quick brown fox jumps over the lazy dog."})"
      << "\n"
      << R"({"id": "p3", "title": "Zurich", "text": "Zürich is a city in Switzerland."})"
      << "\n";
  }
  const std::string spec =
      "bert:" + fixture().string() +
      ",pooling=mean,query_prefix=query: ,passage_prefix=passage: ,normalize=1";
  std::string out;
  const std::string build = test::cepe_binary().string() + " index build --input " +
                            (dir / "corpus.jsonl").string() + " --out " + (dir / "index").string() +
                            " --embedder '" + spec + "' 2>&1";
  ASSERT_EQ(test::run_command(build, &out), 0) << out;
  EXPECT_NE(out.find("dim 32"), std::string::npos) << out;
  const std::string search = test::cepe_binary().string() + " index search --index " +
                             (dir / "index").string() + " -k 3 --json 'quick brown fox' 2>&1";
  ASSERT_EQ(test::run_command(search, &out), 0) << out;
  EXPECT_NE(out.find("\"p2\""), std::string::npos) << out;
  // The index scores are the inner products of this embedder's vectors.
  BertEmbedder e(spec);
  std::vector<float> q(32), p(3 * 32);
  e.embed_queries({"quick brown fox"}, q.data());
  e.embed_passages({{"p1", "Paris", "Paris is the capital of France."},
                    {"p2", "Dog", "The quick brown fox jumps over the lazy dog."},
                    {"p3", "Zurich", "Zürich is a city in Switzerland."}},
                   p.data());
  const std::vector<std::string> names = {"p1", "p2", "p3"};
  std::vector<std::pair<float, std::string>> scored;
  for (int i = 0; i < 3; ++i) {
    float s = 0;
    for (int c = 0; c < 32; ++c) s += q[c] * p[i * 32 + c];
    scored.emplace_back(s, names[i]);
  }
  std::sort(scored.rbegin(), scored.rend());
  const size_t first = out.find("\"id\":\"");
  ASSERT_NE(first, std::string::npos) << out;
  EXPECT_EQ(out.substr(first + 6, 2), scored[0].second) << out;
  ASSERT_EQ(
      test::run_command(
          test::cepe_binary().string() + " index info " + (dir / "index").string() + " 2>&1", &out),
      0)
      << out;
  EXPECT_NE(out.find("query_prefix"), std::string::npos) << out;
}

}  // namespace
