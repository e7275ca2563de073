// BM25 (Xapian) and hybrid retrieval: scores equal the Okapi BM25 formula computed by hand, the
// analyzer settings (stemmer, stop words, k1, b) take effect and bad ones are named, shards give
// the same results as one database, reciprocal rank fusion matches a hand computation and its
// weights select either side, and BM25 recall on SQuAD meets its target.
#include <gtest/gtest.h>

#include <cmath>
#include <fstream>
#include <map>
#include <random>
#include <sstream>
#include <thread>
#include <unordered_map>

#include "common/error.h"
#include "index/builder.h"
#include "index/open_index.h"
#include "retriever/bm25.h"
#include "retriever/retriever.h"
#include "tests/test_util.h"

namespace fs = std::filesystem;
using cepe::index::open_index;
using cepe::retriever::SearchOptions;

namespace {

fs::path write_jsonl(const fs::path& dir, const std::vector<std::string>& texts) {
  const fs::path f = dir / "corpus.jsonl";
  std::ofstream out(f);
  for (size_t i = 0; i < texts.size(); ++i)
    out << "{\"id\": \"d" << i << "\", \"title\": \"\", \"text\": \"" << texts[i] << "\"}\n";
  return f;
}

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const cepe::Error& e) {
    return e.message();
  }
  return "(no error)";
}

// A topical corpus: five topics, filler words, one unique word each.
fs::path topic_corpus(const fs::path& dir, int n) {
  const char* topics[][6] = {
      {"volcano", "lava", "eruption", "magma", "crater", "ash"},
      {"violin", "orchestra", "symphony", "concerto", "composer", "melody"},
      {"galaxy", "telescope", "nebula", "planet", "orbit", "comet"},
      {"castle", "knight", "siege", "moat", "fortress", "crown"},
      {"protein", "enzyme", "molecule", "cell", "membrane", "gene"},
  };
  const char* filler[] = {"river", "old", "north", "people", "large", "early", "known", "city"};
  std::mt19937 rng(7);
  std::vector<std::string> texts;
  for (int i = 0; i < n; ++i) {
    std::string t;
    for (int w = 0; w < 30; ++w)
      t += std::string(rng() % 3 ? topics[i % 5][rng() % 6] : filler[rng() % 8]) + " ";
    texts.push_back(t + "number" + std::to_string(i));
  }
  return write_jsonl(dir, texts);
}

std::vector<int64_t> rows_of(const std::vector<cepe::retriever::Hit>& hits) {
  std::vector<int64_t> out;
  for (const auto& h : hits) out.push_back(static_cast<int64_t>(h.row));
  return out;
}

}  // namespace

TEST(Bm25, ScoresEqualOkapiBm25ComputedByHand) {
  const fs::path dir = cepe::test::temp_dir("bm25-hand");
  const std::vector<std::string> texts = {"apple banana apple",
                                          "banana cherry",
                                          "cherry date elder fig",
                                          "grape",
                                          "kiwi lemon",
                                          "mango nectarine kiwi",
                                          "olive",
                                          "papaya quince",
                                          "raspberry strawberry",
                                          "tangerine apple ugli vanilla watermelon"};
  for (const auto& [k1, b] : std::vector<std::pair<double, double>>{{0.9, 0.4}, {1.2, 0.75}}) {
    cepe::index::BuildOptions o;
    o.inputs = {write_jsonl(dir, texts)};
    o.out = dir / "idx";
    o.overwrite = true;
    o.bm25.k1 = k1;
    o.bm25.b = b;
    o.bm25.stemmer = "none";
    o.bm25.stopwords = "none";
    cepe::index::build_index(o);
    auto r = open_index(o.out);
    ASSERT_NE(r->bm25(), nullptr);
    EXPECT_EQ(r->backend(), "bm25");
    // By hand: idf = log((N - n + 0.5) / (n + 0.5)) (Xapian maps values below 2 to x/2 + 1 so
    // that common terms keep a small positive weight), tf part = (k1 + 1) wdf / (K + wdf),
    // K = k1 ((1 - b) + b max(len / avglen, 0.5)).
    std::vector<std::map<std::string, int>> tf(texts.size());
    double total = 0;
    std::vector<double> len(texts.size());
    for (size_t d = 0; d < texts.size(); ++d) {
      std::istringstream in(texts[d]);
      std::string w;
      while (in >> w) ++tf[d][w], ++len[d];
      total += len[d];
    }
    const double N = static_cast<double>(texts.size()), avg = total / N;
    const std::vector<std::string> query = {"apple", "cherry"};
    std::vector<std::pair<double, int64_t>> want;
    for (size_t d = 0; d < texts.size(); ++d) {
      double score = 0;
      for (const auto& t : query) {
        if (!tf[d].count(t)) continue;
        double n = 0;
        for (const auto& m : tf) n += m.count(t);
        double x = (N - n + 0.5) / (n + 0.5);
        if (x < 2) x = x * 0.5 + 1;
        const double K = k1 * ((1 - b) + b * std::max(len[d] / avg, 0.5));
        score += std::log(x) * (k1 + 1) * tf[d][t] / (K + tf[d][t]);
      }
      if (score > 0) want.push_back({-score, static_cast<int64_t>(d)});
    }
    std::sort(want.begin(), want.end());
    SearchOptions so;
    so.k = 10;
    const auto hits = r->search("Apple, cherry!", so);
    ASSERT_EQ(hits.size(), want.size());
    for (size_t i = 0; i < want.size(); ++i) {
      EXPECT_EQ(static_cast<int64_t>(hits[i].row), want[i].second) << "k1 " << k1 << " rank " << i;
      EXPECT_NEAR(hits[i].score, -want[i].first, 1e-5 * -want[i].first) << "k1 " << k1;
      EXPECT_EQ(hits[i].id, std::string("d").append(std::to_string(want[i].second)));
    }
  }
}

