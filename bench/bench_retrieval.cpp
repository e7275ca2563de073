// Retrieval benchmark: builds one index per FAISS factory string over a corpus with the lexical
// embedder, then measures build throughput, size on disk, query latency (single and batched),
// gold-passage recall@1/5/20 on a question file, and ANN recall@10 against exact Flat search.
//
//   bench_retrieval --passages P.jsonl --questions Q.jsonl --work DIR
//                   [--faiss Flat --faiss HNSW32 --faiss IVF256,PQ512 ...] [--sample N] [--seed S]
//                   [--latency-queries N] [--batch B] [--dim D] [--nprobe N]
//                   [--train-size N] [--json FILE]
//
// The first --faiss is the baseline (it should be Flat: ANN recall is measured against it).
// Questions are JSONL {question, passage_id}; --sample 0 uses all of them.
#include <omp.h>
#include <rapidjson/document.h>
#include <rapidjson/stringbuffer.h>
#include <rapidjson/writer.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <random>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "common/error.h"
#include "index/builder.h"
#include "retriever/retriever.h"

namespace {

using Clock = std::chrono::steady_clock;
namespace fs = std::filesystem;
using cepe::retriever::Retriever;

struct Question {
  std::string text;
  std::string gold;  // passage id
};

struct Result {
  std::string factory;
  std::string description;
  double build_seconds = 0;
  double embed_pps = 0;  // passages/s embedding + adding
  double build_pps = 0;  // passages/s for the whole build
  double train_seconds = 0;
  uint64_t bytes = 0;
  double recall[3] = {0, 0, 0};  // @1, @5, @20
  double ann_recall10 = 1;
  double single_p50_ms = 0, single_p99_ms = 0;
  double batch_p50_ms = 0, batch_p99_ms = 0;  // per batch
  double batch_qps = 0;
  double search_only_p50_ms = 0;
};

std::vector<Question> read_questions(const fs::path& path) {
  std::ifstream in(path);
  CEPE_CHECK(in, "cannot open " << path.string());
  std::vector<Question> out;
  std::string line;
  uint64_t ln = 0;
  rapidjson::Document d;
  while (std::getline(in, line)) {
    ++ln;
    if (line.empty()) continue;
    d.Parse(line.c_str());
    CEPE_CHECK(!d.HasParseError() && d.IsObject() && d.HasMember("question") &&
                   d["question"].IsString() && d.HasMember("passage_id") &&
                   d["passage_id"].IsString(),
               path.string() << ":" << ln << ": expected {\"question\": ..., \"passage_id\": ...}");
    out.push_back({d["question"].GetString(), d["passage_id"].GetString()});
  }
  return out;
}

double percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const size_t i = std::min(v.size() - 1, static_cast<size_t>(p * (v.size() - 1) + 0.5));
  return v[i];
}

double ms_since(Clock::time_point t) {
  return std::chrono::duration<double, std::milli>(Clock::now() - t).count();
}

std::string dir_name(const std::string& factory) {
  std::string s;
  for (char c : factory) s += std::isalnum(static_cast<unsigned char>(c)) ? c : '_';
  return s;
}

void usage() {
  std::cerr << "usage: bench_retrieval --passages P.jsonl --questions Q.jsonl --work DIR [--faiss "
               "STRING]... [--sample N] [--seed S] [--latency-queries N] [--batch B] [--dim D] "
               "[--nprobe N] [--train-size N] [--json FILE]\n";
}

}  // namespace

