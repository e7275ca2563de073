#include "index/open_index.h"

#include "common/error.h"
#include "index/builder.h"

namespace cepe::index {

namespace {

std::unique_ptr<retriever::DenseRetriever> open_dense(const std::filesystem::path& dir,
                                                      const IndexManifest& m,
                                                      const OpenOptions& options,
                                                      const PassageStore& store) {
  const std::string name = dir.string();
  if (!options.embedder.empty() && options.embedder != m.embedder_spec) {
    // Another embedder may even have the same dimension; its vectors would still be meaningless
    // against these.
    CEPE_THROW("index " << name << " was built with embedder '" << m.embedder_spec
                        << "' (fingerprint " << m.embedder_fingerprint
                        << "); refusing to query it with '" << options.embedder << "'");
  }
  CEPE_CHECK(m.embedder_kind != "lexical",
             "index " << name << " was built with the hashed TF-IDF embedder 'lexical', which was "
                      << "retired (BM25 replaces it): rebuild it with `cepe index build` (BM25 by "
                      << "default, or --retriever dense|hybrid --embedder bert:DIR)");
  auto embedder = retriever::create_embedder(m.embedder_spec);
  const std::string fp = embedder->fingerprint();
  CEPE_CHECK(fp == m.embedder_fingerprint,
             "index " << name << " was built with embedder '" << m.embedder_spec << "' fingerprint "
                      << m.embedder_fingerprint << ", but that embedder now has fingerprint " << fp
                      << " (its model files changed); refusing to load");
  CEPE_CHECK(embedder->dim() == m.dim, "index " << name << ": embedder dimension "
                                                << embedder->dim() << " != recorded " << m.dim);
  auto vectors = retriever::VectorIndex::load(dir / kFaissFile, options.mmap);
  CEPE_CHECK(vectors->dim() == m.dim, "index " << name << ": FAISS dimension " << vectors->dim()
                                               << " != recorded " << m.dim);
  CEPE_CHECK(
      static_cast<uint64_t>(vectors->size()) == m.passages,
      "index " << name << ": " << vectors->size() << " vectors, manifest says " << m.passages);
  return std::make_unique<retriever::DenseRetriever>(std::move(embedder), std::move(vectors),
                                                     store);
}

std::unique_ptr<retriever::Bm25Retriever> open_bm25(const std::filesystem::path& dir,
                                                    const IndexManifest& m,
                                                    const OpenOptions& options,
                                                    const PassageStore& store) {
  std::vector<std::string> shards = options.bm25_shards;
  if (shards.empty()) shards.push_back((dir / kBm25File).string());
  auto searcher = std::make_unique<retriever::Bm25Searcher>(shards, m.bm25);
  CEPE_CHECK(searcher->size() == m.passages,
             "index " << dir.string() << ": the BM25 database"
                      << (options.bm25_shards.empty() ? "" : " shards") << " hold "
                      << searcher->size() << " documents, manifest says " << m.passages);
  return std::make_unique<retriever::Bm25Retriever>(std::move(searcher), store);
}

}  // namespace

std::unique_ptr<IndexRetriever> open_index(const std::filesystem::path& dir,
                                           const OpenOptions& options) {
  CEPE_CHECK(!is_partial_build_dir(dir),
             dir.string() << " is the temporary directory of an unfinished `cepe index build`, "
                             "not an index");
  std::unique_ptr<IndexRetriever> r(new IndexRetriever());
  r->dir_ = dir;
  r->manifest_ = read_manifest(dir);
  const IndexManifest& m = r->manifest_;
  // Before any parser (ours, Xapian's, FAISS's) reads them: FAISS trusts its files, and one
  // flipped bit in an HNSW neighbour table is an out-of-bounds read.
  if (!options.skip_checksums) verify_files(dir, m);
  r->store_ = std::make_unique<PassageStore>(dir / kPassagesFile);
  if (options.verify) r->store_->verify();
  CEPE_CHECK(r->store_->size() == m.passages, "index " << dir.string() << ": " << r->store_->size()
                                                       << " stored passages, manifest says "
                                                       << m.passages);
  std::unique_ptr<retriever::DenseRetriever> dense;
  std::unique_ptr<retriever::Bm25Retriever> bm25;
  // Options for a side the index does not have are refused, not ignored: the caller asked for
  // something that will not happen.
  CEPE_CHECK(has_dense(m) || options.embedder.empty(),
             "index " << dir.string() << " has no dense side (retriever " << m.retriever
                      << "): it takes no embedder, got '" << options.embedder << "'");
  CEPE_CHECK(has_bm25(m) || options.bm25_shards.empty(),
             "index " << dir.string() << " has no BM25 side (retriever " << m.retriever
                      << "): BM25 shards cannot be searched with it");
  if (has_dense(m)) dense = open_dense(dir, m, options, *r->store_);
  if (has_bm25(m)) bm25 = open_bm25(dir, m, options, *r->store_);
  r->dense_ = dense.get();
  r->bm25_ = bm25.get();
  if (dense && bm25)
    r->inner_ = std::make_unique<retriever::HybridRetriever>(std::move(bm25), std::move(dense));
  else if (dense)
    r->inner_ = std::move(dense);
  else
    r->inner_ = std::move(bm25);
  return r;
}

}  // namespace cepe::index
