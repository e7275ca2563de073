// Retrieval benchmark: builds one index per configuration over a corpus (bm25, dense with any
// FAISS factory string, hybrid), then measures build time, size on disk, memory, query latency
// (single and batched) and gold-passage recall@1/5/20/100 on a question file, side by side with
// the first configuration as the baseline.
//
//   bench_retrieval --passages P.jsonl --questions Q.jsonl --work DIR
//                   [--index bm25 --index dense:Flat --index hybrid:Flat ...] [--sample N]
//                   [--embedder bert:DIR] [--seed S] [--latency-queries N] [--batch B]
//                   [--nprobe N] [--train-size N] [--reuse] [--json FILE]
//
// A configuration is bm25, dense:FACTORY or hybrid:FACTORY (the dense side uses the embedder given
// by --embedder, required for them). Questions are JSONL {question, passage_id};
// --sample 0 uses all of them. --reuse opens existing indexes in --work instead of building.
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
#include <vector>

#include "common/args.h"
#include "common/error.h"
#include "common/system.h"
#include "index/builder.h"
#include "index/open_index.h"
#include "retriever/retriever.h"

namespace {

using Clock = std::chrono::steady_clock;
namespace fs = std::filesystem;

// Resident memory of this process in MiB (VmRSS).
double rss_mib() {
  return static_cast<double>(cepe::process_stats().resident_bytes) / (1 << 20);
}

struct Question {
  std::string text;
  std::string gold;  // passage id
};

struct Result {
  std::string factory;  // the configuration
  std::string description;
  double build_seconds = 0;
  double embed_pps = 0;  // passages/s embedding + adding
  double build_pps = 0;  // passages/s for the whole build
  double train_seconds = 0;
  uint64_t bytes = 0;
  double recall[4] = {0, 0, 0, 0};  // @1, @5, @20, @100
  double rss_mib = 0;               // resident memory grown by opening and querying
  double single_p50_ms = 0, single_p99_ms = 0;
  double batch_p50_ms = 0, batch_p99_ms = 0;  // per batch
  double batch_qps = 0;
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

}  // namespace

int main(int argc, char** argv) try {
  cepe::Args args;
  args.option("passages", "corpus (.jsonl)")
      .option("questions", "questions with their gold passage_id (.jsonl)")
      .option("work", "directory for the indexes built")
      .multi("index",
             "bm25, dense:FACTORY or hybrid:FACTORY (repeat; default bm25, plus "
             "dense:Flat and hybrid:Flat when --embedder is given)")
      .option("embedder", "dense embedder spec (bert:DIR)")
      .flag("reuse", "reuse indexes already built in --work")
      .option("sample", "questions sampled for recall (0: all)", "10000")
      .option("seed", "sampling seed", "1234")
      .option("latency-queries", "questions timed one by one", "2000")
      .option("batch", "queries per batched search", "32")
      .option("nprobe", "IVF lists to visit (0: the index default)", "0")
      .option("train-size", "FAISS training vectors (0: the builder's default)", "0")
      .option("json", "also write the results as JSON here");
  args.parse(std::vector<std::string>(argv + 1, argv + argc));
  if (args.help_requested()) {
    std::cout << args.usage(
        "bench_retrieval --passages P.jsonl --questions Q.jsonl --work DIR "
        "[flags]");
    return 0;
  }
  CEPE_CHECK(args.has("passages") && args.has("questions") && args.has("work"),
             "--passages, --questions and --work are required");
  const fs::path passages = args.get("passages"), questions_file = args.get("questions"),
                 work = args.get("work");
  const fs::path json_out = args.has("json") ? fs::path(args.get("json")) : fs::path();
  std::vector<std::string> factories = args.get_all("index");
  const size_t sample = static_cast<size_t>(args.get_int("sample", 0, 1LL << 40));
  const size_t latency_queries = static_cast<size_t>(args.get_int("latency-queries", 0, 1LL << 40));
  const int batch = static_cast<int>(args.get_int("batch", 1, 1 << 20));
  const int nprobe = static_cast<int>(args.get_int("nprobe", 0, 1 << 20));
  const int64_t train_size = args.get_int("train-size", 0, 1LL << 40);
  const uint64_t seed = static_cast<uint64_t>(args.get_int("seed", 0, 1LL << 62));
  const bool reuse = args.is_set("reuse");
  const std::string embedder = args.has("embedder") ? args.get("embedder") : "";
  if (factories.empty() && embedder.empty()) factories = {"bm25"};
  if (factories.empty()) factories = {"bm25", "dense:Flat", "hybrid:Flat"};
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
  for (size_t c = 0; c < factories.size(); ++c) {
    Result r;
    r.factory = factories[c];
    cepe::index::BuildOptions bo;
    bo.inputs = {passages};
    bo.out = work / ("idx-" + dir_name(r.factory));
    const size_t colon = r.factory.find(':');
    bo.retriever = r.factory.substr(0, colon);
    if (colon != std::string::npos) bo.faiss = r.factory.substr(colon + 1);
    CEPE_CHECK(bo.retriever == "bm25" ? colon == std::string::npos : colon != std::string::npos,
               "--index " << r.factory << ": expected bm25, dense:FACTORY or hybrid:FACTORY");
    bo.embedder = embedder;
    bo.overwrite = true;
    bo.train_size = train_size;
    bo.defaults.nprobe = nprobe;
    if (reuse && fs::exists(bo.out / cepe::index::kManifestFile)) {
      const auto m = cepe::index::read_manifest(bo.out);
      r.build_seconds = m.build_seconds;
      r.build_pps = m.passages / m.build_seconds;
      r.embed_pps = m.embed_passages_per_second;
      r.bytes = cepe::index::directory_bytes(bo.out);
    } else {
      const auto br = cepe::index::build_index(bo);
      r.build_seconds = br.total_seconds;
      r.train_seconds = br.train_seconds;
      r.embed_pps = br.manifest.embed_passages_per_second;
      r.build_pps = br.manifest.passages / br.total_seconds;
      r.bytes = br.bytes_on_disk;
    }
    const double rss0 = rss_mib();
    auto ret = cepe::index::open_index(bo.out);
    r.description = ret->dense() ? ret->dense()->vectors().describe() : "Xapian BM25";

    // Row of every gold passage id.
    std::unordered_map<std::string, int64_t> row_of;
    const auto& store = ret->store();
    for (uint64_t i = 0; i < store.size(); ++i) row_of.emplace(std::string(store.get(i).id), i);

    // Recall: batched searches of every sampled question at k=100.
    constexpr int K = 100;
    cepe::retriever::SearchOptions so;
    so.k = K;
    uint64_t hit[4] = {0, 0, 0, 0};
    const int cut[4] = {1, 5, 20, 100};
    const size_t chunk = 1024;  // bounds FAISS's temporary score matrices
    for (size_t b = 0; b < texts.size(); b += chunk) {
      const size_t n = std::min(chunk, texts.size() - b);
      const std::vector<std::string> part(texts.begin() + b, texts.begin() + b + n);
      const auto ranked = ret->rank_batch(part, so);
      for (size_t q = 0; q < n; ++q) {
        auto it = row_of.find(qs[b + q].gold);
        CEPE_CHECK(it != row_of.end(),
                   "gold passage " << qs[b + q].gold << " is not in the corpus");
        const auto& rows = ranked[q].rows;
        for (size_t j = 0; j < rows.size(); ++j) {
          if (rows[j] != it->second) continue;
          for (int t = 0; t < 4; ++t) hit[t] += static_cast<int>(j) < cut[t];
          break;
        }
      }
    }
    for (int t = 0; t < 4; ++t) r.recall[t] = static_cast<double>(hit[t]) / texts.size();

    // Latency: end-to-end (analyse/embed + search + passage fetch), one question per call...
    so.k = 10;
    const size_t nl = std::min(latency_queries, texts.size());
    std::vector<double> single, batched;
    for (size_t q = 0; q < nl; ++q) {
      auto t = Clock::now();
      auto hits = ret->search(texts[q], so);
      single.push_back(ms_since(t));
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
    r.batch_p50_ms = percentile(batched, 0.5);
    r.batch_p99_ms = percentile(batched, 0.99);
    r.rss_mib = rss_mib() - rss0;
    std::printf(
        "%-16s built in %.1f s, %.1f MiB; recall@1/5/20/100 %.4f/%.4f/%.4f/%.4f; p50 %.3f ms\n",
        r.factory.c_str(), r.build_seconds, r.bytes / 1048576.0, r.recall[0], r.recall[1],
        r.recall[2], r.recall[3], r.single_p50_ms);
    std::fflush(stdout);
    results.push_back(r);
  }

  const Result& base = results.front();
  std::printf("\n%zu questions for recall, %zu for latency, batch %d; baseline %s\n", qs.size(),
              std::min(latency_queries, qs.size()), batch, base.factory.c_str());
  std::printf("%-16s %7s %7s %7s %7s | %9s %9s %7s | %9s %9s %7s | %8s %9s %7s %8s\n", "index",
              "R@1", "R@5", "R@20", "R@100", "1q p50ms", "1q p99ms", "x base", "B p50 ms", "B q/s",
              "x base", "build s", "MiB", "x base", "RSS MiB");
  for (const Result& r : results) {
    std::printf(
        "%-16s %7.4f %7.4f %7.4f %7.4f | %9.3f %9.3f %6.2fx | %9.2f %9.0f %6.2fx | %8.1f %9.1f "
        "%6.3fx %8.0f\n",
        r.factory.c_str(), r.recall[0], r.recall[1], r.recall[2], r.recall[3], r.single_p50_ms,
        r.single_p99_ms, r.single_p50_ms / base.single_p50_ms, r.batch_p50_ms, r.batch_qps,
        r.batch_qps / base.batch_qps, r.build_seconds, r.bytes / 1048576.0,
        static_cast<double>(r.bytes) / base.bytes, r.rss_mib);
  }
  std::printf(
      "(x base: latency ratio for 1q, throughput ratio for batches, size ratio for MiB; RSS: "
      "resident memory grown by opening and querying)\n");

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
      w.Key("index");
      w.String(r.factory.c_str());
      w.Key("description");
      w.String(r.description.c_str());
      num("recall_at_1", r.recall[0]);
      num("recall_at_5", r.recall[1]);
      num("recall_at_20", r.recall[2]);
      num("recall_at_100", r.recall[3]);
      num("rss_mib", r.rss_mib);
      num("single_p50_ms", r.single_p50_ms);
      num("single_p99_ms", r.single_p99_ms);
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
