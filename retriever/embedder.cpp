#include "retriever/embedder.h"

#include <cstdio>

#include "common/error.h"
#include "retriever/bert_embedder.h"

namespace cepe::retriever {

std::string hex64(uint64_t v) {
  char buf[17];
  std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(v));
  return buf;
}

std::unique_ptr<Embedder> create_embedder(const std::string& spec) {
  if (spec.rfind("bert:", 0) == 0) return std::make_unique<BertEmbedder>(spec);
  // One lexical method, not two: BM25 beat the hashed TF-IDF vectors on recall, size and latency.
  CEPE_CHECK(spec != "lexical",
             "the hashed TF-IDF embedder 'lexical' was retired: BM25 replaces it (--retriever "
             "bm25, the default); a dense side needs --embedder bert:DIR");
  CEPE_CHECK(!spec.empty(), "a dense index needs an embedder (--embedder bert:DIR)");
  CEPE_THROW("unknown embedder '" << spec << "' (expected bert:DIR)");
}

}  // namespace cepe::retriever
