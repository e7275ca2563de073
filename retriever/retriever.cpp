#include "retriever/retriever.h"

#include "common/error.h"
#include "index/builder.h"

namespace cepe::retriever {

std::unique_ptr<Retriever> Retriever::open(const std::filesystem::path& dir,
                                           const RetrieverOptions& options) {
  CEPE_CHECK(!index::is_partial_build_dir(dir),
             dir.string() << " is the temporary directory of an unfinished `cepe index build`, "
                             "not an index");
  std::unique_ptr<Retriever> r(new Retriever());
  r->dir_ = dir;
  r->manifest_ = index::read_manifest(dir);
  const auto& m = r->manifest_;
  const std::string name = dir.string();
  if (!options.embedder.empty() && options.embedder != m.embedder_spec) {
    // Another embedder may even have the same dimension; its vectors would still be meaningless
    // against these.
    CEPE_THROW("index " << name << " was built with embedder '" << m.embedder_spec
                        << "' (fingerprint " << m.embedder_fingerprint
                        << "); refusing to query it with '" << options.embedder << "'");
  }
  r->embedder_ = load_embedder(m.embedder_spec, dir);
  const std::string fp = r->embedder_->fingerprint();
  CEPE_CHECK(fp == m.embedder_fingerprint,
             "index " << name << " was built with embedder '" << m.embedder_spec << "' fingerprint "
                      << m.embedder_fingerprint << ", but that embedder now has fingerprint " << fp
                      << " (model files or fitted state changed); refusing to load");
  CEPE_CHECK(r->embedder_->dim() == m.dim, "index " << name << ": embedder dimension "
                                                    << r->embedder_->dim() << " != recorded "
                                                    << m.dim);
  r->store_ = std::make_unique<index::PassageStore>(dir / index::kPassagesFile);
  if (options.verify) r->store_->verify();
  r->vectors_ = index::VectorIndex::load(dir / index::kFaissFile, options.mmap);
  CEPE_CHECK(r->vectors_->dim() == m.dim, "index " << name << ": FAISS dimension "
                                                   << r->vectors_->dim() << " != recorded "
                                                   << m.dim);
  CEPE_CHECK(
      r->store_->size() == m.passages && static_cast<uint64_t>(r->vectors_->size()) == m.passages,
      "index " << name << ": " << r->store_->size() << " stored passages and "
               << r->vectors_->size() << " vectors, manifest says " << m.passages);
  return r;
}

void Retriever::search_vectors(int64_t n, const float* queries, const SearchOptions& options,
                               float* scores, int64_t* rows) const {
  index::SearchParams p;
  p.nprobe = options.nprobe;
  p.ef_search = options.ef_search;
  vectors_->search(n, queries, options.k, p, scores, rows);
}

std::vector<std::vector<Hit>> Retriever::to_hits(int64_t n, int k, const float* scores,
                                                 const int64_t* rows) const {
  std::vector<std::vector<Hit>> out(static_cast<size_t>(n));
  for (int64_t q = 0; q < n; ++q) {
    auto& hits = out[static_cast<size_t>(q)];
    for (int j = 0; j < k; ++j) {
      const int64_t row = rows[q * k + j];
      if (row < 0) continue;  // fewer than k results (tiny index or few IVF lists probed)
      const index::PassageView v = store_->get(static_cast<uint64_t>(row));
      Hit h;
      h.row = static_cast<uint64_t>(row);
      h.id = std::string(v.id);
      h.title = std::string(v.title);
      h.text = std::string(v.text);
      h.score = scores[q * k + j];
      h.rank = static_cast<int>(hits.size()) + 1;
      hits.push_back(std::move(h));
    }
  }
  return out;
}

std::vector<Hit> Retriever::search(const std::string& query, const SearchOptions& options) const {
  return search_batch({query}, options).front();
}

std::vector<std::vector<Hit>> Retriever::search_batch(const std::vector<std::string>& queries,
                                                      const SearchOptions& options) const {
  CEPE_CHECK(options.k > 0, "k must be positive (got " << options.k << ")");
  if (queries.empty()) return {};
  const int64_t n = static_cast<int64_t>(queries.size());
  const int dim = embedder_->dim();
  std::vector<float> vecs(static_cast<size_t>(n) * dim);
  embedder_->embed_queries(queries, vecs.data());
  std::vector<float> scores(static_cast<size_t>(n) * options.k);
  std::vector<int64_t> rows(static_cast<size_t>(n) * options.k);
  search_vectors(n, vecs.data(), options, scores.data(), rows.data());
  return to_hits(n, options.k, scores.data(), rows.data());
}

}  // namespace cepe::retriever