TEST(Bm25, AnalyzerSettingsApplyAndBadOnesAreNamed) {
  cepe::retriever::Bm25Config c;
  EXPECT_NO_THROW(cepe::retriever::check_bm25_config(c));
  const fs::path dir = cepe::test::temp_dir("bm25-cfg");
  cepe::index::BuildOptions o;
  o.inputs = {write_jsonl(dir, {"The dogs were running in the parks", "a cat sleeps"})};
  o.out = dir / "idx";
  cepe::index::build_index(o);
  auto r = open_index(o.out);
  const auto terms = r->bm25()->searcher().query_terms("Where are the running dogs?");
  EXPECT_EQ(terms, (std::map<std::string, int>{{"dog", 1}, {"run", 1}}));
  SearchOptions so;
  so.k = 5;
  EXPECT_EQ(rows_of(r->search("dog running", so)), (std::vector<int64_t>{0}));
  EXPECT_TRUE(r->search("the of and what", so).empty());  // only stop words: no terms, no hits
  // A stop word file, and no stemming.
  std::ofstream(dir / "stop.txt") << "dogs\nparks\n";
  cepe::retriever::Bm25Config f;
  f.stemmer = "none";
  f.stopwords = (dir / "stop.txt").string();
  cepe::retriever::Bm25Searcher s({(o.out / "bm25.xapian").string()}, f);
  EXPECT_EQ(s.query_terms("the dogs running"),
            (std::map<std::string, int>{{"running", 1}, {"the", 1}}));
  auto bad = c;
  bad.stemmer = "klingon";
  EXPECT_NE(
      error_of([&] { cepe::retriever::check_bm25_config(bad); }).find("bm25 stemmer 'klingon'"),
      std::string::npos);
  bad = c;
  bad.stopwords = (dir / "nope.txt").string();
  EXPECT_NE(error_of([&] { cepe::retriever::check_bm25_config(bad); }).find("bm25 stop words"),
            std::string::npos);
  bad = c;
  bad.b = 1.5;
  EXPECT_NE(
      error_of([&] { cepe::retriever::check_bm25_config(bad); }).find("bm25 b must be in [0, 1]"),
      std::string::npos);
  bad = c;
  bad.k1 = -1;
  EXPECT_NE(error_of([&] { cepe::retriever::check_bm25_config(bad); }).find("bm25 k1"),
            std::string::npos);
  // The build refuses them before reading the corpus.
  o.out = dir / "idx2";
  o.bm25.stemmer = "klingon";
  EXPECT_NE(error_of([&] { cepe::index::build_index(o); }).find("klingon"), std::string::npos);
  EXPECT_FALSE(fs::exists(o.out));
}

