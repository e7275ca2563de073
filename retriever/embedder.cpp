#include "retriever/embedder.h"

#include <cstdio>

#include "common/error.h"
#include "retriever/bert_embedder.h"
#include "retriever/lexical_embedder.h"

namespace cepe::retriever {

std::string hex64(uint64_t v) {
  char buf[17];
  std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(v));
  return buf;
}

std::unique_ptr<Embedder> create_embedder(const std::string& spec, const EmbedderOptions& options) {
  if (spec == "lexical") return std::make_unique<LexicalEmbedder>(options.dim);
  if (spec.rfind("bert:", 0) == 0) return std::make_unique<BertEmbedder>(spec);
  CEPE_THROW("unknown embedder '" << spec << "' (expected lexical or bert:DIR)");
}

std::unique_ptr<Embedder> load_embedder(const std::string& spec,
                                        const std::filesystem::path& index_dir) {
  if (spec == "lexical") return LexicalEmbedder::load(index_dir);
  if (spec.rfind("bert:", 0) == 0) return std::make_unique<BertEmbedder>(spec);
  CEPE_THROW("unknown embedder '" << spec << "' (expected lexical or bert:DIR)");
}

}  // namespace cepe::retriever
