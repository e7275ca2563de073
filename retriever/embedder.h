// Text embedders behind one interface: the index stores their vectors and records which embedder
// (through its fingerprint: model weights, vocabulary, settings) produced them.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "retriever/passage.h"

namespace cepe::retriever {

/// Maps passages and queries to dense vectors compared by inner product.
/// Implementations are immutable once constructed, so embed_* may be called concurrently.
class Embedder {
 public:
  virtual ~Embedder() = default;

  /// The spec that recreates this embedder ("bert:/models/e5,pooling=mean").
  virtual std::string spec() const = 0;
  /// The embedder family ("bert").
  virtual std::string kind() const = 0;
  /// Vector dimension.
  virtual int dim() const = 0;
  /// Identifies the exact function text -> vector (model weights, vocabulary, settings);
  /// two embedders with equal fingerprints produce the same vectors.
  virtual std::string fingerprint() const = 0;
  /// Settings worth showing in `cepe index info`.
  virtual std::map<std::string, std::string> describe() const = 0;

  /// Embeds passages into `out` (n x dim, row-major).
  virtual void embed_passages(const std::vector<PassageView>& passages, float* out) const = 0;
  /// Embeds queries into `out` (n x dim, row-major).
  virtual void embed_queries(const std::vector<std::string>& queries, float* out) const = 0;
  /// Passages per embed_passages call that keep memory bounded and throughput high.
  virtual int preferred_batch() const { return 256; }
};

/// Creates an embedder from a spec ("bert:DIR[,key=value...]"); the retired "lexical" spec and
/// unknown ones throw, naming what to use instead.
std::unique_ptr<Embedder> create_embedder(const std::string& spec);

/// 16 hex digits.
std::string hex64(uint64_t v);

}  // namespace cepe::retriever
