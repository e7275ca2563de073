// The retrieval library the server and batch QA call: open an index directory once, then embed
// queries, search FAISS and return the passages. All search methods are const and thread-safe.
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "index/manifest.h"
#include "index/passage_store.h"
#include "index/vector_index.h"
#include "retriever/embedder.h"

namespace cepe::retriever {

/// One retrieved passage.
struct Hit {
  uint64_t row = 0;   ///< row in the passage store (= FAISS id)
  std::string id;     ///< corpus id
  std::string title;  ///< title
  std::string text;   ///< text
  float score = 0;    ///< inner product between query and passage vectors
  int rank = 0;       ///< 1-based rank
};

/// Per-search settings.
struct SearchOptions {
  int k = 10;         ///< passages to return
  int nprobe = 0;     ///< IVF lists to visit (0: the index default)
  int ef_search = 0;  ///< HNSW candidate list (0: the index default)
};

/// How an index is opened.
struct RetrieverOptions {
  /// Embedder the caller wants to query with; empty means the recorded one. Opening refuses when it
  /// differs from the recorded embedder or its fingerprint.
  std::string embedder;
  /// Map IVF inverted lists instead of reading them (other index types are read into memory).
  bool mmap = true;
  /// Recompute the passage store checksum on open (reads the whole store).
  bool verify = false;
};

/// An opened index.
class Retriever {
 public:
  /// Opens and validates `dir`: manifest, embedder (recreated and fingerprint-checked), passage
  /// store, FAISS index, and that their counts and dimensions agree.
  static std::unique_ptr<Retriever> open(const std::filesystem::path& dir,
                                         const RetrieverOptions& options = {});

  /// Top passages for one query.
  std::vector<Hit> search(const std::string& query, const SearchOptions& options) const;
  /// Top passages for many queries, embedded and searched as one batch.
  std::vector<std::vector<Hit>> search_batch(const std::vector<std::string>& queries,
                                             const SearchOptions& options) const;
  /// Raw search on query vectors (n x dim): rows and scores (n x k, row -1 when missing).
  void search_vectors(int64_t n, const float* queries, const SearchOptions& options, float* scores,
                      int64_t* rows) const;

  /// The manifest.
  const index::IndexManifest& manifest() const { return manifest_; }
  /// The embedder.
  const Embedder& embedder() const { return *embedder_; }
  /// The passage store.
  const index::PassageStore& passages() const { return *store_; }
  /// The FAISS index.
  const index::VectorIndex& vectors() const { return *vectors_; }
  /// The index directory.
  const std::filesystem::path& dir() const { return dir_; }

 private:
  Retriever() = default;
  std::vector<std::vector<Hit>> to_hits(int64_t n, int k, const float* scores,
                                        const int64_t* rows) const;
  std::filesystem::path dir_;
  index::IndexManifest manifest_;
  std::unique_ptr<Embedder> embedder_;
  std::unique_ptr<index::PassageStore> store_;
  std::unique_ptr<index::VectorIndex> vectors_;
};

}  // namespace cepe::retriever
