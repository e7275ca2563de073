// The dense Retriever (the tiny random BERT of tests/fixtures/bert_tiny + FAISS): exact search
// equals a hand-computed dot-product ranking, batched and concurrent searches agree with single
// ones, IVF and HNSW agree with Flat, other embedders, changed model files, retired embedders and
// damaged index files are refused with clear errors.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <random>
#include <thread>

#include "common/error.h"
#include "index/builder.h"
#include "index/open_index.h"
#include "retriever/retriever.h"
#include "tests/test_util.h"

namespace fs = std::filesystem;
using cepe::index::open_index;
using cepe::retriever::SearchOptions;

namespace {

const char* kTopics[][6] = {
    {"volcano", "lava", "eruption", "magma", "crater", "ash"},
    {"violin", "orchestra", "symphony", "concerto", "composer", "melody"},
    {"galaxy", "telescope", "nebula", "planet", "orbit", "comet"},
    {"castle", "knight", "siege", "moat", "fortress", "crown"},
    {"protein", "enzyme", "molecule", "cell", "membrane", "gene"},
};

// A small corpus with topical structure: each passage mixes words of one topic with filler.
fs::path make_corpus(const fs::path& dir, int n) {
  const fs::path f = dir / "corpus.jsonl";
  std::ofstream out(f);
  std::mt19937 rng(42);
  const char* filler[] = {"river", "old", "north", "people", "large", "early", "known", "city"};
  for (int i = 0; i < n; ++i) {
    const int t = i % 5;
    std::string text;
    for (int w = 0; w < 30; ++w) {
      if (!text.empty()) text += ' ';
      text += rng() % 3 ? kTopics[t][rng() % 6] : filler[rng() % 8];
    }
    text += " number" + std::to_string(i) + ".";
    out << "{\"id\": \"p" << i << "\", \"title\": \"Topic " << t << "\", \"text\": \"" << text
        << "\"}\n";
  }
  return f;
}

fs::path bert_tiny() {
  return cepe::test::source_dir() / "tests" / "fixtures" / "bert_tiny";
}

// The embedder's 48-token window covers the first words of each passage only (its vocabulary is
// mostly single letters): enough for distinct vectors, which is all these tests need.
fs::path build(const fs::path& dir, const std::string& name, const std::string& faiss, int n = 400,
               const fs::path& model = bert_tiny()) {
  cepe::index::BuildOptions o;
  o.inputs = {make_corpus(dir, n)};
  o.out = dir / name;
  o.retriever = "dense";
  o.embedder = "bert:" + model.string();
  o.faiss = faiss;
  cepe::index::build_index(o);
  return o.out;
}

std::string open_error(const fs::path& dir, const cepe::index::OpenOptions& o = {}) {
  try {
    open_index(dir, o);
  } catch (const cepe::Error& e) {
    return e.message();
  }
  return "(no error)";
}

void copy_dir(const fs::path& from, const fs::path& to) {
  fs::remove_all(to);
  fs::copy(from, to, fs::copy_options::recursive);
}

void truncate_file(const fs::path& p, size_t keep) {
  const std::string s = cepe::test::read_file(p);
  std::ofstream(p, std::ios::binary | std::ios::trunc) << s.substr(0, keep);
}

}  // namespace

