#include "engine/models/bert.h"

#include <rapidjson/document.h>

#include <algorithm>
#include <cmath>

#include "common/error.h"
#include "common/fileio.h"
#include "common/json.h"
#include "engine/safetensors.h"

namespace cepe {

namespace fs = std::filesystem;

BertConfig read_bert_config(const fs::path& dir) {
  const fs::path path = dir / "config.json";
  CEPE_CHECK(fs::is_regular_file(path), "BERT config " << path.string() << " not found");
  const std::string json = read_whole_file(path, "BERT config");
  rapidjson::Document doc;
  parse_json_or_throw(json, &doc, path.string());
  CEPE_CHECK(doc.IsObject(), path.string() << ": not a JSON object");
  const std::string where = path.string();
  auto integer = [&](const char* key, int* out, bool required, int min_value) {
    if (!doc.HasMember(key)) {
      CEPE_CHECK(!required, where << ": missing field " << key);
      return;
    }
    const auto& v = doc[key];
    CEPE_CHECK(v.IsInt() && v.GetInt() >= min_value,
               where << ": field " << key << " must be an integer >= " << min_value);
    *out = v.GetInt();
  };
  auto text = [&](const char* key) -> std::string {
    if (!doc.HasMember(key) || doc[key].IsNull()) return "";
    CEPE_CHECK(doc[key].IsString(), where << ": field " << key << " must be a string");
    return doc[key].GetString();
  };
  BertConfig c;
  integer("hidden_size", &c.hidden_size, true, 1);
  integer("num_hidden_layers", &c.num_hidden_layers, true, 0);
  integer("num_attention_heads", &c.num_attention_heads, true, 1);
  integer("intermediate_size", &c.intermediate_size, true, 1);
  integer("max_position_embeddings", &c.max_position_embeddings, true, 2);
  integer("type_vocab_size", &c.type_vocab_size, false, 1);
  integer("vocab_size", &c.vocab_size, false, 1);
  if (doc.HasMember("layer_norm_eps")) {
    CEPE_CHECK(doc["layer_norm_eps"].IsNumber() && doc["layer_norm_eps"].GetDouble() > 0,
               where << ": field layer_norm_eps must be a positive number");
    c.layer_norm_eps = static_cast<float>(doc["layer_norm_eps"].GetDouble());
  }
  CEPE_CHECK(c.hidden_size % c.num_attention_heads == 0,
             where << ": field hidden_size " << c.hidden_size
                   << " is not a multiple of num_attention_heads " << c.num_attention_heads);
  const std::string act = text("hidden_act");
  CEPE_CHECK(act.empty() || act == "gelu",
             where << ": field hidden_act is '" << act
                   << "'; only \"gelu\" (the exact erf form) is supported");
  const std::string pos = text("position_embedding_type");
  CEPE_CHECK(pos.empty() || pos == "absolute", where << ": field position_embedding_type is '"
                                                     << pos << "'; only \"absolute\" is supported");
  const std::string type = text("model_type");
  CEPE_CHECK(type.empty() || type == "bert",
             where << ": field model_type is '" << type
                   << "'; only BERT checkpoints (model_type \"bert\") are supported");
  return c;
}

BertModel::BertModel(const fs::path& dir, Backend& backend, Hasher* weights_hash)
    : config_(read_bert_config(dir)), backend_(backend) {
  const WeightStore store = WeightStore::open(dir);
  // Checkpoints saved from BertForXxx wrappers carry a "bert." prefix.
  const std::string prefix = !store.contains("embeddings.word_embeddings.weight") &&
                                     store.contains("bert.embeddings.word_embeddings.weight")
                                 ? "bert."
                                 : "";
  const int64_t H = config_.hidden_size, I = config_.intermediate_size;
  std::vector<std::string> dtypes;
  // Every tensor is fetched by name and shape (errors name the tensor and file) and hashed.
  auto get = [&](const std::string& name, std::vector<int64_t> shape) {
    const std::string full = prefix + name;
    Tensor t = shape.empty() ? store.get(full) : store.get(full, shape);
    if (weights_hash) {
      weights_hash->update_string(full);
      weights_hash->update_string(dtype_name(t.dtype()));
      for (int64_t d : t.shape()) weights_hash->update_u64(static_cast<uint64_t>(d));
      weights_hash->update(t.raw(), t.nbytes());
    }
    if (std::find(dtypes.begin(), dtypes.end(), dtype_name(t.dtype())) == dtypes.end())
      dtypes.push_back(dtype_name(t.dtype()));
    return t;
  };
  auto matrix = [&](const std::string& name, int64_t rows, int64_t cols) {
    return backend_.load_weight(get(name, {rows, cols}), WeightUse::Matrix);
  };
  auto vec = [&](const std::string& name, int64_t n) {
    return backend_.load_weight(get(name, {n}), WeightUse::Vector);
  };

  const Tensor word = get("embeddings.word_embeddings.weight", {});
  CEPE_CHECK(word.rank() == 2 && word.dim(1) == H,
             "tensor '" << prefix << "embeddings.word_embeddings.weight' in "
                        << store.file_of(prefix + "embeddings.word_embeddings.weight").string()
                        << " has shape " << word.shape_string() << ", expected [vocab, " << H
                        << "]");
  CEPE_CHECK(config_.vocab_size == 0 || word.dim(0) == config_.vocab_size,
             "tensor '" << prefix << "embeddings.word_embeddings.weight' in "
                        << store.file_of(prefix + "embeddings.word_embeddings.weight").string()
                        << " has " << word.dim(0) << " rows, config.json says vocab_size "
                        << config_.vocab_size);
  vocab_rows_ = word.dim(0);
  word_embeddings_ = backend_.load_weight(word, WeightUse::Table);

  // Position + token-type-0 embeddings summed once, in F32, on the host.
  const Tensor pos =
      get("embeddings.position_embeddings.weight", {config_.max_position_embeddings, H});
  const Tensor types = get("embeddings.token_type_embeddings.weight", {config_.type_vocab_size, H});
  Tensor pt = Tensor::empty({config_.max_position_embeddings, H}, DType::F32);
  convert_to_f32(pos.raw(), pos.dtype(), pt.data<float>(), pos.numel());
  std::vector<float> type0(static_cast<size_t>(H));
  convert_to_f32(types.raw(), types.dtype(), type0.data(), H);
  for (int64_t r = 0; r < config_.max_position_embeddings; ++r)
    for (int64_t c = 0; c < H; ++c) pt.data<float>()[r * H + c] += type0[c];
  position_type_ = backend_.to_device(pt);
  embed_ln_w_ = vec("embeddings.LayerNorm.weight", H);
  embed_ln_b_ = vec("embeddings.LayerNorm.bias", H);

  for (int i = 0; i < config_.num_hidden_layers; ++i) {
    const std::string p = "encoder.layer." + std::to_string(i) + ".";
    Layer l;
    l.q_w = matrix(p + "attention.self.query.weight", H, H);
    l.q_b = vec(p + "attention.self.query.bias", H);
    l.k_w = matrix(p + "attention.self.key.weight", H, H);
    l.k_b = vec(p + "attention.self.key.bias", H);
    l.v_w = matrix(p + "attention.self.value.weight", H, H);
    l.v_b = vec(p + "attention.self.value.bias", H);
    l.o_w = matrix(p + "attention.output.dense.weight", H, H);
    l.o_b = vec(p + "attention.output.dense.bias", H);
    l.ln1_w = vec(p + "attention.output.LayerNorm.weight", H);
    l.ln1_b = vec(p + "attention.output.LayerNorm.bias", H);
    l.i_w = matrix(p + "intermediate.dense.weight", I, H);
    l.i_b = vec(p + "intermediate.dense.bias", I);
    l.out_w = matrix(p + "output.dense.weight", H, I);
    l.out_b = vec(p + "output.dense.bias", H);
    l.ln2_w = vec(p + "output.LayerNorm.weight", H);
    l.ln2_b = vec(p + "output.LayerNorm.bias", H);
    layers_.push_back(std::move(l));
  }
  backend_.synchronize();
  for (const auto& d : dtypes) weight_dtypes_ += (weight_dtypes_.empty() ? "" : "/") + d;
}

Tensor BertModel::forward(const std::vector<std::vector<int32_t>>& ids,
                          std::vector<int64_t>* offsets) const {
  Backend& b = backend_;
  const int64_t H = config_.hidden_size, I = config_.intermediate_size;
  CEPE_CHECK(!ids.empty(), "BERT forward: no texts");
  const int heads = config_.num_attention_heads;
  const float eps = config_.layer_norm_eps;
  std::vector<int32_t> tokens, positions;
  offsets->clear();
  for (const auto& t : ids) {
    offsets->push_back(static_cast<int64_t>(tokens.size()));
    tokens.insert(tokens.end(), t.begin(), t.end());
    for (size_t p = 0; p < t.size(); ++p) positions.push_back(static_cast<int32_t>(p));
  }
  const int64_t T = static_cast<int64_t>(tokens.size());

  // Embeddings: word + (position + token type 0), LayerNorm.
  Tensor x = b.empty({T, H}, DType::F32);
  Tensor tmp = b.empty({T, H}, DType::F32);
  b.embedding(word_embeddings_, tokens, x);
  b.embedding(position_type_, positions, tmp);
  b.add(x, tmp);
  b.layer_norm(x, embed_ln_w_, embed_ln_b_, eps, x);

  Tensor q = b.empty({T, H}, DType::F32), k = b.empty({T, H}, DType::F32),
         v = b.empty({T, H}, DType::F32), ctx = tmp, mid = b.empty({T, I}, DType::F32);
  // One bidirectional attention problem per text, packed without padding.
  std::vector<AttentionSegment> segments(ids.size());
  for (size_t i = 0; i < ids.size(); ++i) {
    const int64_t len = static_cast<int64_t>(ids[i].size());
    segments[i].q_begin = (*offsets)[i];
    segments[i].q_len = len;
    segments[i].k = k.rows((*offsets)[i], len);
    segments[i].v = v.rows((*offsets)[i], len);
    segments[i].causal = false;
  }
  AttentionShape shape;
  shape.heads = shape.kv_heads = heads;
  shape.head_dim = static_cast<int>(H / heads);
  shape.scale = 1.0f / std::sqrt(static_cast<float>(shape.head_dim));

  for (const Layer& l : layers_) {
    const LinearTarget qkv[] = {{&l.q_w, &q}, {&l.k_w, &k}, {&l.v_w, &v}};
    b.linears(x, qkv);
    b.add_bias(q, l.q_b);
    b.add_bias(k, l.k_b);
    b.add_bias(v, l.v_b);
    b.attention(q, segments, shape, ctx);
    // Post-LN residuals: x = LN(x + W ctx + b).
    b.linear(ctx, l.o_w, x, /*accumulate=*/true);
    b.add_bias(x, l.o_b);
    b.layer_norm(x, l.ln1_w, l.ln1_b, eps, x);
    b.linear(x, l.i_w, mid);
    b.add_bias(mid, l.i_b);
    b.gelu(mid);
    b.linear(mid, l.out_w, x, /*accumulate=*/true);
    b.add_bias(x, l.out_b);
    b.layer_norm(x, l.ln2_w, l.ln2_b, eps, x);
  }

  return x;
}

}  // namespace cepe
