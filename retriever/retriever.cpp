#include "retriever/retriever.h"

#include <algorithm>
#include <cmath>
#include <exception>
#include <mutex>
#include <unordered_map>

#include "common/error.h"

namespace cepe::retriever {

void check_search_options(const SearchOptions& o) {
  CEPE_CHECK(o.k > 0, "k must be positive (got " << o.k << ")");
  CEPE_CHECK(std::isfinite(o.bm25_weight) && o.bm25_weight >= 0,
             "bm25_weight must be a non-negative number (got " << o.bm25_weight << ")");
  CEPE_CHECK(std::isfinite(o.dense_weight) && o.dense_weight >= 0,
             "dense_weight must be a non-negative number (got " << o.dense_weight << ")");
  CEPE_CHECK(o.bm25_weight > 0 || o.dense_weight > 0,
             "bm25_weight and dense_weight cannot both be 0");
  CEPE_CHECK(o.rrf_k >= 0, "rrf_k must be non-negative (got " << o.rrf_k << ")");
  CEPE_CHECK(o.fusion_depth >= 0,
             "fusion_depth must be non-negative (got " << o.fusion_depth << ")");
}

std::vector<Hit> Retriever::search(const std::string& query, const SearchOptions& options) const {
  return search_batch({query}, options).front();
}

std::vector<std::vector<Hit>> Retriever::search_batch(const std::vector<std::string>& queries,
                                                      const SearchOptions& options) const {
  check_search_options(options);
  if (queries.empty()) return {};
  const std::vector<RankedRows> ranked = rank_batch(queries, options);
  const PassageLookup& store = passages();
  std::vector<std::vector<Hit>> out(ranked.size());
  for (size_t q = 0; q < ranked.size(); ++q) {
    for (size_t j = 0; j < ranked[q].rows.size(); ++j) {
      const int64_t row = ranked[q].rows[j];
      if (row < 0) continue;  // fewer than k results (tiny index or few IVF lists probed)
      const PassageView v = store.get(static_cast<uint64_t>(row));
      Hit h;
      h.row = static_cast<uint64_t>(row);
      h.id = std::string(v.id);
      h.title = std::string(v.title);
      h.text = std::string(v.text);
      h.score = ranked[q].scores[j];
      h.rank = static_cast<int>(out[q].size()) + 1;
      out[q].push_back(std::move(h));
    }
  }
  return out;
}

DenseRetriever::DenseRetriever(std::unique_ptr<Embedder> embedder,
                               std::unique_ptr<VectorIndex> vectors, const PassageLookup& passages)
    : embedder_(std::move(embedder)), vectors_(std::move(vectors)), passages_(passages) {}

void DenseRetriever::search_vectors(int64_t n, const float* queries, const SearchOptions& options,
                                    float* scores, int64_t* rows) const {
  SearchParams p;
  p.nprobe = options.nprobe;
  p.ef_search = options.ef_search;
  vectors_->search(n, queries, options.k, p, scores, rows);
}

std::vector<RankedRows> DenseRetriever::rank_batch(const std::vector<std::string>& queries,
                                                   const SearchOptions& options) const {
  CEPE_CHECK(options.k > 0, "k must be positive (got " << options.k << ")");
  const int64_t n = static_cast<int64_t>(queries.size());
  if (n == 0) return {};
  const int dim = embedder_->dim();
  std::vector<float> vecs(static_cast<size_t>(n) * dim);
  embedder_->embed_queries(queries, vecs.data());
  const size_t k = static_cast<size_t>(options.k);
  std::vector<float> scores(static_cast<size_t>(n) * k);
  std::vector<int64_t> rows(static_cast<size_t>(n) * k);
  search_vectors(n, vecs.data(), options, scores.data(), rows.data());
  std::vector<RankedRows> out(static_cast<size_t>(n));
  for (size_t q = 0; q < out.size(); ++q) {
    for (size_t j = 0; j < k; ++j) {
      const int64_t row = rows[q * k + j];
      if (row < 0) continue;
      out[q].rows.push_back(row);
      out[q].scores.push_back(scores[q * k + j]);
    }
  }
  return out;
}

Bm25Retriever::Bm25Retriever(std::unique_ptr<Bm25Searcher> searcher, const PassageLookup& passages)
    : searcher_(std::move(searcher)), passages_(passages) {}

std::vector<RankedRows> Bm25Retriever::rank_batch(const std::vector<std::string>& queries,
                                                  const SearchOptions& options) const {
  std::vector<RankedRows> out(queries.size());
  // Queries are independent and the searcher is thread-safe (a database per concurrent search),
  // so a batch uses every core; the first error is rethrown after the loop.
  std::exception_ptr error;
  std::mutex error_mu;
  const int64_t n = static_cast<int64_t>(queries.size());
#pragma omp parallel for schedule(dynamic, 1) if (n > 1)
  for (int64_t q = 0; q < n; ++q) {
    try {
      searcher_->search(queries[q], options.k, &out[q].rows, &out[q].scores);
    } catch (...) {
      std::lock_guard<std::mutex> lock(error_mu);
      if (!error) error = std::current_exception();
    }
  }
  if (error) std::rethrow_exception(error);
  return out;
}

RankedRows fuse_rrf(const std::vector<const RankedRows*>& rankings,
                    const std::vector<double>& weights, int rrf_k, int k) {
  CEPE_CHECK(rankings.size() == weights.size(), "internal: one RRF weight per ranking");
  std::unordered_map<int64_t, double> fused;
  for (size_t s = 0; s < rankings.size(); ++s) {
    if (weights[s] <= 0) continue;
    const auto& rows = rankings[s]->rows;
    for (size_t j = 0; j < rows.size(); ++j)
      fused[rows[j]] += weights[s] / (rrf_k + static_cast<double>(j + 1));
  }
  std::vector<std::pair<int64_t, double>> all(fused.begin(), fused.end());
  const size_t keep = std::min(all.size(), static_cast<size_t>(std::max(k, 0)));
  std::partial_sort(all.begin(), all.begin() + static_cast<std::ptrdiff_t>(keep), all.end(),
                    [](const auto& a, const auto& b) {
                      return a.second != b.second ? a.second > b.second : a.first < b.first;
                    });
  RankedRows out;
  for (size_t i = 0; i < keep; ++i) {
    out.rows.push_back(all[i].first);
    out.scores.push_back(static_cast<float>(all[i].second));
  }
  return out;
}

HybridRetriever::HybridRetriever(std::unique_ptr<Bm25Retriever> bm25,
                                 std::unique_ptr<DenseRetriever> dense)
    : bm25_(std::move(bm25)), dense_(std::move(dense)) {
  CEPE_CHECK(&bm25_->passages() == &dense_->passages(),
             "internal: hybrid sides must share one passage store");
}

std::vector<RankedRows> HybridRetriever::rank_batch(const std::vector<std::string>& queries,
                                                    const SearchOptions& options) const {
  check_search_options(options);
  SearchOptions side = options;
  side.k = options.fusion_depth > 0 ? options.fusion_depth : std::max(options.k, 100);
  std::vector<RankedRows> bm25, dense;
  if (options.bm25_weight > 0) bm25 = bm25_->rank_batch(queries, side);
  if (options.dense_weight > 0) dense = dense_->rank_batch(queries, side);
  const RankedRows none;
  std::vector<RankedRows> out(queries.size());
  for (size_t q = 0; q < queries.size(); ++q) {
    out[q] = fuse_rrf({bm25.empty() ? &none : &bm25[q], dense.empty() ? &none : &dense[q]},
                      {options.bm25_weight, options.dense_weight}, options.rrf_k, options.k);
  }
  return out;
}

}  // namespace cepe::retriever
