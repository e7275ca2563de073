#include "engine/models/cepe_llama.h"

#include <algorithm>
#include <cmath>
#include <string>

#include "common/error.h"
#include "engine/safetensors.h"

namespace cepe {
namespace {

using Shape = std::vector<int64_t>;

// Loads one stack's tensors by name, each checked for presence, dtype and shape.
class StackLoader {
 public:
  StackLoader(const WeightStore& store, Backend& backend, size_t* bytes,
              const CepeModel::LoadProgress& progress)
      : store_(store),
        backend_(backend),
        bytes_(bytes),
        progress_(progress),
        total_(store.total_bytes()) {}

  /// Tells the progress callback the whole checkpoint is done (tensors the model does not use
  /// included).
  void finish() const {
    if (progress_) progress_(total_, total_);
  }

  Tensor matrix(const std::string& name, Shape shape) {
    return get(name, std::move(shape), WeightUse::Matrix);
  }
  Tensor table(const std::string& name, Shape shape) {
    return get(name, std::move(shape), WeightUse::Table);
  }
  Tensor vector(const std::string& name, int64_t n) { return get(name, {n}, WeightUse::Vector); }

 private:
  Tensor get(const std::string& name, Shape shape, WeightUse use) {
    Tensor t = store_.get(name, shape);
    CEPE_CHECK(t.dtype() == DType::F32 || t.dtype() == DType::F16 || t.dtype() == DType::BF16,
               "tensor '" << name << "' in " << store_.file_of(name).string() << " has dtype "
                          << dtype_name(t.dtype()) << "; weights must be F32, F16 or BF16");
    Tensor loaded;
    try {
      loaded = backend_.load_weight(t, use);
    } catch (const Error& e) {  // which tensor, and from which file
      CEPE_THROW("tensor '" << name << "' in " << store_.file_of(name).string() << ": "
                            << e.message());
    }
    *bytes_ += loaded.nbytes();  // what the model holds (after --weights conversion)
    read_ += t.nbytes();
    if (progress_) progress_(std::min(read_, total_), total_);
    return loaded;
  }

