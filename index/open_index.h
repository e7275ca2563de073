// Opens an index directory and assembles the retriever its manifest describes (bm25, dense or
// hybrid), with the passage store as the passage lookup. Every file is checked against the size
// and checksum the build recorded before Xapian or FAISS reads a byte of it.
#pragma once

#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "index/manifest.h"
#include "index/passage_store.h"
#include "retriever/retriever.h"

namespace cepe::index {

/// How an index is opened.
struct OpenOptions {
  /// Embedder the caller wants to query with; empty means the recorded one. Opening refuses when it
  /// differs from the recorded embedder or its fingerprint.
  std::string embedder;
  /// Map IVF inverted lists instead of reading them, where their ids lie aligned in the file
  /// (other index types, and misaligned lists, are read into memory).
  bool mmap = true;
  /// Also walk every passage record and recompute the passage store's own checksum.
  bool verify = false;
  /// Skip the per-file size and checksum check; for measuring open time only.
  bool skip_checksums = false;
  /// BM25 shards to search instead of the directory's database (paths or tcp:HOST:PORT); the
  /// passages still come from this directory's store.
  std::vector<std::string> bm25_shards;
};

/// An opened index directory: the manifest, the passage store and the retriever built on them.
class IndexRetriever : public retriever::Retriever {
 public:
  std::vector<retriever::RankedRows> rank_batch(
      const std::vector<std::string>& queries,
      const retriever::SearchOptions& options) const override {
    return inner_->rank_batch(queries, options);
  }
  const retriever::PassageLookup& passages() const override { return *store_; }
  std::string backend() const override { return inner_->backend(); }

  /// The manifest.
  const IndexManifest& manifest() const { return manifest_; }
  /// The passage store.
  const PassageStore& store() const { return *store_; }
  /// The index directory.
  const std::filesystem::path& dir() const { return dir_; }
  /// The dense side (null for bm25 indexes).
  const retriever::DenseRetriever* dense() const { return dense_; }
  /// The BM25 side (null for dense indexes).
  const retriever::Bm25Retriever* bm25() const { return bm25_; }

 private:
  friend std::unique_ptr<IndexRetriever> open_index(const std::filesystem::path&,
                                                    const OpenOptions&);
  IndexRetriever() = default;
  std::filesystem::path dir_;
  IndexManifest manifest_;
  std::unique_ptr<PassageStore> store_;
  std::unique_ptr<retriever::Retriever> inner_;
  const retriever::DenseRetriever* dense_ = nullptr;
  const retriever::Bm25Retriever* bm25_ = nullptr;
};

/// Opens and validates `dir`: manifest, file sizes and checksums, passage store, the BM25
/// database and/or the embedder (recreated and fingerprint-checked) and FAISS index, and that
/// their counts and dimensions agree. Throws a one-line error naming the file at fault.
std::unique_ptr<IndexRetriever> open_index(const std::filesystem::path& dir,
                                           const OpenOptions& options = {});

}  // namespace cepe::index
