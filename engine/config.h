// Model configuration read from a HuggingFace config.json: a LLaMA decoder, optionally with
// CEPE's context encoder and cross-attention (see ../shared/reference/cepe-architecture.md).
#pragma once

#include <filesystem>
#include <optional>
#include <string>
#include <vector>

namespace cepe {

/// How RoPE positions or frequencies are rescaled for longer contexts.
enum class RopeScalingType { None, Linear, Dynamic };

/// Hyper-parameters of one LLaMA stack (the decoder, or CEPE's encoder).
struct LlamaConfig {
  int hidden_size = 0;                 ///< model width
  int intermediate_size = 0;           ///< SwiGLU hidden width
  int num_attention_heads = 0;         ///< query heads
  int num_key_value_heads = 0;         ///< key/value heads (grouped-query attention when fewer)
  int num_hidden_layers = 0;           ///< transformer blocks
  int head_dim = 0;                    ///< hidden_size / num_attention_heads
  float rms_norm_eps = 1e-6f;          ///< RMSNorm epsilon
  int vocab_size = 0;                  ///< embedding rows
  int max_position_embeddings = 2048;  ///< trained context length (dynamic NTK threshold)
  double rope_theta = 10000.0;         ///< RoPE base
  RopeScalingType rope_scaling = RopeScalingType::None;  ///< rope_scaling.type
  double rope_scaling_factor = 1.0;                      ///< rope_scaling.factor
  bool tie_word_embeddings = false;                      ///< lm_head shares embed_tokens
  int bos_token_id = 1;                                  ///< beginning of sequence
  std::vector<int> eos_token_ids;                        ///< any of these ends generation
  int pad_token_id = -1;                                 ///< padding id, -1 when unset
};

/// A whole checkpoint's configuration: decoder plus optional CEPE encoder.
struct ModelConfig {
  LlamaConfig decoder;                 ///< the LLaMA decoder (top-level keys)
  std::optional<LlamaConfig> encoder;  ///< CEPE encoder (`encoder_config`), absent for plain LLaMA
  int num_cross_attn_layers = 0;       ///< the last N decoder layers have cross-attention
  int encoder_hidden_size = 0;         ///< width of the encoder states cross-attention reads
  std::string torch_dtype;             ///< dtype the checkpoint declares ("bfloat16", ...)

  /// True when decoder layer `layer` has a cross-attention block.
  bool has_cross_attention(int layer) const {
    return layer >= decoder.num_hidden_layers - num_cross_attn_layers;
  }
  /// True for CEPE checkpoints (an encoder and cross-attention).
  bool is_cepe() const { return encoder.has_value() && num_cross_attn_layers > 0; }
};

/// Parses config.json text; `origin` names the file in errors. Unsupported options throw naming
/// the key (e.g. num_cross_attn_hidden_states > 1).
ModelConfig parse_model_config(const std::string& json, const std::string& origin);
/// Reads `dir/config.json`.
ModelConfig load_model_config(const std::filesystem::path& model_dir);

}  // namespace cepe
