// The built-in `lexical` embedder: TF-IDF weighted unigrams and bigrams, feature-hashed into a
// dense vector and L2-normalised, so that inner product is the cosine of hashed TF-IDF vectors.
#pragma once

#include <filesystem>
#include <string>
#include <string_view>
#include <vector>

#include "retriever/embedder.h"

namespace cepe::retriever {

/// Lower-cased, accent-folded, lightly stemmed content words of `text`, stop words removed;
/// exposed for tests.
std::vector<std::string> lexical_words(std::string_view text);

/// TF-IDF feature-hashing embedder; document frequencies are learned at build time.
class LexicalEmbedder : public Embedder {
 public:
  /// Default vector dimension.
  static constexpr int kDefaultDim = 4096;
  /// Document-frequency table size (a power of two): large enough that few terms share a slot.
  static constexpr uint32_t kDfBuckets = 1u << 22;
  /// File holding the fitted document frequencies inside an index directory.
  static constexpr const char* kFileName = "lexical.idf";

  /// An unfitted embedder of dimension `dim`.
  explicit LexicalEmbedder(int dim);
  /// Loads fitted state from an index directory; throws naming the file when it is bad.
  static std::unique_ptr<LexicalEmbedder> load(const std::filesystem::path& index_dir);

  /// "lexical".
  std::string spec() const override { return "lexical"; }
  /// "lexical".
  std::string kind() const override { return "lexical"; }
  /// Vector dimension.
  int dim() const override { return dim_; }
  /// Hash of the dimension, the tokenizer version and the document frequencies.
  std::string fingerprint() const override;
  /// dim, documents, tokenizer version.
  std::map<std::string, std::string> describe() const override;
  /// Always true: IDF comes from the corpus.
  bool needs_fit() const override { return true; }
  /// Counts the passage's distinct terms.
  void fit_add(std::string_view title, std::string_view text) override;
  /// Turns counts into IDF weights.
  void fit_finish() override;
  /// Writes lexical.idf (sparse df table) atomically.
  void save(const std::filesystem::path& index_dir) const override;
  /// Embeds title + text.
  void embed_passages(const std::vector<PassageView>& passages, float* out) const override;
  /// Embeds questions.
  void embed_queries(const std::vector<std::string>& queries, float* out) const override;
  /// Lexical embedding is cheap; large batches amortise FAISS calls.
  int preferred_batch() const override { return 1024; }

 private:
  void embed_one(std::string_view title, std::string_view text, float* out) const;
  void compute_idf();
  int dim_;
  uint64_t docs_ = 0;
  std::vector<uint32_t> df_;  // kDfBuckets document frequencies
  std::vector<float> idf_;    // kDfBuckets weights, filled by fit_finish()/load()
  bool fitted_ = false;
};

}  // namespace cepe::retriever