TEST(Retriever, FlatEqualsHandComputedDotProductRanking) {
  const fs::path dir = cepe::test::temp_dir("ret-flat");
  const fs::path idx = build(dir, "flat", "Flat");
  auto r = open_index(idx);
  const auto& store = r->passages();
  const int dim = r->dense()->embedder().dim();
  ASSERT_EQ(store.size(), 400u);
  // Every passage vector, recomputed from the stored text.
  std::vector<float> pv(store.size() * dim);
  for (uint64_t i = 0; i < store.size(); ++i)
    r->dense()->embedder().embed_passages({store.get(i)}, pv.data() + i * dim);
  for (const std::string q : {"volcano lava eruption", "orchestra composer melody", "galaxy orbit",
                              "knight castle number17", "enzyme membrane gene protein"}) {
    std::vector<float> qv(dim);
    r->dense()->embedder().embed_queries({q}, qv.data());
    std::vector<std::pair<double, uint64_t>> want;
    for (uint64_t i = 0; i < store.size(); ++i) {
      double dot = 0;
      for (int d = 0; d < dim; ++d) dot += static_cast<double>(qv[d]) * pv[i * dim + d];
      want.push_back({dot, i});
    }
    std::stable_sort(want.begin(), want.end(), [](auto& a, auto& b) { return a.first > b.first; });
    SearchOptions so;
    so.k = 10;
    const auto hits = r->search(q, so);
    ASSERT_EQ(hits.size(), 10u);
    for (int j = 0; j < 10; ++j) {
      EXPECT_NEAR(hits[j].score, want[j].first, 1e-5) << q << " rank " << j;
      // Equal scores may come in either order; otherwise the rows agree.
      if (std::abs(want[j].first - want[j + (j < 9)].first) > 1e-6 &&
          (j == 0 || std::abs(want[j].first - want[j - 1].first) > 1e-6)) {
        EXPECT_EQ(hits[j].row, want[j].second) << q << " rank " << j;
      }
      EXPECT_EQ(hits[j].rank, j + 1);
      EXPECT_EQ(hits[j].id, store.get(hits[j].row).id);
      EXPECT_EQ(hits[j].text, store.get(hits[j].row).text);
    }
  }
}

TEST(Retriever, BatchedConcurrentAndAnnAgree) {
  const fs::path dir = cepe::test::temp_dir("ret-batch");
  const fs::path flat = build(dir, "flat", "Flat");
  const fs::path ivf = build(dir, "ivf", "IVF8,Flat");
  const fs::path hnsw = build(dir, "hnsw", "HNSW16");
  auto r = open_index(flat);
  std::vector<std::string> qs;
  for (int i = 0; i < 40; ++i)
    qs.push_back(std::string(kTopics[i % 5][i % 6]) + " " + kTopics[(i + 1) % 5][(i * 7) % 6] +
                 " number" + std::to_string(i * 9));
  SearchOptions so;
  so.k = 5;
  const auto batch = r->search_batch(qs, so);
  ASSERT_EQ(batch.size(), qs.size());
  std::vector<std::vector<cepe::retriever::Hit>> single;
  for (const auto& q : qs) single.push_back(r->search(q, so));
  auto rows = [](const std::vector<cepe::retriever::Hit>& h) {
    std::vector<uint64_t> out;
    for (const auto& x : h) out.push_back(x.row);
    return out;
  };
  for (size_t i = 0; i < qs.size(); ++i) EXPECT_EQ(rows(batch[i]), rows(single[i])) << qs[i];
  // Four threads searching the same Retriever get the same answers.
  std::vector<std::thread> threads;
  std::vector<int> mismatches(4, 0);
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      for (int rep = 0; rep < 5; ++rep)
        for (size_t i = t; i < qs.size(); i += 4)
          if (rows(r->search(qs[i], so)) != rows(single[i])) ++mismatches[t];
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(mismatches, std::vector<int>(4, 0));
  // IVF visiting every list is exact; HNSW with a large candidate list too, on 400 vectors.
  auto ri = open_index(ivf);
  EXPECT_TRUE(ri->dense()->vectors().has_ivf());
  EXPECT_GT(ri->manifest().default_nprobe, 0);
  SearchOptions all = so;
  all.nprobe = 8;
  auto rh = open_index(hnsw);
  SearchOptions wide = so;
  wide.ef_search = 400;
  // Scores, not rows, for HNSW: passages with equal scores may come in another order.
  auto scores = [](const std::vector<cepe::retriever::Hit>& h) {
    std::vector<long> out;
    for (const auto& x : h) out.push_back(std::lround(x.score * 1e5));
    return out;
  };
  int ivf_same = 0, hnsw_found = 0, hnsw_narrow_found = 0;
  SearchOptions narrow = so;
  narrow.ef_search = 5;
  for (size_t i = 0; i < qs.size(); ++i) {
    ivf_same += rows(ri->search(qs[i], all)) == rows(single[i]);
    const auto want = scores(single[i]);
    for (auto* found : {&hnsw_found, &hnsw_narrow_found}) {
      auto got = scores(rh->search(qs[i], found == &hnsw_found ? wide : narrow));
      for (long s : want) {
        auto it = std::find(got.begin(), got.end(), s);
        if (it == got.end()) continue;
        ++*found;
        got.erase(it);
      }
    }
  }
  EXPECT_EQ(ivf_same, static_cast<int>(qs.size()));
  // HNSW over inner products is approximate even with a wide candidate list; efSearch matters.
  std::printf("HNSW16 recall@5 vs Flat: efSearch 400 %.3f, efSearch 5 %.3f\n",
              hnsw_found / (5.0 * qs.size()), hnsw_narrow_found / (5.0 * qs.size()));
  EXPECT_GE(hnsw_found, static_cast<int>(0.85 * 5 * qs.size()));
  EXPECT_GE(hnsw_found, hnsw_narrow_found);
  // nprobe/efSearch on an index without them is an error, not silently ignored.
  EXPECT_THROW(r->search(qs[0], all), cepe::Error);
  EXPECT_THROW(ri->search(qs[0], wide), cepe::Error);
  SearchOptions zero = so;
  zero.k = 0;
  EXPECT_THROW(r->search(qs[0], zero), cepe::Error);
}