  const WeightStore& store_;
  Backend& backend_;
  size_t* bytes_;
  const CepeModel::LoadProgress& progress_;
  uint64_t total_, read_ = 0;
};

StackWeights load_stack(StackLoader& loader, const LlamaConfig& c, const std::string& prefix,
                        const ModelConfig* cepe, bool embed_is_head) {
  StackWeights s;
  const int64_t h = c.hidden_size, qd = int64_t(c.num_attention_heads) * c.head_dim,
                kvd = int64_t(c.num_key_value_heads) * c.head_dim, ff = c.intermediate_size;
  const std::string embed = prefix + "embed_tokens.weight";
  s.embed = embed_is_head ? loader.matrix(embed, {c.vocab_size, h})
                          : loader.table(embed, {c.vocab_size, h});
  s.blocks.resize(c.num_hidden_layers);
  for (int i = 0; i < c.num_hidden_layers; ++i) {
    const std::string p = prefix + "layers." + std::to_string(i) + ".";
    BlockWeights& b = s.blocks[i];
    b.input_norm = loader.vector(p + "input_layernorm.weight", h);
    b.q = loader.matrix(p + "self_attn.q_proj.weight", {qd, h});
    b.k = loader.matrix(p + "self_attn.k_proj.weight", {kvd, h});
    b.v = loader.matrix(p + "self_attn.v_proj.weight", {kvd, h});
    b.o = loader.matrix(p + "self_attn.o_proj.weight", {h, qd});
    b.post_norm = loader.vector(p + "post_attention_layernorm.weight", h);
    b.gate = loader.matrix(p + "mlp.gate_proj.weight", {ff, h});
    b.up = loader.matrix(p + "mlp.up_proj.weight", {ff, h});
    b.down = loader.matrix(p + "mlp.down_proj.weight", {h, ff});
    if (cepe && cepe->has_cross_attention(i)) {
      const int64_t eh = cepe->encoder_hidden_size;
      b.has_cross = true;
      b.cross_norm = loader.vector(p + "cross_attn.layernorm.weight", h);
      b.cross_q = loader.matrix(p + "cross_attn.q_proj.weight", {qd, h});
      b.cross_k = loader.matrix(p + "cross_attn.k_proj.weight", {kvd, eh});
      b.cross_v = loader.matrix(p + "cross_attn.v_proj.weight", {kvd, eh});
      b.cross_o = loader.matrix(p + "cross_attn.o_proj.weight", {h, qd});
    }
  }
  s.norm = loader.vector(prefix + "norm.weight", h);
  return s;
}

AttentionShape attention_shape(const LlamaConfig& c) {
  return {c.num_attention_heads, c.num_key_value_heads, c.head_dim,
          1.0f / std::sqrt(static_cast<float>(c.head_dim))};
}

// Per-call activation buffers of one stack: the residual stream and each block's scratch.
struct Activations {
  Tensor x, hbuf, q, k, v, attn, gate, up;
};

Activations make_activations(Backend& be, const LlamaConfig& c, int64_t rows) {
  const int64_t h = c.hidden_size, qd = int64_t(c.num_attention_heads) * c.head_dim,
                kvd = int64_t(c.num_key_value_heads) * c.head_dim, ff = c.intermediate_size;
  Activations a;
  a.x = be.empty({rows, h}, DType::F32);
  a.hbuf = be.empty({rows, h}, DType::F32);
  a.q = be.empty({rows, qd}, DType::F32);
  a.k = be.empty({rows, kvd}, DType::F32);
  a.v = be.empty({rows, kvd}, DType::F32);
  a.attn = be.empty({rows, qd}, DType::F32);
  a.gate = be.empty({rows, ff}, DType::F32);
  a.up = be.empty({rows, ff}, DType::F32);
  return a;
}

// q, k, v of a block's self-attention from input_layernorm(x), rotated.
void self_attention_inputs(Backend& be, const BlockWeights& b, const LlamaConfig& c,
                           const Tensor& cos, const Tensor& sin, Activations& a) {
  be.rms_norm(a.x, b.input_norm, c.rms_norm_eps, a.hbuf);
  const LinearTarget qkv[] = {{&b.q, &a.q}, {&b.k, &a.k}, {&b.v, &a.v}};
  be.linears(a.hbuf, qkv);
  be.rope(a.q, c.num_attention_heads, c.head_dim, cos, sin);
  be.rope(a.k, c.num_key_value_heads, c.head_dim, cos, sin);
}

// x += MLP(post_attention_layernorm(x)).
void add_mlp(Backend& be, const BlockWeights& b, const LlamaConfig& c, Activations& a) {
  be.rms_norm(a.x, b.post_norm, c.rms_norm_eps, a.hbuf);
  const LinearTarget gate_up[] = {{&b.gate, &a.gate}, {&b.up, &a.up}};
  be.linears(a.hbuf, gate_up);
  be.silu_mul(a.gate, a.up);
  be.linear(a.gate, b.down, a.x, /*accumulate=*/true);
}

}  // namespace

std::vector<float> rope_inv_freq(double base, int head_dim) {
  // PyTorch: 1.0 / (base ** (arange(0, d, 2).float() / d)), every step in F32.
  std::vector<float> inv(head_dim / 2);
  const float fbase = static_cast<float>(base);
  for (int i = 0; i < head_dim / 2; ++i) {
    const float e = static_cast<float>(2 * i) / static_cast<float>(head_dim);
    inv[i] = 1.0f / std::pow(fbase, e);
  }
  return inv;
}

double rope_effective_base(const LlamaConfig& cfg, int64_t seq_len) {
  if (cfg.rope_scaling != RopeScalingType::Dynamic || seq_len <= cfg.max_position_embeddings)
    return cfg.rope_theta;
  // Dynamic NTK (as CEPE's LlamaDynamicNTKScalingRotaryEmbedding): the base grows with the
  // sequence so the lowest frequency still spans it; always recomputed from the original base.
  const double f = cfg.rope_scaling_factor, d = cfg.head_dim;
  const double ratio = f * static_cast<double>(seq_len) / cfg.max_position_embeddings - (f - 1.0);
  return cfg.rope_theta * std::pow(ratio, d / (d - 2.0));
}

CrossAttentionMode parse_cross_attention_mode(const std::string& name, Device device,
                                              const std::string& what) {
  if (name == "cached") return CrossAttentionMode::Cached;
  if (name == "absorbed") return CrossAttentionMode::Absorbed;
  // CUDA's absorbed path has not run on a GPU yet, so it keeps the cached form there.
  if (name == "auto")
    return device == Device::CPU ? CrossAttentionMode::Absorbed : CrossAttentionMode::Cached;
  CEPE_THROW(what << ": '" << name << "' is not a cross-attention mode (auto, cached or absorbed)");
}

const char* cross_attention_mode_name(CrossAttentionMode mode) {
  return mode == CrossAttentionMode::Absorbed ? "absorbed" : "cached";
}

DType parse_kv_cache_type(const std::string& name, Device device, WeightKind weights,
                          const std::string& what) {
  if (name == "f32") return DType::F32;
  if (name == "f16") {
    CEPE_CHECK(device == Device::CPU,
               what << ": an f16 KV cache needs device cpu (CUDA keeps f32; use f32 or auto)");
    return DType::F16;
  }
  if (name == "auto") {
    const bool approximate = weights == WeightKind::BF16 || weights == WeightKind::F16 ||
                             weights == WeightKind::Q8_0 || weights == WeightKind::Q4_0;
    return device == Device::CPU && approximate ? DType::F16 : DType::F32;
  }
  CEPE_THROW(what << ": '" << name << "' is not a KV cache type (auto, f32 or f16)");
}

void CepeModel::set_kv_cache_dtype(DType dtype) {
  CEPE_CHECK(dtype == DType::F32 || (dtype == DType::F16 && backend_.device() == Device::CPU),
             "KV cache dtype " << dtype_name(dtype) << " is not supported on "
                               << device_name(backend_.device())
                               << " (cpu: F32 or F16; cuda: F32)");
  kv_dtype_ = dtype;
}

int64_t EncodedContext::tokens() const {
  int64_t n = states.defined() && states.rank() == 2 ? states.dim(0) : 0;
  for (size_t i = 0; i < parts.size(); ++i)
    n += parts[i].defined() ? parts[i].dim(0) : (i < chunk_lengths.size() ? chunk_lengths[i] : 0);
  return n;
}

bool EncodedContext::has_projected() const {
  for (const ProjectedKV& p : projected)
    if (p.defined()) return true;
  return false;
}

std::vector<Tensor> EncodedContext::blocks() const {
  if (!parts.empty()) return parts;
  if (!states.defined() || states.rank() != 2 || states.dim(0) == 0) return {};
  // One view per chunk where the lengths say so, so a request reads the same blocks (and rounds
  // the same way) whether its passages were encoded together or come from a store one by one.
  int64_t total = 0;
  for (int64_t n : chunk_lengths) total += n;
  if (chunk_lengths.size() < 2 || total != states.dim(0)) return {states};
  std::vector<Tensor> out;
  int64_t row = 0;
  for (int64_t n : chunk_lengths) {
    out.push_back(states.rows(row, n));
    row += n;
  }
  return out;
}

size_t DecoderState::encoder_state_bytes() const {
  size_t n = 0;
  for (const Tensor& part : context_)
    if (!part.file_backed()) n += part.nbytes();  // mapped store pages belong to no request
  return n;
}

size_t DecoderState::cache_bytes() const {
  size_t n = encoder_state_bytes();
  for (const auto* v : {&k_cache_, &v_cache_})
    for (const Tensor& t : *v)
      if (t.defined()) n += t.nbytes();
  // Layers without cross-attention hold none; mapped store pages belong to no request.
  for (const auto* v : {&cross_k_, &cross_v_})
    for (const std::vector<Tensor>& blocks : *v)
      for (const Tensor& t : blocks)
        if (t.defined() && !t.file_backed()) n += t.nbytes();
  return n;
}

CepeModel::CepeModel(ModelConfig config, Backend& backend)
    : config_(std::move(config)), backend_(backend) {}

CepeModel::~CepeModel() = default;

std::unique_ptr<CepeModel> CepeModel::load(const std::filesystem::path& model_dir, Backend& backend,
                                           const LoadProgress& progress) {
  return load(model_dir, load_model_config(model_dir), backend, progress);
}

std::unique_ptr<CepeModel> CepeModel::load(const std::filesystem::path& model_dir,
                                           ModelConfig config, Backend& backend,
                                           const LoadProgress& progress) {
  auto store = std::make_shared<WeightStore>(WeightStore::open(model_dir));
  std::unique_ptr<CepeModel> model(new CepeModel(std::move(config), backend));
  model->store_ = store;
  model->load_weights(*store, progress);
  return model;
}

void CepeModel::load_weights(const WeightStore& store, const LoadProgress& progress) {
  StackLoader loader(store, backend_, &weight_bytes_, progress);
  const LlamaConfig& d = config_.decoder;
  // A tied table is also the output head, which every step reads whole.
  const bool tied = d.tie_word_embeddings && !store.contains("lm_head.weight");
  decoder_ = load_stack(loader, d, "model.", config_.is_cepe() ? &config_ : nullptr, tied);
  // A decode step reads every decoder weight but the embedding table (one row per token).
  decode_weight_bytes_ = weight_bytes_ - decoder_.embed.nbytes();
  if (config_.is_cepe())
    encoder_ = load_stack(loader, *config_.encoder, "encoder.", nullptr, false);
  if (tied) {
    lm_head_ = decoder_.embed;
  } else {
    lm_head_ = loader.matrix("lm_head.weight", {d.vocab_size, d.hidden_size});
  }
  decode_weight_bytes_ += lm_head_.nbytes();
  loader.finish();
}

void CepeModel::rope_tables(const LlamaConfig& cfg, const std::vector<int64_t>& positions,
                            const std::vector<int64_t>& rope_lengths, Tensor* cos,
                            Tensor* sin) const {
  const int half = cfg.head_dim / 2;
  const int64_t rows = static_cast<int64_t>(positions.size());
  Tensor c = Tensor::empty({rows, half}, DType::F32);
  Tensor s = Tensor::empty({rows, half}, DType::F32);
  double cached_base = -1.0;
  std::vector<float> inv;
  for (int64_t r = 0; r < rows; ++r) {
    const double base = rope_effective_base(cfg, rope_lengths[r]);
    if (base != cached_base) {
      inv = rope_inv_freq(base, cfg.head_dim);
      cached_base = base;
    }
    float t = static_cast<float>(positions[r]);
    if (cfg.rope_scaling == RopeScalingType::Linear)
      t = t / static_cast<float>(cfg.rope_scaling_factor);
    for (int i = 0; i < half; ++i) {
      const float angle = t * inv[i];  // F32 product, as torch's outer product
      c.data<float>()[r * half + i] = static_cast<float>(std::cos(static_cast<double>(angle)));
      s.data<float>()[r * half + i] = static_cast<float>(std::sin(static_cast<double>(angle)));
    }
  }
  *cos = backend_.to_device(c);
  *sin = backend_.to_device(s);
}

EncodedContext CepeModel::encode(const std::vector<std::vector<int32_t>>& chunks) {
  // The official encoder runs the chunks as one padded batch, so a dynamic-NTK base depends on
  // the longest chunk; using it for every chunk reproduces that.
  int64_t longest = 0;
  for (const auto& chunk : chunks) longest = std::max<int64_t>(longest, chunk.size());
  return encode(chunks, std::vector<int64_t>(chunks.size(), longest));
}

EncodedContext CepeModel::encode(const std::vector<std::vector<int32_t>>& chunks,
                                 const std::vector<int64_t>& rope_lengths) {
  CEPE_CHECK(config_.is_cepe(),
             "this model has no CEPE encoder (config.json has no "
             "encoder_config), so it cannot take context chunks");
  CEPE_CHECK(rope_lengths.size() == chunks.size(), "encode: " << rope_lengths.size()
                                                              << " rotary lengths for "
                                                              << chunks.size() << " chunks");
  const LlamaConfig& c = *config_.encoder;
  EncodedContext ctx;
  if (chunks.empty()) return ctx;
  std::vector<int32_t> ids;
  std::vector<int64_t> positions, row_rope_lengths;
  for (size_t i = 0; i < chunks.size(); ++i) {
    CEPE_CHECK(!chunks[i].empty(), "context chunk " << i << " is empty");
    CEPE_CHECK(rope_lengths[i] >= static_cast<int64_t>(chunks[i].size()),
               "encode: chunk " << i << " has " << chunks[i].size()
                                << " tokens, more than its rotary length " << rope_lengths[i]);
    ctx.chunk_lengths.push_back(static_cast<int64_t>(chunks[i].size()));
    for (size_t p = 0; p < chunks[i].size(); ++p) {
      ids.push_back(chunks[i][p]);
      positions.push_back(static_cast<int64_t>(p));
      row_rope_lengths.push_back(rope_lengths[i]);
    }
  }
  const int64_t rows = static_cast<int64_t>(ids.size());
  const int64_t h = c.hidden_size;
  Tensor cos, sin;
  rope_tables(c, positions, row_rope_lengths, &cos, &sin);

  Activations a = make_activations(backend_, c, rows);
  backend_.embedding(encoder_.embed, ids, a.x);

  std::vector<AttentionSegment> segments;
  int64_t begin = 0;
  for (int64_t len : ctx.chunk_lengths) {
    AttentionSegment s;
    s.q_begin = begin;
    s.q_len = len;
    s.k = a.k.rows(begin, len);
    s.v = a.v.rows(begin, len);
    segments.push_back(s);
    begin += len;
  }
  const AttentionShape shape = attention_shape(c);
  for (const BlockWeights& b : encoder_.blocks) {
    self_attention_inputs(backend_, b, c, cos, sin, a);
    backend_.attention(a.q, segments, shape, a.attn);
    backend_.linear(a.attn, b.o, a.x, /*accumulate=*/true);
    add_mlp(backend_, b, c, a);
  }
  ctx.states = backend_.empty({rows, h}, DType::F32);
  backend_.rms_norm(a.x, encoder_.norm, c.rms_norm_eps, ctx.states);
  return ctx;
}

std::unique_ptr<DecoderState> CepeModel::new_state(int64_t expected_tokens) const {
  auto state = std::unique_ptr<DecoderState>(new DecoderState());
  state->rope_length_ = config_.decoder.max_position_embeddings;
  ensure_capacity(*state, std::max<int64_t>(expected_tokens, 1));
  return state;
}

void CepeModel::ensure_capacity(DecoderState& state, int64_t needed) const {
  if (needed <= state.capacity_) return;
  const LlamaConfig& c = config_.decoder;
  const int64_t kvd = int64_t(c.num_key_value_heads) * c.head_dim;
  const int64_t capacity = std::max(needed, state.capacity_ * 2);
  state.k_cache_.resize(c.num_hidden_layers);
  state.v_cache_.resize(c.num_hidden_layers);
  // A sequence keeps the element type it started with.
  const DType dtype = state.capacity_ > 0 ? state.k_cache_[0].dtype() : kv_dtype_;
  for (int l = 0; l < c.num_hidden_layers; ++l) {
    for (Tensor* cache : {&state.k_cache_[l], &state.v_cache_[l]}) {
      Tensor grown = backend_.empty({capacity, kvd}, dtype);
      if (state.length_ > 0) backend_.copy_rows(*cache, 0, grown, 0, state.length_);
      *cache = grown;
    }
  }
  state.capacity_ = capacity;
}

void CepeModel::set_context(DecoderState& state, const EncodedContext& context) {
  CEPE_CHECK(state.length_ == 0, "context must be attached before the first token");
  if (context.tokens() == 0) return;
  CEPE_CHECK(config_.is_cepe(), "this model has no cross-attention, so it cannot take context");
  state.encoder_tokens_ = context.tokens();
  const bool cpu = backend_.device() == Device::CPU;
  const bool projected = context.has_projected();
  CEPE_CHECK(!projected || (cpu && context.projected.size() == context.parts.size()),
             "projected keys and values come one per part, on the CPU");
  if (cross_mode_ == CrossAttentionMode::Absorbed && !projected) {
    // Keys in parts are a CPU form; a device reads the request's one tensor. With an F16 KV cache
    // E is kept in F16 too, as cached mode keeps its K/V: half the bytes a decode step reads.
    if (cpu) {
      std::vector<Tensor> kept;
      for (const Tensor& block : context.blocks()) kept.push_back(cross_cache_form(block));
      state.context_ = std::move(kept);
    } else {
      CEPE_CHECK(context.parts.empty(), "encoder states in parts are a CPU-only form");
      state.context_ = {context.states};
    }
    return;
  }
  const LlamaConfig& c = config_.decoder;
  const int64_t kvd = int64_t(c.num_key_value_heads) * c.head_dim;
  state.cross_k_.assign(c.num_hidden_layers, {});
  state.cross_v_.assign(c.num_hidden_layers, {});
  if (!cpu) {
    for (int l = 0; l < c.num_hidden_layers; ++l) {
      const BlockWeights& b = decoder_.blocks[l];
      if (!b.has_cross) continue;
      state.cross_k_[l] = {backend_.empty({context.tokens(), kvd}, DType::F32)};
      state.cross_v_[l] = {backend_.empty({context.tokens(), kvd}, DType::F32)};
      project_blocks(context.blocks(), b.cross_k, state.cross_k_[l][0]);
      project_blocks(context.blocks(), b.cross_v, state.cross_v_[l][0]);
    }
    return;
  }
  // One block per chunk: projected ahead (read in place) or projected now.
  const std::vector<Tensor> blocks = context.blocks();
  for (size_t i = 0; i < blocks.size(); ++i) {
    const ProjectedKV kv = i < context.projected.size() && context.projected[i].defined()
                               ? context.projected[i]
                               : project_chunk(blocks[i]);
    CEPE_CHECK(kv.k.size() == size_t(c.num_hidden_layers) && kv.v.size() == kv.k.size(),
               "projected keys and values of chunk " << i << " cover " << kv.k.size()
                                                     << " layers, the decoder has "
                                                     << c.num_hidden_layers);
    for (int l = 0; l < c.num_hidden_layers; ++l) {
      if (!decoder_.blocks[l].has_cross) continue;
      CEPE_CHECK(kv.k[l].defined() && kv.k[l].rank() == 2 && kv.k[l].dim(1) == kvd &&
                     kv.v[l].defined() && kv.v[l].shape() == kv.k[l].shape(),
                 "projected keys and values of chunk " << i << ", layer " << l
                                                       << ": expected [tokens, " << kvd << "]");
      state.cross_k_[l].push_back(cross_cache_form(kv.k[l]));
      state.cross_v_[l].push_back(cross_cache_form(kv.v[l]));
    }
  }
}

Tensor CepeModel::cross_cache_form(const Tensor& rows) const {
  // Rows read in place from a store stay as stored (F32 or F16 mapped pages, shared by every
  // request); rows projected, encoded or decoded for this request take the KV cache's type.
  if (kv_dtype_ != DType::F16 || rows.dtype() != DType::F32 || rows.file_backed()) return rows;
  Tensor rounded = backend_.empty(rows.shape(), DType::F16);
  backend_.copy_rows(rows, 0, rounded, 0, rows.dim(0));
  return rounded;
}

ProjectedKV CepeModel::project_chunk(const Tensor& states) const {
  const LlamaConfig& c = config_.decoder;
  const int64_t kvd = int64_t(c.num_key_value_heads) * c.head_dim;
  ProjectedKV kv;
  kv.k.resize(c.num_hidden_layers);
  kv.v.resize(c.num_hidden_layers);
  const Tensor input = backend_.to_device(states);
  for (int l = 0; l < c.num_hidden_layers; ++l) {
    const BlockWeights& b = decoder_.blocks[l];
    if (!b.has_cross) continue;
    kv.k[l] = backend_.empty({input.dim(0), kvd}, DType::F32);
    kv.v[l] = backend_.empty({input.dim(0), kvd}, DType::F32);
    const LinearTarget cross_kv[] = {{&b.cross_k, &kv.k[l]}, {&b.cross_v, &kv.v[l]}};
    backend_.linears(input, cross_kv);
  }
  return kv;
}

void CepeModel::project_blocks(const std::vector<Tensor>& blocks, const Tensor& weight,
                               Tensor& out) const {
  int64_t row = 0;
  for (const Tensor& block : blocks) {
    Tensor rows = out.rows(row, block.dim(0));
    // Encoder states kept in F16 (absorbed, F16 KV cache) widen for the projection (exactly).
    backend_.linear(block.dtype() == DType::F32 ? block : backend_.to_host_f32(block), weight,
                    rows);
    row += block.dim(0);
  }
}

Tensor CepeModel::forward(DecoderState& state, const std::vector<int32_t>& tokens,
                          bool all_logits) {
  return forward_batch({&state}, {tokens}, all_logits);
}

Tensor CepeModel::forward_batch(const std::vector<DecoderState*>& states,
                                const std::vector<std::vector<int32_t>>& tokens, bool all_logits) {
  CEPE_CHECK(
      states.size() == tokens.size() && !states.empty(),
      "forward_batch: " << states.size() << " states for " << tokens.size() << " token lists");
  const LlamaConfig& c = config_.decoder;
  std::vector<int32_t> ids;
  std::vector<int64_t> positions, rope_lengths, row_begin, row_count;
  for (size_t s = 0; s < states.size(); ++s) {
    DecoderState& st = *states[s];
    CEPE_CHECK(!tokens[s].empty(), "sequence " << s << ": no tokens to run");
    const int64_t total = st.length_ + static_cast<int64_t>(tokens[s].size());
    ensure_capacity(st, total);
    // Dynamic NTK: the rotary tables are rebuilt for the longest sequence seen so far; tokens
    // already cached keep the rotation they were stored with (as in the official code).
    st.rope_length_ = std::max(st.rope_length_, total);
    row_begin.push_back(static_cast<int64_t>(ids.size()));
    row_count.push_back(static_cast<int64_t>(tokens[s].size()));
    for (size_t i = 0; i < tokens[s].size(); ++i) {
      ids.push_back(tokens[s][i]);
      positions.push_back(st.length_ + static_cast<int64_t>(i));
      rope_lengths.push_back(st.rope_length_);
    }
  }
  const int64_t rows = static_cast<int64_t>(ids.size());
  const int64_t h = c.hidden_size;
  Tensor cos, sin;
  rope_tables(c, positions, rope_lengths, &cos, &sin);

  Activations a = make_activations(backend_, c, rows);
  backend_.embedding(decoder_.embed, ids, a.x);
  const AttentionShape shape = attention_shape(c);

  for (int l = 0; l < c.num_hidden_layers; ++l) {
    const BlockWeights& b = decoder_.blocks[l];
    self_attention_inputs(backend_, b, c, cos, sin, a);
    std::vector<AttentionSegment> self_segments;
    for (size_t s = 0; s < states.size(); ++s) {
      DecoderState& st = *states[s];
      const int64_t n = static_cast<int64_t>(tokens[s].size());
      backend_.copy_rows(a.k, row_begin[s], st.k_cache_[l], st.length_, n);
      backend_.copy_rows(a.v, row_begin[s], st.v_cache_[l], st.length_, n);
      AttentionSegment seg;
      seg.q_begin = row_begin[s];
      seg.q_len = n;
      seg.k = st.k_cache_[l].rows(0, st.length_ + n);
      seg.v = st.v_cache_[l].rows(0, st.length_ + n);
      seg.causal = true;
      seg.causal_offset = st.length_;
      self_segments.push_back(seg);
    }
    backend_.attention(a.q, self_segments, shape, a.attn);
    backend_.linear(a.attn, b.o, a.x, /*accumulate=*/true);
    if (b.has_cross) cross_attention(b, l, states, row_begin, row_count, a.x, a.hbuf, a.q, a.attn);
    add_mlp(backend_, b, c, a);
  }
  for (size_t s = 0; s < states.size(); ++s)
    states[s]->length_ += static_cast<int64_t>(tokens[s].size());

  // Only the rows whose logits are wanted go through the final norm and the vocabulary GEMM.
  Tensor selected = a.x;
  if (!all_logits) {
    selected = backend_.empty({static_cast<int64_t>(states.size()), h}, DType::F32);
    for (size_t s = 0; s < states.size(); ++s)
      backend_.copy_rows(a.x, row_begin[s] + static_cast<int64_t>(tokens[s].size()) - 1, selected,
                         static_cast<int64_t>(s), 1);
  }
  const int64_t out_rows = selected.dim(0);
  Tensor normed = backend_.empty({out_rows, h}, DType::F32);
  backend_.rms_norm(selected, decoder_.norm, c.rms_norm_eps, normed);
  Tensor logits = backend_.empty({out_rows, int64_t(c.vocab_size)}, DType::F32);
  backend_.linear(normed, lm_head_, logits);
  return backend_.to_host_f32(logits);
}

void CepeModel::cross_attention(const BlockWeights& b, int layer,
                                const std::vector<DecoderState*>& states,
                                const std::vector<int64_t>& row_begin,
                                const std::vector<int64_t>& row_count, Tensor& x, Tensor& hbuf,
                                Tensor& q, Tensor& attn) {
  const LlamaConfig& c = config_.decoder;
  const int64_t rows = x.dim(0);
  const int64_t qd = int64_t(c.num_attention_heads) * c.head_dim,
                kvd = int64_t(c.num_key_value_heads) * c.head_dim;
  const int64_t eh = config_.encoder_hidden_size;
  // Per sequence: attention over keys/values (cached, or projected for this call only), or the
  // absorbed form. Absorbed costs ~2·heads·n·eh FLOPs per query row against a one-off
  // 2·n·eh·kvd projection plus 2·heads·n·hd per row: it wins below ~eh·kvd / (heads·(eh - hd))
  // rows, i.e. always for decode steps and never for a 2048-token prefill at 7B shapes.
  std::vector<AttentionSegment> direct;
  std::vector<size_t> absorbed;
  size_t with_context = 0;
  for (size_t s = 0; s < states.size(); ++s) {
    DecoderState& st = *states[s];
    if (st.encoder_tokens_ == 0) continue;
    ++with_context;
    AttentionSegment seg;
    seg.q_begin = row_begin[s];
    seg.q_len = row_count[s];
    if (st.context_.empty()) {  // cached
      if (st.cross_k_[layer].size() == 1) {
        seg.k = st.cross_k_[layer][0];
        seg.v = st.cross_v_[layer][0];
      } else {
        seg.k_parts = st.cross_k_[layer];
        seg.v_parts = st.cross_v_[layer];
      }
    } else {
      const bool use_absorbed =
          absorbed_max_rows_ >= 0
              ? row_count[s] <= absorbed_max_rows_
              : eh <= c.head_dim ||
                    row_count[s] * c.num_attention_heads * (eh - c.head_dim) < eh * kvd;
      if (use_absorbed) {
        absorbed.push_back(s);
        continue;
      }
      seg.k = backend_.empty({st.encoder_tokens_, kvd}, DType::F32);
      seg.v = backend_.empty({st.encoder_tokens_, kvd}, DType::F32);
      project_blocks(st.context_, b.cross_k, seg.k);
      project_blocks(st.context_, b.cross_v, seg.v);
    }
    direct.push_back(std::move(seg));
  }
  if (with_context == 0) return;
  backend_.rms_norm(x, b.cross_norm, c.rms_norm_eps, hbuf);
  backend_.linear(hbuf, b.cross_q, q);
  // Rows of sequences without context stay zero; o_proj has no bias, so they add nothing.
  Tensor out = attn;
  if (with_context != states.size())
    out = backend_.to_device(Tensor::zeros({rows, qd}, DType::F32));
  if (!direct.empty()) backend_.attention(q, direct, attention_shape(c), out);
  if (!absorbed.empty())
    absorbed_cross_attention(b, states, absorbed, row_begin, row_count, q, out);
  backend_.linear(out, b.cross_o, x, /*accumulate=*/true);
}

void CepeModel::absorbed_cross_attention(const BlockWeights& b,
                                         const std::vector<DecoderState*>& states,
                                         const std::vector<size_t>& which,
                                         const std::vector<int64_t>& row_begin,
                                         const std::vector<int64_t>& row_count, const Tensor& q,
                                         Tensor& out) {
  const LlamaConfig& c = config_.decoder;
  const int heads = c.num_attention_heads, groups = c.num_key_value_heads;
  const int64_t qd = int64_t(heads) * c.head_dim, eh = config_.encoder_hidden_size;
  // The sequences' query rows, packed (no copy when they are the whole batch, in order).
  const bool whole = which.size() == states.size();
  int64_t rows = 0;
  for (size_t s : which) rows += row_count[s];
  Tensor q_rows = q, out_rows = out;
  if (!whole) {
    q_rows = backend_.empty({rows, qd}, DType::F32);
    out_rows = backend_.empty({rows, qd}, DType::F32);
  }
  // Cross-attention is not causal and, after absorption, every head reads the same keys and
  // values (E itself). A sequence with a few rows (decode steps) is one query row of `heads`
  // heads sharing one kv head of width eh: the decode kernel then reads each block of E once
  // for all heads. Longer ones make each (row, head) pair a query row of width eh, one
  // [q_len * heads, eh] x [eh, n] product instead of `heads` narrow ones; CUDA takes that form
  // for decode steps too (its wide heads are cuBLAS GEMMs, one per head of the shared form).
  // q_abs and `mixed` are laid out alike for both ([rows, heads * eh] is [rows * heads, eh]).
  std::vector<AttentionSegment> shared, per_head;
  int64_t at = 0;
  for (size_t s : which) {
    if (!whole) backend_.copy_rows(q, row_begin[s], q_rows, at, row_count[s]);
    const int64_t first = whole ? row_begin[s] : at;
    AttentionSegment seg;
    const bool few = row_count[s] <= kSharedHeadRows && backend_.device() == Device::CPU;
    seg.q_begin = few ? first : first * heads;
    seg.q_len = few ? row_count[s] : row_count[s] * heads;
    const std::vector<Tensor>& context = states[s]->context_;
    if (context.size() == 1) {
      seg.k = seg.v = context[0];
    } else {
      seg.k_parts = seg.v_parts = context;
    }
    (few ? shared : per_head).push_back(std::move(seg));
    at += row_count[s];
  }
  // q'_h = W_k,gᵀ q_h, scored against E; the softmax scale stays the decoder head's.
  Tensor q_abs = backend_.empty({rows, heads * eh}, DType::F32);
  backend_.head_linear(q_rows, b.cross_k, heads, groups, /*transposed=*/false, q_abs);
  Tensor mixed = backend_.empty({rows, heads * eh}, DType::F32);
  const float scale = 1.0f / std::sqrt(static_cast<float>(c.head_dim));
  if (!shared.empty())
    backend_.attention(q_abs, shared, AttentionShape{heads, 1, static_cast<int>(eh), scale}, mixed);
  if (!per_head.empty()) {
    Tensor mixed_rows = mixed.reshape({rows * heads, eh});
    backend_.attention(q_abs.reshape({rows * heads, eh}), per_head,
                       AttentionShape{1, 1, static_cast<int>(eh), scale}, mixed_rows);
  }
  // out_h = W_v,g · (softmax · E): the value projection applied after the weighted sum.
  backend_.head_linear(mixed, b.cross_v, heads, groups, /*transposed=*/true, out_rows);
  if (whole) return;
  at = 0;
  for (size_t s : which) {
    backend_.copy_rows(out_rows, at, out, row_begin[s], row_count[s]);
    at += row_count[s];
  }
}

}  // namespace cepe
