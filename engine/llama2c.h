// Conversion of Karpathy's llama2.c checkpoints (legacy "version 0" .bin) and tokenizer .bin into
// a HuggingFace LLaMA model directory that the engine loads like any other checkpoint.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

namespace cepe {

/// Hyper-parameters from a llama2.c checkpoint header.
struct Llama2cHeader {
  int dim = 0;                    ///< model width
  int hidden_dim = 0;             ///< SwiGLU hidden width
  int n_layers = 0;               ///< transformer blocks
  int n_heads = 0;                ///< query heads
  int n_kv_heads = 0;             ///< key/value heads
  int vocab_size = 0;             ///< pieces (absolute value of the header field)
  int seq_len = 0;                ///< trained context length
  bool shared_classifier = true;  ///< the output layer reuses the token embedding

  /// Width of one attention head.
  int head_size() const { return dim / n_heads; }
  /// Rows of wk and wv.
  int kv_dim() const { return dim / n_heads * n_kv_heads; }
  /// Number of float32 values that follow the header in a well-formed checkpoint.
  uint64_t weight_count() const;
};

/// Reads and validates the header of a legacy llama2.c checkpoint; errors name the file.
Llama2cHeader read_llama2c_header(const std::filesystem::path& checkpoint);

/// Serialises a llama2.c tokenizer .bin holding `vocab_size` pieces as a sentencepiece
/// ModelProto (BPE with byte fallback, LLaMA's normalizer), so that sentencepiece encodes text
/// as llama2.c's own tokenizer does.
std::string llama2c_tokenizer_to_sentencepiece(const std::filesystem::path& tokenizer_bin,
                                               int vocab_size);

/// For a q or k projection with `n_heads` heads of `head_size` rows: the llama2.c row that
/// HuggingFace row r holds, undoing llama2.c's interleaved RoPE pairs (rotate_half layout).
std::vector<int64_t> llama2c_rope_row_order(int n_heads, int head_size);

/// Converts `checkpoint` + `tokenizer_bin` into `out_dir` (created when missing): config.json,
/// model.safetensors (HF tensor names, float32) and tokenizer.model. Everything is read and
/// checked before anything is written; each file is written atomically.
Llama2cHeader convert_llama2c(const std::filesystem::path& checkpoint,
                              const std::filesystem::path& tokenizer_bin,
                              const std::filesystem::path& out_dir);

}  // namespace cepe