TEST(Retriever, RefusesAnotherEmbedderChangedModelFilesAndRetiredEmbedders) {
  const fs::path dir = cepe::test::temp_dir("ret-mismatch");
  // A private copy of the model, so that it can change after the build.
  const fs::path model = dir / "bert";
  fs::copy(bert_tiny(), model, fs::copy_options::recursive);
  const fs::path idx = build(dir, "flat", "Flat", 100, model);
  const std::string spec = "bert:" + fs::absolute(model).lexically_normal().string();
  cepe::index::OpenOptions o;
  o.embedder = "bert:/models/e5";
  EXPECT_NE(open_error(idx, o).find("was built with embedder '" + spec + "' (fingerprint "),
            std::string::npos)
      << open_error(idx, o);
  EXPECT_NE(open_error(idx, o).find("refusing to query it with 'bert:/models/e5'"),
            std::string::npos);
  o.embedder = spec;
  EXPECT_EQ(open_error(idx, o), "(no error)");
  // The model's files changed since the build: its vectors would no longer match the stored ones.
  {
    std::string config = cepe::test::read_file(model / "config.json");
    config.insert(config.find('{') + 1, "\n  \"initializer_range_note\": 1,");
    std::ofstream(model / "config.json", std::ios::trunc) << config;
  }
  EXPECT_NE(open_error(idx).find("but that embedder now has fingerprint"), std::string::npos)
      << open_error(idx);
  // An index made by the retired hashed TF-IDF embedder is refused with what to do instead.
  const fs::path old = dir / "old";
  copy_dir(idx, old);
  {
    cepe::index::IndexManifest m = cepe::index::read_manifest(old);
    m.embedder_spec = m.embedder_kind = "lexical";
    cepe::index::write_manifest(old, m);  // with a valid checksum: only the embedder is old
  }
  EXPECT_NE(open_error(old).find("was built with the hashed TF-IDF embedder 'lexical', which was "
                                 "retired"),
            std::string::npos)
      << open_error(old);
  cepe::index::BuildOptions retired;
  retired.inputs = {dir / "corpus.jsonl"};
  retired.out = dir / "never";
  retired.retriever = "dense";
  retired.embedder = "lexical";
  std::string err;
  try {
    cepe::index::build_index(retired);
  } catch (const cepe::Error& e) {
    err = e.message();
  }
  EXPECT_NE(err.find("'lexical' was retired: BM25 replaces it"), std::string::npos) << err;
  EXPECT_FALSE(fs::exists(retired.out));
  // The CLI refuses the same way, with exit status 1.
  std::string out;
  const int rc =
      cepe::test::run_command(cepe::test::cepe_binary().string() + " index search --index " +
                                  idx.string() + " --embedder bert:/x \"lava\"",
                              &out);
  EXPECT_EQ(rc, 1) << out;
  EXPECT_NE(out.find("refusing to query it with 'bert:/x'"), std::string::npos) << out;
}

