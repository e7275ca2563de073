// Text embedders behind one interface: the index stores their vectors and records which embedder
// (and which fitted state, through the fingerprint) produced them.
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "retriever/passage.h"

namespace cepe::retriever {

/// Maps passages and queries to dense vectors compared by inner product.
/// Implementations are immutable after fit_finish()/load, so embed_* may be called concurrently.
class Embedder {
 public:
  virtual ~Embedder() = default;

  /// The spec that recreates this embedder ("lexical", "bert:/models/e5,pooling=mean").
  virtual std::string spec() const = 0;
  /// The embedder family ("lexical", "bert").
  virtual std::string kind() const = 0;
  /// Vector dimension.
  virtual int dim() const = 0;
  /// Identifies the exact function text -> vector (model weights, vocabulary, fitted statistics);
  /// two embedders with equal fingerprints produce the same vectors.
  virtual std::string fingerprint() const = 0;
  /// Settings worth showing in `cepe index info`.
  virtual std::map<std::string, std::string> describe() const = 0;

  /// True when the embedder learns statistics from the corpus before it can embed.
  virtual bool needs_fit() const { return false; }
  /// Feeds one corpus passage to fitting.
  virtual void fit_add(std::string_view /*title*/, std::string_view /*text*/) {}
  /// Ends fitting.
  virtual void fit_finish() {}
  /// Saves fitted state into an index directory (nothing for stateless embedders).
  virtual void save(const std::filesystem::path& /*index_dir*/) const {}

  /// Embeds passages into `out` (n x dim, row-major).
  virtual void embed_passages(const std::vector<PassageView>& passages, float* out) const = 0;
  /// Embeds queries into `out` (n x dim, row-major).
  virtual void embed_queries(const std::vector<std::string>& queries, float* out) const = 0;
  /// Passages per embed_passages call that keep memory bounded and throughput high.
  virtual int preferred_batch() const { return 256; }
};

/// Options for creating an embedder at build time.
struct EmbedderOptions {
  int dim = 0;  ///< lexical vector dimension (0: the default 4096)
};

/// Creates an embedder for building from a spec ("lexical" or "bert:DIR[,key=value...]").
std::unique_ptr<Embedder> create_embedder(const std::string& spec, const EmbedderOptions& options);

/// Loads the embedder recorded for an index: `spec` as recorded, state from `index_dir`.
std::unique_ptr<Embedder> load_embedder(const std::string& spec,
                                        const std::filesystem::path& index_dir);

/// 16 hex digits.
std::string hex64(uint64_t v);

}  // namespace cepe::retriever
