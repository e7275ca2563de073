// CEPE (Yen, Gao & Chen, 2024): a LLaMA decoder that cross-attends, in its last N layers, to the
// states of a small bidirectional encoder run over context chunks in parallel. A plain LLaMA
// checkpoint (no encoder) is the special case N = 0.
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "engine/backend.h"
#include "engine/config.h"
#include "engine/tensor.h"

namespace cepe {

class WeightStore;

/// Weights of one transformer block; the cross-attention ones are set only where it exists.
struct BlockWeights {
  Tensor input_norm;                 ///< input_layernorm.weight [hidden]
  Tensor q, k, v, o;                 ///< self_attn.{q,k,v,o}_proj.weight
  Tensor post_norm;                  ///< post_attention_layernorm.weight [hidden]
  Tensor gate, up, down;             ///< mlp.{gate,up,down}_proj.weight
  bool has_cross = false;            ///< true in the last num_cross_attn_layers decoder layers
  Tensor cross_norm;                 ///< cross_attn.layernorm.weight [hidden]
  Tensor cross_q, cross_k, cross_v;  ///< cross_attn.{q,k,v}_proj.weight (k, v read encoder width)
  Tensor cross_o;                    ///< cross_attn.o_proj.weight
};

/// Weights of one LLaMA stack.
struct StackWeights {
  Tensor embed;                      ///< embed_tokens.weight [vocab, hidden]
  std::vector<BlockWeights> blocks;  ///< one per layer
  Tensor norm;                       ///< final norm.weight [hidden]
};

/// One chunk's cross-attention keys and values projected ahead of time (W_k·E and W_v·E, e.g.
/// from a K/V store): per decoder layer [tokens, kv width] host F32, undefined in layers without
/// cross-attention.
struct ProjectedKV {
  std::vector<Tensor> k, v;  ///< per decoder layer
  /// True when set.
  bool defined() const { return !k.empty(); }
};

/// Encoder output for one request: the final, normed states of all its chunks, in order.
struct EncodedContext {
  Tensor states;  ///< [total_tokens, encoder_hidden] on the backend's device (unless in parts)
  /// Or the same rows as several [rows, encoder_hidden] host blocks, in order (CPU backend):
  /// views of a memory-mapped store, cache entries or encoder passes, read where they lie.
  std::vector<Tensor> parts;
  /// Empty, or one per part (CPU backend): where defined, that chunk's keys and values are
  /// these and its part is unused (undefined); chunk_lengths then gives its tokens.
  std::vector<ProjectedKV> projected;
  std::vector<int64_t> chunk_lengths;  ///< tokens per chunk, in order
  /// Number of encoder tokens.
  int64_t tokens() const;
  /// True when some chunk comes with projected keys and values.
  bool has_projected() const;
  /// The states as row blocks: `parts`, or views of `states` one per chunk (all of it when the
  /// chunk lengths do not cover it); empty when there are none.
  std::vector<Tensor> blocks() const;
};

/// How decoder tokens read a request's encoder states E in the cross-attention layers. Both give
/// the official model's result (which re-projects W_k·E and W_v·E at every step); they differ in
/// what a request holds between steps and in the work per decode step.
enum class CrossAttentionMode {
  /// W_k·E and W_v·E projected once per cross layer at set_context and kept: per request
  /// 2 x layers x encoder_tokens x kv width (13.4 GB in F32 for CEPE-LLaMA-2-7B, 50 x 256 tokens).
  Cached,
  /// Only E is kept (encoder_tokens x encoder width: 52 MB there). Query rows are scored as
  /// (W_kᵀq)·E and W_v is applied after the softmax; a call with many rows per sequence (a long
  /// prefill) projects that layer's K/V for the call alone, whichever costs fewer FLOPs.
  Absorbed,
};
/// Parses "cached", "absorbed" or "auto" (Absorbed where the backend for `device` implements it,
/// the CPU; Cached elsewhere). The error names `what`, e.g. the flag.
CrossAttentionMode parse_cross_attention_mode(const std::string& name, Device device,
                                              const std::string& what);
/// "cached" / "absorbed".
const char* cross_attention_mode_name(CrossAttentionMode mode);

/// Element type of the KV caches from "f32", "f16" or "auto": F16 on the CPU when the weights
/// are converted to bf16, f16, q8_0 or q4_0 (runs that already trade exactness for memory, as
/// llama.cpp's default F16 cache does), F32 otherwise. F16 halves the cache and the bytes a decode
/// step reads from it; keys and values are rounded once, when written. It covers the
/// self-attention cache and the cached cross-attention keys and values projected for a request
/// (not those read in place from a K/V store). CUDA keeps F32 (an explicit f16 there is an
/// error). The error names `what`, e.g. the flag.
DType parse_kv_cache_type(const std::string& name, Device device, WeightKind weights,
                          const std::string& what);

/// Everything one sequence carries between decoder calls: its self-attention KV cache and what
/// cross-attention reads (projected keys/values, or the encoder states themselves).
class DecoderState {
 public:
  /// Tokens already processed (the next token's position).
  int64_t length() const { return length_; }
  /// Encoder tokens this sequence cross-attends to.
  int64_t encoder_tokens() const { return encoder_tokens_; }
  /// Bytes held by the caches (encoder states read in place from a file mapping excluded).
  size_t cache_bytes() const;
  /// Of cache_bytes, the encoder states held for absorbed cross-attention.
  size_t encoder_state_bytes() const;