TEST(Retriever, DamagedIndexFilesGiveClearErrors) {
  const fs::path dir = cepe::test::temp_dir("ret-damage");
  const fs::path idx = build(dir, "flat", "IVF4,Flat", 200);
  const fs::path other = build(dir, "other", "IVF4,Flat", 150);
  const fs::path d = dir / "d";
  struct Case {
    std::string name;
    std::function<void()> damage;
    std::string fragment;
  };
  // Opening checks every file's size and checksum first, so damage is named before any parser
  // (ours or FAISS's) reads the file.
  const std::vector<Case> cases = {
      {"truncated store", [&] { truncate_file(d / "passages.bin", 1000); },
       (d / "passages.bin").string() + ": truncated or resized (1000 bytes"},
      {"empty store", [&] { truncate_file(d / "passages.bin", 0); }, "truncated or resized (0"},
      {"missing store", [&] { fs::remove(d / "passages.bin"); },
       "passages.bin: missing (the index manifest lists it)"},
      {"truncated faiss", [&] { truncate_file(d / "faiss.index", 500); },
       (d / "faiss.index").string() + ": truncated or resized"},
      {"missing faiss", [&] { fs::remove(d / "faiss.index"); }, "faiss.index: missing"},
      {"truncated manifest", [&] { truncate_file(d / "manifest.json", 100); },
       (d / "manifest.json").string() + ": invalid JSON"},
      {"missing manifest", [&] { fs::remove(d / "manifest.json"); }, "is not a CEPE index"},
      {"store of another index",
       [&] {
         fs::copy_file(other / "passages.bin", d / "passages.bin",
                       fs::copy_options::overwrite_existing);
       },
       "passages.bin: truncated or resized"},
  };
  for (const auto& c : cases) {
    copy_dir(idx, d);
    ASSERT_EQ(open_error(d), "(no error)");
    c.damage();
    const std::string msg = open_error(d);
    EXPECT_NE(msg.find(c.fragment), std::string::npos) << c.name << ": " << msg;
  }
  // Without the checksums each component's own validation still names the file.
  cepe::index::OpenOptions unchecked;
  unchecked.skip_checksums = true;
  const std::vector<Case> structural = {
      {"truncated store", [&] { truncate_file(d / "passages.bin", 1000); },
       (d / "passages.bin").string() + ": truncated passage store"},
      {"empty store", [&] { truncate_file(d / "passages.bin", 0); }, "truncated passage store"},
      {"missing store", [&] { fs::remove(d / "passages.bin"); }, "cannot open"},
      {"truncated faiss", [&] { truncate_file(d / "faiss.index", 500); },
       "cannot read FAISS index " + (d / "faiss.index").string()},
      {"missing faiss", [&] { fs::remove(d / "faiss.index"); }, "faiss.index is missing"},
      {"store of another index",
       [&] {
         fs::copy_file(other / "passages.bin", d / "passages.bin",
                       fs::copy_options::overwrite_existing);
       },
       "150 stored passages, manifest says 200"},
  };
  for (const auto& c : structural) {
    copy_dir(idx, d);
    c.damage();
    const std::string msg = open_error(d, unchecked);
    EXPECT_NE(msg.find(c.fragment), std::string::npos) << c.name << ": " << msg;
  }
  // Corruption inside the store's data: the file checksum at open, the store's own with --verify.
  copy_dir(idx, d);
  {
    std::fstream f(d / "passages.bin", std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(200);
    f.put('#');
  }
  EXPECT_NE(open_error(d).find("passages.bin: checksum mismatch"), std::string::npos)
      << open_error(d);
  EXPECT_EQ(open_error(d, unchecked), "(no error)");
  cepe::index::OpenOptions verify = unchecked;
  verify.verify = true;
  EXPECT_NE(open_error(d, verify).find("passage store checksum mismatch"), std::string::npos);
}
