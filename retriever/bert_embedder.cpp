#include "retriever/bert_embedder.h"

#include <rapidjson/document.h>

#include <algorithm>
#include <cmath>
#include <cstring>

#include "common/error.h"
#include "common/fileio.h"
#include "common/hash.h"
#include "common/json.h"
#include "engine/safetensors.h"

namespace cepe::retriever {

namespace fs = std::filesystem;

namespace {

bool parse_bool(const std::string& key, const std::string& v) {
  if (v == "1" || v == "true") return true;
  if (v == "0" || v == "false") return false;
  CEPE_THROW("embedder spec: " << key << "=" << v << " must be 0, 1, true or false");
}

// The vocabulary, once config.json has been read and checked: a directory that is not a BERT
// checkpoint at all is reported by its config, the first file a user would look at.
WordPiece load_tokenizer(const fs::path& dir) {
  read_bert_config(dir);
  return WordPiece::load(dir);
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

BertEmbedder::BertEmbedder(const std::string& spec)
    : spec_(parse_bert_spec(spec)), tokenizer_(load_tokenizer(spec_.dir)) {
  const BertConfig config = read_bert_config(spec_.dir);
  spec_string_ = "bert:" + fs::absolute(spec_.dir).lexically_normal().string() + spec_.options;
  max_tokens_ = static_cast<size_t>(config.max_position_embeddings);
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
  Hasher hash(0xBE27);
  hash.update_string("bert-embedder-v1");
  model_ = std::make_unique<BertModel>(spec_.dir, *backend_, &hash);
  CEPE_CHECK(tokenizer_.size() <= model_->vocab_rows(),
             (spec_.dir / "vocab.txt").string()
                 << " has " << tokenizer_.size() << " tokens but the word-embedding table only "
                 << model_->vocab_rows() << " rows");
  // Everything else that decides text -> vector.
  hash.update_string(read_whole_file(spec_.dir / "config.json", "BERT config"));
  hash.update_string(read_whole_file(spec_.dir / "vocab.txt", "WordPiece vocabulary"));
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

BertEmbedder::~BertEmbedder() = default;

std::map<std::string, std::string> BertEmbedder::describe() const {
  auto quoted = [](const std::string& s) { return "\"" + s + "\""; };
  const WordPieceOptions& o = tokenizer_.options();
  return {
      {"model", fs::absolute(spec_.dir).lexically_normal().string()},
      {"layers", std::to_string(model_->config().num_hidden_layers)},
      {"hidden", std::to_string(model_->config().hidden_size)},
      {"heads", std::to_string(model_->config().num_attention_heads)},
      {"vocab", std::to_string(tokenizer_.size())},
      {"weights", model_->weight_dtypes()},
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
  const size_t dim = static_cast<size_t>(model_->config().hidden_size);
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
  const int64_t H = model_->config().hidden_size;
  std::vector<int64_t> offsets;
  const Tensor x = model_->forward(ids, &offsets);
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