TEST(Bm25, ShardsSearchLikeOneDatabaseAndConcurrentSearchesAgree) {
  const fs::path dir = cepe::test::temp_dir("bm25-shards");
  cepe::index::BuildOptions o;
  o.inputs = {topic_corpus(dir, 500)};
  o.out = dir / "idx";
  cepe::index::build_index(o);
  auto one = open_index(o.out);
  const auto shards = cepe::retriever::split_bm25(o.out / "bm25.xapian", 3, dir / "shards");
  ASSERT_EQ(shards.size(), 3u);
  cepe::index::OpenOptions so3;
  for (const auto& s : shards) so3.bm25_shards.push_back(s.string());
  auto sharded = open_index(o.out, so3);
  SearchOptions so;
  so.k = 20;
  std::vector<std::string> qs;
  for (int i = 0; i < 30; ++i)
    qs.push_back("lava orchestra number" + std::to_string(i * 13) + (i % 2 ? " castle moat" : ""));
  const auto want = one->search_batch(qs, so);
  EXPECT_EQ(one->search("number123", so).front().id, "d123");
  for (size_t q = 0; q < qs.size(); ++q) {
    const auto got = sharded->search(qs[q], so);
    ASSERT_EQ(rows_of(got), rows_of(want[q])) << qs[q];
    for (size_t j = 0; j < got.size(); ++j) EXPECT_FLOAT_EQ(got[j].score, want[q][j].score);
  }
  // One shard alone holds a third of the documents: the open is refused, not served wrongly.
  cepe::index::OpenOptions partial;
  partial.bm25_shards = {shards[0].string()};
  EXPECT_NE(error_of([&] { open_index(o.out, partial); }).find("manifest says 500"),
            std::string::npos);
  // Threads share one searcher (each search takes its own Xapian handle).
  std::vector<int> mismatches(4, 0);
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t)
    threads.emplace_back([&, t] {
      for (int rep = 0; rep < 5; ++rep)
        for (size_t q = t; q < qs.size(); q += 4)
          if (rows_of(one->search(qs[q], so)) != rows_of(want[q])) ++mismatches[t];
    });
  for (auto& th : threads) th.join();
  EXPECT_EQ(mismatches, std::vector<int>(4, 0));
}

TEST(Hybrid, RrfMatchesHandComputation) {
  cepe::retriever::RankedRows a{{5, 3, 9}, {10, 9, 8}}, b{{3, 7, 5}, {0.9f, 0.8f, 0.7f}};
  // row 3: 1/(60+2) + 2/(60+1); row 5: 1/61 + 2/63; row 7: 2/62; row 9: 1/63.
  const auto f = cepe::retriever::fuse_rrf({&a, &b}, {1.0, 2.0}, 60, 3);
  ASSERT_EQ(f.rows, (std::vector<int64_t>{3, 5, 7}));
  EXPECT_FLOAT_EQ(f.scores[0], static_cast<float>(1.0 / 62 + 2.0 / 61));
  EXPECT_FLOAT_EQ(f.scores[1], static_cast<float>(1.0 / 61 + 2.0 / 63));
  EXPECT_FLOAT_EQ(f.scores[2], static_cast<float>(2.0 / 62));
  // A zero weight drops a side; ties go to the smaller row.
  const auto only_a = cepe::retriever::fuse_rrf({&a, &b}, {1.0, 0.0}, 0, 10);
  EXPECT_EQ(only_a.rows, (std::vector<int64_t>{5, 3, 9}));
  cepe::retriever::RankedRows c{{8}, {1}}, d{{2}, {1}};
  EXPECT_EQ(cepe::retriever::fuse_rrf({&c, &d}, {1.0, 1.0}, 60, 2).rows,
            (std::vector<int64_t>{2, 8}));
}

