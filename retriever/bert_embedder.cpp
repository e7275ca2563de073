#include "retriever/bert_embedder.h"

#include <rapidjson/document.h>
#include <rapidjson/error/en.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <fstream>
#include <sstream>

#include "common/error.h"
#include "common/hash.h"
#include "common/json.h"
#include "engine/safetensors.h"

namespace cepe::retriever {

namespace fs = std::filesystem;

namespace {

std::string slurp(const fs::path& path, const char* what) {
  std::ifstream in(path, std::ios::binary);
  CEPE_CHECK(in, "cannot read " << what << " " << path.string());
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

bool parse_bool(const std::string& key, const std::string& v) {
  if (v == "1" || v == "true") return true;
  if (v == "0" || v == "false") return false;
  CEPE_THROW("embedder spec: " << key << "=" << v << " must be 0, 1, true or false");
}

}  // namespace

BertSpec parse_bert_spec(const std::string& spec) {
  CEPE_CHECK(spec.rfind("bert:", 0) == 0,
             "embedder spec '" << spec << "' does not start with bert:");
  const std::string body = spec.substr(5);
  const size_t comma = body.find(',');
  BertSpec s;
  s.dir = body.substr(0, comma);
  CEPE_CHECK(!s.dir.empty(), "embedder spec '" << spec << "' names no model directory (bert:DIR)");
  if (comma == std::string::npos) return s;
  s.options = body.substr(comma);
  size_t pos = comma + 1;
  while (pos <= body.size()) {
    size_t end = body.find(',', pos);
    if (end == std::string::npos) end = body.size();
    const std::string item = body.substr(pos, end - pos);
    pos = end + 1;
    if (item.empty()) continue;
    const size_t eq = item.find('=');
    CEPE_CHECK(eq != std::string::npos,
               "embedder spec '" << spec << "': option '" << item << "' is not key=value");
    const std::string key = item.substr(0, eq), value = item.substr(eq + 1);
    if (key == "pooling") {
      CEPE_CHECK(value == "mean" || value == "cls",
                 "embedder spec: pooling=" << value << " (expected mean or cls)");
      s.pooling = value;
    } else if (key == "normalize") {
      s.normalize = parse_bool(key, value);
    } else if (key == "query_prefix") {
      s.query_prefix = value;
    } else if (key == "passage_prefix") {
      s.passage_prefix = value;
    } else if (key == "max_tokens") {
      char* endp = nullptr;
      const long v = std::strtol(value.c_str(), &endp, 10);
      CEPE_CHECK(!value.empty() && *endp == 0 && v >= 2 && v <= 1 << 20,
                 "embedder spec: max_tokens=" << value << " (expected an integer >= 2)");
      s.max_tokens = static_cast<int>(v);
    } else if (key == "device") {
      s.device = parse_device(value);
    } else {
      CEPE_THROW("embedder spec '" << spec << "': unknown option '" << key
                                   << "' (known: pooling, normalize, query_prefix, "
                                      "passage_prefix, max_tokens, device)");
    }
  }
  return s;
}

BertConfig read_bert_config(const fs::path& dir) {
  const fs::path path = dir / "config.json";
  CEPE_CHECK(fs::is_regular_file(path), "BERT config " << path.string() << " not found");
  const std::string json = slurp(path, "BERT config");
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

struct BertEmbedder::Layer {
  Tensor q_w, q_b, k_w, k_b, v_w, v_b, o_w, o_b, ln1_w, ln1_b, i_w, i_b, out_w, out_b, ln2_w, ln2_b;
};

BertEmbedder::BertEmbedder(const std::string& spec)
    : spec_(parse_bert_spec(spec)),
      config_(read_bert_config(spec_.dir)),
      tokenizer_(WordPiece::load(spec_.dir)) {
  spec_string_ = "bert:" + fs::absolute(spec_.dir).lexically_normal().string() + spec_.options;
  max_tokens_ = static_cast<size_t>(config_.max_position_embeddings);
  if (tokenizer_.options().model_max_length > 0)
    max_tokens_ = std::min(max_tokens_, static_cast<size_t>(tokenizer_.options().model_max_length));
  if (spec_.max_tokens > 0) {
    CEPE_CHECK(static_cast<size_t>(spec_.max_tokens) <= max_tokens_,
               "embedder spec: max_tokens=" << spec_.max_tokens << " exceeds the model's limit of "
                                            << max_tokens_ << " tokens");
    max_tokens_ = static_cast<size_t>(spec_.max_tokens);
  }
  BackendOptions bo;
  backend_ = make_backend(spec_.device, bo);
  load_weights();
}

BertEmbedder::~BertEmbedder() = default;

void BertEmbedder::load_weights() {
  const WeightStore store = WeightStore::open(spec_.dir);
  // Checkpoints saved from BertForXxx wrappers carry a "bert." prefix.
  const std::string prefix = !store.contains("embeddings.word_embeddings.weight") &&
                                     store.contains("bert.embeddings.word_embeddings.weight")
                                 ? "bert."
                                 : "";
  const int64_t H = config_.hidden_size, I = config_.intermediate_size;
  Hasher hash(0xBE27);
  hash.update_string("bert-embedder-v1");
  std::vector<std::string> dtypes;
  // Every tensor is fetched by name and shape (errors name the tensor and file) and hashed.
  auto get = [&](const std::string& name, std::vector<int64_t> shape) {
    const std::string full = prefix + name;
    Tensor t = shape.empty() ? store.get(full) : store.get(full, shape);
    hash.update_string(full);
    hash.update_string(dtype_name(t.dtype()));
    for (int64_t d : t.shape()) hash.update_u64(static_cast<uint64_t>(d));
    hash.update(t.raw(), t.nbytes());
    if (std::find(dtypes.begin(), dtypes.end(), dtype_name(t.dtype())) == dtypes.end())
      dtypes.push_back(dtype_name(t.dtype()));
    return t;
  };
  auto matrix = [&](const std::string& name, int64_t rows, int64_t cols) {
    return backend_->load_weight(get(name, {rows, cols}), false);
  };
  auto vec = [&](const std::string& name, int64_t n) {
    return backend_->load_weight(get(name, {n}), true);
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
  CEPE_CHECK(tokenizer_.size() <= word.dim(0), (spec_.dir / "vocab.txt").string()
                                                   << " has " << tokenizer_.size()
                                                   << " tokens but the word-embedding table only "
                                                   << word.dim(0) << " rows");
  word_embeddings_ = backend_->load_weight(word, false);

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
  position_type_ = backend_->to_device(pt);
  embed_ln_w_ = vec("embeddings.LayerNorm.weight", H);
  embed_ln_b_ = vec("embeddings.LayerNorm.bias", H);

  layers_.clear();
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
  backend_->synchronize();

  for (const auto& d : dtypes) weight_dtype_ += (weight_dtype_.empty() ? "" : "/") + d;
  // Everything else that decides text -> vector.
  hash.update_string(slurp(spec_.dir / "config.json", "BERT config"));
  hash.update_string(slurp(spec_.dir / "vocab.txt", "WordPiece vocabulary"));
  const WordPieceOptions& o = tokenizer_.options();
  hash.update_u64(o.lower_case);
  hash.update_u64(o.strip_accents.has_value() ? 2 + *o.strip_accents : 0);
  hash.update_u64(o.tokenize_chinese_chars);
  hash.update_u64(static_cast<uint64_t>(o.max_input_chars_per_word));
  hash.update_string(o.unk_token + "\n" + o.cls_token + "\n" + o.sep_token);
  hash.update_u64(max_tokens_);
  hash.update_string(spec_.pooling);
  hash.update_u64(spec_.normalize);
  hash.update_string(spec_.query_prefix);
  hash.update_string(spec_.passage_prefix);
  fingerprint_ = hex64(hash.digest());
}

std::map<std::string, std::string> BertEmbedder::describe() const {
  auto quoted = [](const std::string& s) { return "\"" + s + "\""; };
  const WordPieceOptions& o = tokenizer_.options();
  return {
      {"model", fs::absolute(spec_.dir).lexically_normal().string()},
      {"layers", std::to_string(config_.num_hidden_layers)},
      {"hidden", std::to_string(config_.hidden_size)},
      {"heads", std::to_string(config_.num_attention_heads)},
      {"vocab", std::to_string(tokenizer_.size())},
      {"weights", weight_dtype_},
      {"pooling", spec_.pooling},
      {"normalize", spec_.normalize ? "1" : "0"},
      {"query_prefix", quoted(spec_.query_prefix)},
      {"passage_prefix", quoted(spec_.passage_prefix)},
      {"max_tokens", std::to_string(max_tokens_)},
      {"lower_case", o.lower_case ? "1" : "0"},
      {"device", device_name(spec_.device)},
  };
}

std::vector<int32_t> BertEmbedder::encode(std::string_view text) const {
  return tokenizer_.encode(text, max_tokens_);
}

void BertEmbedder::embed_passages(const std::vector<PassageView>& passages, float* out) const {
  std::vector<std::string> texts;
  texts.reserve(passages.size());
  for (const auto& p : passages) {
    std::string t = spec_.passage_prefix;
    if (!p.title.empty()) {
      t.append(p.title);
      t.push_back(' ');
    }
    t.append(p.text);
    texts.push_back(std::move(t));
  }
  embed_texts(texts, out);
}

void BertEmbedder::embed_queries(const std::vector<std::string>& queries, float* out) const {
  std::vector<std::string> texts;
  texts.reserve(queries.size());
  for (const auto& q : queries) texts.push_back(spec_.query_prefix + q);
  embed_texts(texts, out);
}

void BertEmbedder::embed_texts(const std::vector<std::string>& texts, float* out) const {
  std::vector<std::vector<int32_t>> ids;
  ids.reserve(texts.size());
  for (const auto& t : texts) ids.push_back(encode(t));
  const size_t dim = static_cast<size_t>(config_.hidden_size);
  std::lock_guard<std::mutex> lock(mutex_);
  // Pack consecutive texts into forwards of at most kBatchTokens tokens (one text may exceed it).
  for (size_t begin = 0; begin < ids.size();) {
    size_t end = begin, tokens = 0;
    while (end < ids.size() && (end == begin || tokens + ids[end].size() <= kBatchTokens))
      tokens += ids[end++].size();
    const std::vector<std::vector<int32_t>> batch(ids.begin() + begin, ids.begin() + end);
    forward(batch, out + begin * dim);
    begin = end;
  }
}

void BertEmbedder::forward(const std::vector<std::vector<int32_t>>& ids, float* out) const {
  Backend& b = *backend_;
  const int64_t H = config_.hidden_size, I = config_.intermediate_size;
  const int heads = config_.num_attention_heads;
  const float eps = config_.layer_norm_eps;
  std::vector<int32_t> tokens, positions;
  std::vector<int64_t> offsets;
  for (const auto& t : ids) {
    offsets.push_back(static_cast<int64_t>(tokens.size()));
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
    segments[i].q_begin = offsets[i];
    segments[i].q_len = len;
    segments[i].k = k.rows(offsets[i], len);
    segments[i].v = v.rows(offsets[i], len);
    segments[i].causal = false;
  }
  AttentionShape shape;
  shape.heads = shape.kv_heads = heads;
  shape.head_dim = static_cast<int>(H / heads);
  shape.scale = 1.0f / std::sqrt(static_cast<float>(shape.head_dim));

  for (const Layer& l : layers_) {
    b.linear(x, l.q_w, q);
    b.add_bias(q, l.q_b);
    b.linear(x, l.k_w, k);
    b.add_bias(k, l.k_b);
    b.linear(x, l.v_w, v);
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

  const size_t dim = static_cast<size_t>(H);
  if (spec_.pooling == "cls") {
    Tensor cls = b.empty({static_cast<int64_t>(ids.size()), H}, DType::F32);
    for (size_t i = 0; i < ids.size(); ++i)
      b.copy_rows(x, offsets[i], cls, static_cast<int64_t>(i), 1);
    const Tensor host = b.to_host_f32(cls);
    std::memcpy(out, host.data<float>(), ids.size() * dim * sizeof(float));
  } else {
    const Tensor host = b.to_host_f32(x);
    for (size_t i = 0; i < ids.size(); ++i) {
      std::vector<double> acc(dim, 0.0);
      const int64_t len = static_cast<int64_t>(ids[i].size());
      for (int64_t r = 0; r < len; ++r) {
        const float* row = host.data<float>() + (offsets[i] + r) * H;
        for (size_t c = 0; c < dim; ++c) acc[c] += row[c];
      }
      for (size_t c = 0; c < dim; ++c) out[i * dim + c] = static_cast<float>(acc[c] / len);
    }
  }
  if (spec_.normalize) {
    for (size_t i = 0; i < ids.size(); ++i) {
      float* o = out + i * dim;
      double ss = 0.0;
      for (size_t c = 0; c < dim; ++c) ss += double(o[c]) * o[c];
      const double inv = 1.0 / std::max(std::sqrt(ss), 1e-12);
      for (size_t c = 0; c < dim; ++c) o[c] = static_cast<float>(o[c] * inv);
    }
  }
}

}  // namespace cepe::retriever
