// The `bert` dense embedder: a BERT-family encoder (engine/models/bert.h: Contriever, E5, BGE,
// ...) loaded from a HuggingFace directory (config.json, model.safetensors, vocab.txt), with its
// WordPiece tokenizer, mean or CLS pooling, optional query/passage prefixes and L2 normalisation.
// Spec: bert:DIR[,pooling=mean|cls][,normalize=0|1][,query_prefix=TEXT][,passage_prefix=TEXT]
//            [,max_tokens=N][,device=cpu|cuda]
#pragma once

#include <filesystem>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

#include "engine/backend.h"
#include "engine/models/bert.h"
#include "retriever/embedder.h"
#include "retriever/wordpiece.h"

namespace cepe::retriever {

/// The settings a `bert:` spec carries.
struct BertSpec {
  std::filesystem::path dir;     ///< model directory
  std::string pooling = "mean";  ///< "mean" (over all tokens, [CLS] and [SEP] included) or "cls"
  bool normalize = false;        ///< L2-normalise every vector
  std::string query_prefix;      ///< prepended to queries ("query: " for E5)
  std::string passage_prefix;    ///< prepended to passages ("passage: " for E5)
  int max_tokens = 0;            ///< truncation length incl. [CLS]/[SEP] (0: the model's limit)
  Device device = Device::CPU;   ///< backend to run on
  std::string options;           ///< the spec after DIR, as given (",pooling=mean,...")
};

/// Parses "bert:DIR[,key=value...]"; values are taken verbatim (prefixes keep their spaces).
BertSpec parse_bert_spec(const std::string& spec);

/// BERT encoder + pooling behind the Embedder interface. Thread-safe (forwards are serialised).
class BertEmbedder : public Embedder {
 public:
  /// Loads the model a `bert:` spec names (config, vocabulary, weights) onto its device.
  explicit BertEmbedder(const std::string& spec);
  /// Releases the device weights.
  ~BertEmbedder() override;

  /// "bert:" + the absolute model directory + the options as given.
  std::string spec() const override { return spec_string_; }
  /// "bert".
  std::string kind() const override { return "bert"; }
  /// hidden_size.
  int dim() const override { return model_->config().hidden_size; }
  /// Hash of config.json, vocab.txt, the tokenizer settings, pooling, prefixes and every weight.
  std::string fingerprint() const override { return fingerprint_; }
  /// Model directory, shape, tokenizer and pooling settings, device.
  std::map<std::string, std::string> describe() const override;
  /// Embeds passage_prefix + title + " " + text (just the text when there is no title).
  void embed_passages(const std::vector<PassageView>& passages, float* out) const override;
  /// Embeds query_prefix + query.
  void embed_queries(const std::vector<std::string>& queries, float* out) const override;
  /// Passages per batch: enough rows for efficient GEMMs, bounded memory.
  int preferred_batch() const override { return 128; }

  /// Embeds texts as they are (no prefix) into out (n x dim); texts are packed into forwards of
  /// at most kBatchTokens tokens.
  void embed_texts(const std::vector<std::string>& texts, float* out) const;
  /// The ids a text is encoded to ([CLS] ... [SEP], truncated).
  std::vector<int32_t> encode(std::string_view text) const;
  /// The tokenizer.
  const WordPiece& tokenizer() const { return tokenizer_; }
  /// The parsed config.
  const BertConfig& config() const { return model_->config(); }
  /// Most tokens packed into one forward.
  static constexpr size_t kBatchTokens = 8192;

 private:
  // Pools (mean or [CLS]) and normalises one forward's texts into out.
  void forward(const std::vector<std::vector<int32_t>>& ids, float* out) const;

  BertSpec spec_;
  std::string spec_string_;
  WordPiece tokenizer_;
  size_t max_tokens_ = 0;
  std::string fingerprint_;
  std::unique_ptr<Backend> backend_;
  std::unique_ptr<BertModel> model_;
  mutable std::mutex mutex_;
};

}  // namespace cepe::retriever