 private:
  friend class CepeModel;
  std::vector<Tensor> k_cache_, v_cache_;  // per layer [capacity, kv_heads * head_dim]
  // Cached: per cross layer, [encoder_tokens, kv * hd] in row blocks (one per chunk on the CPU)
  std::vector<std::vector<Tensor>> cross_k_, cross_v_;
  // Absorbed (non-empty iff so): encoder states [encoder_tokens, enc_hidden] in row blocks
  std::vector<Tensor> context_;
  int64_t length_ = 0;
  int64_t capacity_ = 0;
  int64_t encoder_tokens_ = 0;
  int64_t rope_length_ = 0;  // dynamic NTK: longest sequence the rotary tables were built for
};

/// A loaded CEPE (or plain LLaMA) model bound to one backend.
class CepeModel {
 public:
  /// Reports a load's progress: bytes of the checkpoint's tensors read so far, of `total`.
  using LoadProgress = std::function<void(uint64_t done, uint64_t total)>;
  /// Loads config.json and the safetensors weights of `model_dir`, checking every tensor;
  /// `progress` (optional) hears after every tensor and once more at the end.
  static std::unique_ptr<CepeModel> load(const std::filesystem::path& model_dir, Backend& backend,
                                         const LoadProgress& progress = {});
  /// As above, with `config` already read from `model_dir`'s config.json.
  static std::unique_ptr<CepeModel> load(const std::filesystem::path& model_dir, ModelConfig config,
                                         Backend& backend, const LoadProgress& progress = {});
  ~CepeModel();

  /// The checkpoint's configuration.
  const ModelConfig& config() const { return config_; }
  /// The backend the model computes on.
  Backend& backend() const { return backend_; }
  /// Bytes of weights the model holds (after the backend's --weights conversion).
  size_t weight_bytes() const { return weight_bytes_; }
  /// Bytes of the weights one decode step reads: every decoder layer, the final norm and the
  /// output head (not the encoder, nor the embedding table of which it reads one row per token).
  size_t decode_weight_bytes() const { return decode_weight_bytes_; }

  /// Encodes context chunks independently and bidirectionally (positions from 0 in each), all in
  /// one packed pass without padding. Throws when the model has no encoder or a chunk is empty.
  EncodedContext encode(const std::vector<std::vector<int32_t>>& chunks);
  /// The same with the length each chunk's dynamic-NTK rotary base is computed for given per chunk
  /// (the longest chunk of its request), so chunks of several requests can share one pass and a
  /// request encoded in slices gets the states it would get in one call.
  EncodedContext encode(const std::vector<std::vector<int32_t>>& chunks,
                        const std::vector<int64_t>& rope_lengths);

