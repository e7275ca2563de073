// The BERT encoder (HuggingFace BertModel: embeddings + post-LayerNorm transformer layers with
// exact-erf GELU) on an engine backend: its config, its weights loaded by name with the shapes
// checked, and one forward over texts packed without padding (each its own bidirectional
// attention problem). Pooling and what the vectors are used for belong to its users
// (retriever/bert_embedder.h).
#pragma once

#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "common/hash.h"
#include "engine/backend.h"

namespace cepe {

/// The model hyper-parameters read from config.json.
struct BertConfig {
  int hidden_size = 0;              ///< width of the hidden states (the vector dimension)
  int num_hidden_layers = 0;        ///< transformer layers
  int num_attention_heads = 0;      ///< attention heads per layer
  int intermediate_size = 0;        ///< feed-forward width
  int max_position_embeddings = 0;  ///< longest input, [CLS] and [SEP] included
  int type_vocab_size = 2;          ///< token-type embeddings (only type 0 is used)
  int vocab_size = 0;               ///< rows of the word-embedding table (0: from the weights)
  float layer_norm_eps = 1e-12f;    ///< LayerNorm epsilon
};

/// Reads and checks `dir`/config.json; errors name the file and the offending field.
BertConfig read_bert_config(const std::filesystem::path& dir);

/// A loaded BERT encoder. Not thread-safe: callers serialise forwards.
class BertModel {
 public:
  /// Loads `dir`'s config and weights (model.safetensors, optionally under a "bert." prefix) onto
  /// `backend`, which must outlive the model. Every tensor's name, dtype, shape and bytes are fed
  /// to `weights_hash` (when given) in load order.
  BertModel(const std::filesystem::path& dir, Backend& backend, Hasher* weights_hash = nullptr);

  /// Final hidden states [total tokens, hidden] (on the backend) of `ids`, packed in order:
  /// text i's rows start at (*offsets)[i].
  Tensor forward(const std::vector<std::vector<int32_t>>& ids,
                 std::vector<int64_t>* offsets) const;

  /// The parsed config.
  const BertConfig& config() const { return config_; }
  /// Rows of the word-embedding table.
  int64_t vocab_rows() const { return vocab_rows_; }
  /// The stored weight dtypes, "/"-joined in load order ("f32", "f16/f32", ...).
  const std::string& weight_dtypes() const { return weight_dtypes_; }
  /// The backend it runs on.
  Backend& backend() const { return backend_; }

 private:
  struct Layer {
    Tensor q_w, q_b, k_w, k_b, v_w, v_b, o_w, o_b, ln1_w, ln1_b, i_w, i_b, out_w, out_b, ln2_w,
        ln2_b;
  };
  BertConfig config_;
  Backend& backend_;
  int64_t vocab_rows_ = 0;
  std::string weight_dtypes_;
  Tensor word_embeddings_, position_type_, embed_ln_w_, embed_ln_b_;
  std::vector<Layer> layers_;
};

}  // namespace cepe