TEST(Hybrid, WeightsSelectEitherSideAndBadWeightsAreRefused) {
  const fs::path dir = cepe::test::temp_dir("hybrid");
  const fs::path corpus = topic_corpus(dir, 400);
  cepe::index::BuildOptions o;
  o.inputs = {corpus};
  o.out = dir / "hybrid";
  o.retriever = "hybrid";
  o.embedder = "bert:" + (cepe::test::source_dir() / "tests" / "fixtures" / "bert_tiny").string();
  cepe::index::build_index(o);
  o.out = dir / "bm25";
  o.retriever = "bm25";
  cepe::index::build_index(o);
  o.out = dir / "dense";
  o.retriever = "dense";
  cepe::index::build_index(o);
  auto h = open_index(dir / "hybrid");
  auto b = open_index(dir / "bm25");
  auto d = open_index(dir / "dense");
  EXPECT_EQ(h->backend(), "hybrid");
  EXPECT_EQ(h->manifest().retriever, "hybrid");
  ASSERT_NE(h->bm25(), nullptr);
  ASSERT_NE(h->dense(), nullptr);
  SearchOptions so;
  so.k = 10;
  SearchOptions bm25_only = so, dense_only = so;
  bm25_only.dense_weight = 0;
  dense_only.bm25_weight = 0;
  int differ = 0;
  for (int i = 0; i < 20; ++i) {
    const std::string q = "magma comet number" + std::to_string(i * 17) + " siege";
    // RRF over one side keeps that side's order (ties in the dense side aside, compared by set).
    EXPECT_EQ(rows_of(h->search(q, bm25_only)), rows_of(b->search(q, so))) << q;
    auto hd = rows_of(h->search(q, dense_only)), dd = rows_of(d->search(q, so));
    std::sort(hd.begin(), hd.end());
    std::sort(dd.begin(), dd.end());
    EXPECT_EQ(hd, dd) << q;
    const auto both = h->search(q, so);
    ASSERT_EQ(both.size(), 10u);
    for (size_t j = 1; j < both.size(); ++j) EXPECT_GE(both[j - 1].score, both[j].score);
    differ += rows_of(both) != rows_of(b->search(q, so));
  }
  EXPECT_GT(differ, 0);  // fusion changes rankings
  SearchOptions bad = so;
  bad.bm25_weight = 0;
  bad.dense_weight = 0;
  EXPECT_NE(error_of([&] { h->search("lava", bad); }).find("cannot both be 0"), std::string::npos);
  bad = so;
  bad.dense_weight = -1;
  EXPECT_NE(error_of([&] { h->search("lava", bad); }).find("dense_weight must be"),
            std::string::npos);
  bad.dense_weight = NAN;
  EXPECT_NE(error_of([&] { h->search("lava", bad); }).find("dense_weight must be"),
            std::string::npos);
}

TEST(Bm25, SquadRecallAndSizeTargets) {
  CEPE_REQUIRE_SHARED("data/squad-train/passages.jsonl", passages);
  CEPE_REQUIRE_SHARED("data/squad-train/questions.jsonl", questions);
  const fs::path dir = cepe::test::temp_dir("bm25-squad");
  cepe::index::BuildOptions o;
  o.inputs = {passages};
  o.out = dir / "bm25";
  const auto built = cepe::index::build_index(o);
  auto r = open_index(o.out);
  std::unordered_map<std::string, uint64_t> row_of;
  for (uint64_t i = 0; i < r->store().size(); ++i)
    row_of.emplace(std::string(r->store().get(i).id), i);
  // Every 40th question: a fixed sample of 2,190 spread over all articles.
  std::ifstream in(questions);
  std::vector<std::string> qs;
  std::vector<uint64_t> gold;
  std::string line;
  for (int n = 0; std::getline(in, line); ++n) {
    if (n % 40) continue;
    auto field = [&](const std::string& key) {
      const size_t k = line.find("\"" + key + "\": \"");
      std::string v;
      for (size_t i = k + key.size() + 5; i < line.size() && line[i] != '"'; ++i) {
        if (line[i] == '\\') ++i;
        v += line[i];
      }
      return v;
    };
    const auto it = row_of.find(field("passage_id"));
    ASSERT_NE(it, row_of.end()) << line;
    qs.push_back(field("question"));
    gold.push_back(it->second);
  }
  SearchOptions so;
  so.k = 20;
  const auto hits = r->search_batch(qs, so);
  int at20 = 0;
  for (size_t i = 0; i < qs.size(); ++i)
    for (const auto& h : hits[i]) at20 += h.row == gold[i];
  const double r20 = static_cast<double>(at20) / qs.size();
  std::printf("SQuAD BM25 on %zu questions: recall@20 %.4f, %.1f MiB on disk\n", qs.size(), r20,
              built.bytes_on_disk / 1048576.0);
  EXPECT_GE(r20, 0.90);  // issue 16's target
  // The retired hashed TF-IDF Flat index was 316 MiB here; BM25 with the passage store is far
  // smaller.
  EXPECT_LT(built.bytes_on_disk, 100u << 20);
}