  /// A fresh sequence; `expected_tokens` pre-sizes its KV cache (it grows when needed).
  std::unique_ptr<DecoderState> new_state(int64_t expected_tokens = 256) const;
  /// How sequences attached to a context from now on read it (default: Cached). Absorbed
  /// handles a sequence's rows in absorbed form up to `absorbed_max_rows` rows per call (-1: where
  /// that costs fewer FLOPs than projecting the layer's keys and values for the call).
  void set_cross_attention_mode(CrossAttentionMode mode, int64_t absorbed_max_rows = -1) {
    cross_mode_ = mode;
    absorbed_max_rows_ = absorbed_max_rows;
  }
  /// The mode set_context uses.
  CrossAttentionMode cross_attention_mode() const { return cross_mode_; }
  /// Element type (F32 or F16) of the KV caches of sequences made from now on (default F32).
  void set_kv_cache_dtype(DType dtype);
  /// The KV cache element type of new sequences.
  DType kv_cache_dtype() const { return kv_dtype_; }
  /// Attaches encoder states to a sequence that has not started yet. Cached: projects every
  /// cross-attention layer's keys and values once, so decode steps never re-project them;
  /// Absorbed: keeps a reference to the states alone. A context with projected chunks is read
  /// in the cached form whatever the mode (those chunks have no states); on the CPU each chunk's
  /// keys and values stay a block of their own, so stored and live projections attend alike.
  void set_context(DecoderState& state, const EncodedContext& context);
  /// Every cross-attention layer's keys and values for one chunk's states [tokens, encoder
  /// width] (host or device): exactly what set_context computes for that chunk.
  ProjectedKV project_chunk(const Tensor& states) const;

  /// Runs `tokens` through the decoder for one sequence, appending them to its cache; returns host
  /// F32 logits for every new token (`all_logits`) or only the last one: [rows, vocab].
  Tensor forward(DecoderState& state, const std::vector<int32_t>& tokens, bool all_logits);
  /// The same for several sequences at once (continuous batching): their rows are packed so every
  /// weight is read once per step. Returns logits of the last token of each sequence [n, vocab],
  /// or of every token when `all_logits`.
  Tensor forward_batch(const std::vector<DecoderState*>& states,
                       const std::vector<std::vector<int32_t>>& tokens, bool all_logits);

 private:
  CepeModel(ModelConfig config, Backend& backend);
  void load_weights(const WeightStore& store, const LoadProgress& progress);
  void ensure_capacity(DecoderState& state, int64_t needed) const;
  // A chunk's projected cross-attention keys or values, or (absorbed) its encoder states, as the
  // request keeps them: rounded to F16 with an F16 KV cache (unless mapped from a store), else as
  // they are.
  Tensor cross_cache_form(const Tensor& rows) const;
  // One cross-attention layer for a packed batch: adds o_proj(attention over each sequence's
  // context) to x for the rows of sequences that have one. hbuf, q and attn are scratch rows.
  void cross_attention(const BlockWeights& b, int layer, const std::vector<DecoderState*>& states,
                       const std::vector<int64_t>& row_begin, const std::vector<int64_t>& row_count,
                       Tensor& x, Tensor& hbuf, Tensor& q, Tensor& attn);
  // Absorbed cross-attention's rows per sequence up to which all heads read E as one kv head.
  static constexpr int64_t kSharedHeadRows = 4;
  // Absorbed cross-attention for the given sequences: q's rows of them in, out's rows written.
  void absorbed_cross_attention(const BlockWeights& b, const std::vector<DecoderState*>& states,
                                const std::vector<size_t>& which,
                                const std::vector<int64_t>& row_begin,
                                const std::vector<int64_t>& row_count, const Tensor& q,
                                Tensor& out);
  // out's rows = each block's rows · weightᵀ, block after block.
  void project_blocks(const std::vector<Tensor>& blocks, const Tensor& weight, Tensor& out) const;
  // cos/sin [rows, head_dim/2] for the given positions, uploaded to the device.
  void rope_tables(const LlamaConfig& cfg, const std::vector<int64_t>& positions,
                   const std::vector<int64_t>& rope_lengths, Tensor* cos, Tensor* sin) const;

  ModelConfig config_;
  Backend& backend_;
  StackWeights decoder_;
  StackWeights encoder_;
  Tensor lm_head_;
  CrossAttentionMode cross_mode_ = CrossAttentionMode::Cached;
  int64_t absorbed_max_rows_ = -1;
  DType kv_dtype_ = DType::F32;
  size_t weight_bytes_ = 0;
  size_t decode_weight_bytes_ = 0;
  std::shared_ptr<WeightStore> store_;  // keeps the memory-mapped weights alive
};

/// Inverse frequencies of RoPE exactly as PyTorch computes them in F32:
/// 1 / base^(2i/d) for i in [0, d/2).
std::vector<float> rope_inv_freq(double base, int head_dim);
/// The RoPE base a config uses for a sequence of `seq_len` tokens (dynamic NTK raises it past
/// max_position_embeddings; other scalings keep rope_theta).
double rope_effective_base(const LlamaConfig& cfg, int64_t seq_len);

}  // namespace cepe
