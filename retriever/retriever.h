// The retrieval interface the pipeline calls without knowing the backend (BM25, FAISS, or both
// fused), and the three backends. Opening an index directory and assembling one of these from its
// files is the index layer's job (index/open_index.h). All search methods are const and
// thread-safe.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "retriever/bm25.h"
#include "retriever/embedder.h"
#include "retriever/passage.h"
#include "retriever/vector_index.h"

namespace cepe::retriever {

/// One retrieved passage.
struct Hit {
  uint64_t row = 0;   ///< row in the passage store (= FAISS id = BM25 document)
  std::string id;     ///< corpus id
  std::string title;  ///< title
  std::string text;   ///< text
  float score = 0;    ///< backend score: inner product, BM25, or fused RRF score
  int rank = 0;       ///< 1-based rank
};

/// Per-search settings.
struct SearchOptions {
  int k = 10;         ///< passages to return
  int nprobe = 0;     ///< IVF lists to visit (0: the index default)
  int ef_search = 0;  ///< HNSW candidate list (0: the index default)
  /// Hybrid only: weight of the BM25 ranking in reciprocal rank fusion (0 drops it).
  double bm25_weight = 1.0;
  /// Hybrid only: weight of the dense ranking in reciprocal rank fusion (0 drops it).
  double dense_weight = 1.0;
  /// Hybrid only: the RRF constant c in weight / (c + rank).
  int rrf_k = 60;
  /// Hybrid only: candidates taken from each side before fusing (0: max(k, 100)).
  int fusion_depth = 0;
};

/// Search rows and scores of one query, best first.
struct RankedRows {
  std::vector<int64_t> rows;  ///< passage rows
  std::vector<float> scores;  ///< their scores
};

/// Any retrieval backend: search(query, k) -> passage rows + scores, and hits with passage text.
class Retriever {
 public:
  virtual ~Retriever() = default;
  /// Ranked rows for many queries (searched as one batch where the backend can).
  virtual std::vector<RankedRows> rank_batch(const std::vector<std::string>& queries,
                                             const SearchOptions& options) const = 0;
  /// The passages the rows refer to.
  virtual const PassageLookup& passages() const = 0;
  /// "bm25", "dense" or "hybrid".
  virtual std::string backend() const = 0;

  /// Top passages for one query.
  std::vector<Hit> search(const std::string& query, const SearchOptions& options) const;
  /// Top passages for many queries.
  std::vector<std::vector<Hit>> search_batch(const std::vector<std::string>& queries,
                                             const SearchOptions& options) const;
};

/// Dense retrieval: an embedder plus a FAISS index whose ids are passage rows.
class DenseRetriever : public Retriever {
 public:
  /// Takes the parts; `passages` must outlive the retriever.
  DenseRetriever(std::unique_ptr<Embedder> embedder, std::unique_ptr<VectorIndex> vectors,
                 const PassageLookup& passages);
  std::vector<RankedRows> rank_batch(const std::vector<std::string>& queries,
                                     const SearchOptions& options) const override;
  const PassageLookup& passages() const override { return passages_; }
  std::string backend() const override { return "dense"; }
  /// Raw search on query vectors (n x dim): rows and scores (n x k, row -1 when missing).
  void search_vectors(int64_t n, const float* queries, const SearchOptions& options, float* scores,
                      int64_t* rows) const;
  /// The embedder.
  const Embedder& embedder() const { return *embedder_; }
  /// The FAISS index.
  const VectorIndex& vectors() const { return *vectors_; }

 private:
  std::unique_ptr<Embedder> embedder_;
  std::unique_ptr<VectorIndex> vectors_;
  const PassageLookup& passages_;
};

/// BM25 over a Xapian database whose documents are passage rows.
class Bm25Retriever : public Retriever {
 public:
  /// Takes the searcher; `passages` must outlive the retriever.
  Bm25Retriever(std::unique_ptr<Bm25Searcher> searcher, const PassageLookup& passages);
  std::vector<RankedRows> rank_batch(const std::vector<std::string>& queries,
                                     const SearchOptions& options) const override;
  const PassageLookup& passages() const override { return passages_; }
  std::string backend() const override { return "bm25"; }
  /// The searcher.
  const Bm25Searcher& searcher() const { return *searcher_; }

 private:
  std::unique_ptr<Bm25Searcher> searcher_;
  const PassageLookup& passages_;
};

/// BM25 and dense rankings fused by weighted reciprocal rank fusion:
/// score(row) = sum over sides of weight / (rrf_k + rank on that side).
class HybridRetriever : public Retriever {
 public:
  /// Takes both sides (they must share the passage lookup).
  HybridRetriever(std::unique_ptr<Bm25Retriever> bm25, std::unique_ptr<DenseRetriever> dense);
  std::vector<RankedRows> rank_batch(const std::vector<std::string>& queries,
                                     const SearchOptions& options) const override;
  const PassageLookup& passages() const override { return bm25_->passages(); }
  std::string backend() const override { return "hybrid"; }
  /// The BM25 side.
  const Bm25Retriever& bm25() const { return *bm25_; }
  /// The dense side.
  const DenseRetriever& dense() const { return *dense_; }

 private:
  std::unique_ptr<Bm25Retriever> bm25_;
  std::unique_ptr<DenseRetriever> dense_;
};

/// Fuses rankings by weighted RRF; ties broken by the smaller row. Exposed for tests.
RankedRows fuse_rrf(const std::vector<const RankedRows*>& rankings,
                    const std::vector<double>& weights, int rrf_k, int k);

/// Checks the fusion settings of `options`; throws naming the bad field.
void check_search_options(const SearchOptions& options);

}  // namespace cepe::retriever
