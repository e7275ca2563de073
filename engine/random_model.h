// Random-weight checkpoints in the exact HuggingFace CEPE layout, for demos and benchmarks
// (the PyTorch reference reads the same files).
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "engine/dtype.h"

namespace cepe {

/// Shape of a random CEPE model.
struct RandomModelSpec {
  int vocab_size = 512;  ///< decoder and encoder vocabulary
  int hidden_size = 128, intermediate_size = 344, heads = 4, kv_heads = 2, layers = 4;  ///< decoder
  int cross_layers = 4;  ///< last N decoder layers cross-attend
  int enc_hidden_size = 96, enc_intermediate_size = 256, enc_heads = 4,
      enc_layers = 2;                  ///< encoder
  int max_position_embeddings = 2048;  ///< decoder context
  double rope_theta = 10000.0;         ///< RoPE base of both stacks
  bool tie_word_embeddings = false;    ///< share embed_tokens with lm_head
  DType dtype = DType::F32;            ///< stored weight type
  float init_std = 0.02f;              ///< normal init of every matrix
  uint64_t seed = 0;                   ///< RNG seed
};

/// Named presets: "tiny", "small", "bench100m" (~150M parameters), "cepe-llama2-7b" (the released
/// shapes).
RandomModelSpec random_model_preset(const std::string& name);

/// Writes config.json and model.safetensors for `spec` into `out_dir` (created if needed).
/// Returns the number of parameters.
int64_t write_random_model(const RandomModelSpec& spec, const std::filesystem::path& out_dir);

}  // namespace cepe