int main(int argc, char** argv) try {
  fs::path passages, questions_file, work, json_out;
  std::vector<std::string> factories;
  size_t sample = 10000, latency_queries = 2000;
  int batch = 32, dim = 0, nprobe = 0;
  int64_t train_size = 0;
  uint64_t seed = 1234;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto value = [&]() -> std::string {
      CEPE_CHECK(i + 1 < argc, "flag " << a << " needs a value");
      return argv[++i];
    };
    if (a == "--passages")
      passages = value();
    else if (a == "--questions")
      questions_file = value();
    else if (a == "--work")
      work = value();
    else if (a == "--faiss")
      factories.push_back(value());
    else if (a == "--sample")
      sample = std::stoull(value());
    else if (a == "--seed")
      seed = std::stoull(value());
    else if (a == "--latency-queries")
      latency_queries = std::stoull(value());
    else if (a == "--batch")
      batch = std::stoi(value());
    else if (a == "--dim")
      dim = std::stoi(value());
    else if (a == "--nprobe")
      nprobe = std::stoi(value());
    else if (a == "--train-size")
      train_size = std::stoll(value());
    else if (a == "--json")
      json_out = value();
    else {
      usage();
      return 2;
    }
  }
  if (passages.empty() || questions_file.empty() || work.empty()) {
    usage();
    return 2;
  }
  if (factories.empty()) factories = {"Flat", "HNSW32", "IVF256,PQ512"};
  fs::create_directories(work);

  // Questions: a fixed sample (seeded) for recall; the first latency_queries of it for latency.
  std::vector<Question> all = read_questions(questions_file);
  std::vector<Question> qs = all;
  if (sample > 0 && sample < all.size()) {
    std::mt19937_64 rng(seed);
    std::shuffle(qs.begin(), qs.end(), rng);
    qs.resize(sample);
  }
  std::vector<std::string> texts;
  for (const auto& q : qs) texts.push_back(q.text);
  const int threads = omp_get_max_threads();
  std::printf("corpus %s, %zu of %zu questions (seed %llu), %d OpenMP threads\n",
              passages.string().c_str(), qs.size(), all.size(),
              static_cast<unsigned long long>(seed), threads);

  std::vector<Result> results;
  std::vector<int64_t> flat_top10;
  for (size_t c = 0; c < factories.size(); ++c) {
    Result r;
    r.factory = factories[c];
    cepe::index::BuildOptions bo;
    bo.inputs = {passages};
    bo.out = work / ("idx-" + dir_name(r.factory));
    bo.faiss = r.factory;
    bo.dim = dim;
    bo.overwrite = true;
    bo.train_size = train_size;
    bo.defaults.nprobe = nprobe;
    const auto br = cepe::index::build_index(bo);
    r.build_seconds = br.total_seconds;
    r.train_seconds = br.train_seconds;
    r.embed_pps = br.manifest.embed_passages_per_second;
    r.build_pps = br.manifest.passages / br.total_seconds;
    r.bytes = br.bytes_on_disk;
    auto ret = Retriever::open(bo.out);
    r.description = ret->vectors().describe();

    // Row of every gold passage id.
    std::unordered_map<std::string, int64_t> row_of;
    const auto& store = ret->passages();
    for (uint64_t i = 0; i < store.size(); ++i) row_of.emplace(std::string(store.get(i).id), i);
    const int dimv = ret->embedder().dim();
    std::vector<float> qv(texts.size() * dimv);
    ret->embedder().embed_queries(texts, qv.data());

    // Recall: one batched search of every sampled question at k=20.
    constexpr int K = 20;
    std::vector<float> scores(texts.size() * K);
    std::vector<int64_t> rows(texts.size() * K);
    cepe::retriever::SearchOptions so;
    so.k = K;
    const int64_t chunk = 4096;  // bounds FAISS's temporary score matrices
    for (size_t b = 0; b < texts.size(); b += chunk) {
      const int64_t n = std::min<int64_t>(chunk, texts.size() - b);
      ret->search_vectors(n, qv.data() + b * dimv, so, scores.data() + b * K, rows.data() + b * K);
    }
    uint64_t hit[3] = {0, 0, 0};
    const int cut[3] = {1, 5, 20};
    uint64_t ann_found = 0, ann_total = 0;
    std::vector<int64_t> top10(texts.size() * 10);
    for (size_t q = 0; q < texts.size(); ++q) {
      auto it = row_of.find(qs[q].gold);
      CEPE_CHECK(it != row_of.end(), "gold passage " << qs[q].gold << " is not in the corpus");
      for (int j = 0; j < K; ++j) {
        if (rows[q * K + j] != it->second) continue;
        for (int t = 0; t < 3; ++t) hit[t] += j < cut[t];
        break;
      }
      for (int j = 0; j < 10; ++j) top10[q * 10 + j] = rows[q * K + j];
      if (c > 0) {
        std::unordered_set<int64_t> mine(top10.begin() + q * 10, top10.begin() + q * 10 + 10);
        for (int j = 0; j < 10; ++j) {
          const int64_t want = flat_top10[q * 10 + j];
          if (want < 0) continue;
          ++ann_total;
          ann_found += mine.count(want);
        }
      }
    }
    for (int t = 0; t < 3; ++t) r.recall[t] = static_cast<double>(hit[t]) / texts.size();
    if (c == 0)
      flat_top10 = top10;
    else
      r.ann_recall10 = ann_total ? static_cast<double>(ann_found) / ann_total : 0;

    // Latency: end-to-end (embed + search + passage fetch), one question per call...
    so.k = 10;
    const size_t nl = std::min(latency_queries, texts.size());
    std::vector<double> single, search_only, batched;
    for (size_t q = 0; q < nl; ++q) {
      auto t = Clock::now();
      auto hits = ret->search(texts[q], so);
      single.push_back(ms_since(t));
      t = Clock::now();
      ret->search_vectors(1, qv.data() + q * dimv, so, scores.data(), rows.data());
      search_only.push_back(ms_since(t));
    }
    // ...and `batch` questions per call.
    const auto tb = Clock::now();
    size_t done = 0;
    for (size_t b = 0; b + batch <= nl; b += batch) {
      std::vector<std::string> part(texts.begin() + b, texts.begin() + b + batch);
      auto t = Clock::now();
      auto hits = ret->search_batch(part, so);
      batched.push_back(ms_since(t));
      done += part.size();
    }
    r.batch_qps = done / (ms_since(tb) / 1000);
    r.single_p50_ms = percentile(single, 0.5);
    r.single_p99_ms = percentile(single, 0.99);
    r.search_only_p50_ms = percentile(search_only, 0.5);
    r.batch_p50_ms = percentile(batched, 0.5);
    r.batch_p99_ms = percentile(batched, 0.99);
    std::printf(
        "%-16s built in %.1f s (%.0f passages/s embed+add), %.1f MiB; recall@1/5/20 "
        "%.4f/%.4f/%.4f; ANN recall@10 %.4f\n",
        r.factory.c_str(), r.build_seconds, r.embed_pps, r.bytes / 1048576.0, r.recall[0],
        r.recall[1], r.recall[2], r.ann_recall10);
    std::fflush(stdout);
    results.push_back(r);
  }

  const Result& base = results.front();
  std::printf("\n%zu questions for recall, %zu for latency, batch %d; baseline %s\n", qs.size(),
              std::min(latency_queries, qs.size()), batch, base.factory.c_str());
  std::printf("%-16s %8s %8s %8s %9s %9s | %9s %9s %7s | %9s %9s %9s %7s | %9s %9s %7s\n", "faiss",
              "R@1", "R@5", "R@20", "dR@20", "ANN R@10", "1q p50ms", "1q p99ms", "x base",
              "B p50 ms", "B p99 ms", "B q/s", "x base", "build p/s", "MiB", "x base");
  for (const Result& r : results) {
    std::printf(
        "%-16s %8.4f %8.4f %8.4f %+9.4f %9.4f | %9.3f %9.3f %6.2fx | %9.2f %9.2f %9.0f %6.2fx | "
        "%9.0f %9.1f %6.3fx\n",
        r.factory.c_str(), r.recall[0], r.recall[1], r.recall[2], r.recall[2] - base.recall[2],
        r.ann_recall10, r.single_p50_ms, r.single_p99_ms, r.single_p50_ms / base.single_p50_ms,
        r.batch_p50_ms, r.batch_p99_ms, r.batch_qps, r.batch_qps / base.batch_qps, r.build_pps,
        r.bytes / 1048576.0, static_cast<double>(r.bytes) / base.bytes);
  }
  std::printf(
      "(x base: latency ratio for 1q, throughput ratio for batches, size ratio for MiB; "
      "search-only p50 ms without embedding:");
  for (const Result& r : results) std::printf(" %s %.3f", r.factory.c_str(), r.search_only_p50_ms);
  std::printf(")\n");

  if (!json_out.empty()) {
    rapidjson::StringBuffer sb;
    rapidjson::Writer<rapidjson::StringBuffer> w(sb);
    w.StartObject();
    w.Key("questions");
    w.Uint64(qs.size());
    w.Key("threads");
    w.Int(threads);
    w.Key("results");
    w.StartArray();
    for (const Result& r : results) {
      w.StartObject();
      auto num = [&](const char* k, double v) {
        w.Key(k);
        w.Double(v);
      };
      w.Key("faiss");
      w.String(r.factory.c_str());
      w.Key("description");
      w.String(r.description.c_str());
      num("recall_at_1", r.recall[0]);
      num("recall_at_5", r.recall[1]);
      num("recall_at_20", r.recall[2]);
      num("ann_recall_at_10", r.ann_recall10);
      num("single_p50_ms", r.single_p50_ms);
      num("single_p99_ms", r.single_p99_ms);
      num("search_only_p50_ms", r.search_only_p50_ms);
      num("batch_p50_ms", r.batch_p50_ms);
      num("batch_p99_ms", r.batch_p99_ms);
      num("batch_qps", r.batch_qps);
      num("build_seconds", r.build_seconds);
      num("train_seconds", r.train_seconds);
      num("build_passages_per_second", r.build_pps);
      num("embed_passages_per_second", r.embed_pps);
      num("bytes_on_disk", static_cast<double>(r.bytes));
      w.EndObject();
    }
    w.EndArray();
    w.EndObject();
    std::ofstream(json_out) << sb.GetString() << "\n";
  }
  return 0;
} catch (const std::exception& e) {
  std::cerr << "bench_retrieval: error: " << e.what() << "\n";
  return 1;
}
