#include "engine/config.h"

#include <rapidjson/document.h>

#include "common/error.h"
#include "common/fileio.h"
#include "common/json.h"

namespace cepe {
namespace {

using Json = rapidjson::Value;

// Reads typed fields of one JSON object; every error names the file and the key.
class FieldReader {
 public:
  FieldReader(const Json& obj, std::string origin, std::string prefix)
      : obj_(obj), origin_(std::move(origin)), prefix_(std::move(prefix)) {}

  const Json* find(const char* key) const {
    auto it = obj_.FindMember(key);
    if (it == obj_.MemberEnd() || it->value.IsNull()) return nullptr;
    return &it->value;
  }
  std::string where(const char* key) const { return origin_ + ": field '" + prefix_ + key + "'"; }

  int get_int(const char* key, std::optional<int> fallback, int min_value = 1) const {
    const Json* v = find(key);
    if (!v) {
      if (!fallback) CEPE_THROW(where(key) << " is required");
      return *fallback;
    }
    if (!v->IsInt()) CEPE_THROW(where(key) << " must be an integer");
    int x = v->GetInt();
    if (x < min_value) CEPE_THROW(where(key) << " must be >= " << min_value << ", got " << x);
    return x;
  }
  double get_double(const char* key, double fallback) const {
    const Json* v = find(key);
    if (!v) return fallback;
    if (!v->IsNumber()) CEPE_THROW(where(key) << " must be a number");
    return v->GetDouble();
  }
  bool get_bool(const char* key, bool fallback) const {
    const Json* v = find(key);
    if (!v) return fallback;
    if (!v->IsBool()) CEPE_THROW(where(key) << " must be true or false");
    return v->GetBool();
  }
  std::string get_string(const char* key, const std::string& fallback) const {
    const Json* v = find(key);
    if (!v) return fallback;
    if (!v->IsString()) CEPE_THROW(where(key) << " must be a string");
    return v->GetString();
  }

 private:
  const Json& obj_;
  std::string origin_;
  std::string prefix_;
};

LlamaConfig parse_llama(const Json& obj, const std::string& origin, const std::string& prefix) {
  FieldReader r(obj, origin, prefix);
  LlamaConfig c;
  c.hidden_size = r.get_int("hidden_size", std::nullopt);
  c.intermediate_size = r.get_int("intermediate_size", std::nullopt);
  c.num_attention_heads = r.get_int("num_attention_heads", std::nullopt);
  c.num_key_value_heads = r.get_int("num_key_value_heads", c.num_attention_heads);
  c.num_hidden_layers = r.get_int("num_hidden_layers", std::nullopt);
  c.vocab_size = r.get_int("vocab_size", std::nullopt);
  c.max_position_embeddings = r.get_int("max_position_embeddings", 2048);
  c.rms_norm_eps = static_cast<float>(r.get_double("rms_norm_eps", 1e-6));
  c.rope_theta = r.get_double("rope_theta", 10000.0);
  c.tie_word_embeddings = r.get_bool("tie_word_embeddings", false);
  c.bos_token_id = r.get_int("bos_token_id", 1, 0);
  c.pad_token_id = r.get_int("pad_token_id", -1, -1);

  if (c.hidden_size % c.num_attention_heads != 0)
    CEPE_THROW(r.where("hidden_size")
               << " (" << c.hidden_size << ") is not a multiple of num_attention_heads ("
               << c.num_attention_heads << ")");
  c.head_dim = r.get_int("head_dim", c.hidden_size / c.num_attention_heads);
  if (c.head_dim % 2 != 0) CEPE_THROW(r.where("head_dim") << " must be even for RoPE");
  if (c.num_attention_heads % c.num_key_value_heads != 0)
    CEPE_THROW(r.where("num_key_value_heads")
               << " (" << c.num_key_value_heads << ") must divide num_attention_heads ("
               << c.num_attention_heads << ")");
  if (!(c.rope_theta > 1.0)) CEPE_THROW(r.where("rope_theta") << " must be > 1");
  if (!(c.rms_norm_eps > 0.0f)) CEPE_THROW(r.where("rms_norm_eps") << " must be > 0");

  if (const Json* eos = r.find("eos_token_id")) {
    if (eos->IsInt()) {
      c.eos_token_ids.push_back(eos->GetInt());
    } else if (eos->IsArray()) {
      for (const auto& e : eos->GetArray()) {
        if (!e.IsInt()) CEPE_THROW(r.where("eos_token_id") << " must hold integers");
        c.eos_token_ids.push_back(e.GetInt());
      }
    } else {
      CEPE_THROW(r.where("eos_token_id") << " must be an integer or a list of integers");
    }
  } else {
    c.eos_token_ids.push_back(2);
  }

  if (const Json* rs = r.find("rope_scaling")) {
    if (!rs->IsObject()) CEPE_THROW(r.where("rope_scaling") << " must be null or an object");
    FieldReader sr(*rs, origin, prefix + "rope_scaling.");
    std::string type = sr.get_string("type", sr.get_string("rope_type", ""));
    if (type == "linear") {
      c.rope_scaling = RopeScalingType::Linear;
    } else if (type == "dynamic") {
      c.rope_scaling = RopeScalingType::Dynamic;
    } else if (type == "default" || type.empty()) {
      c.rope_scaling = RopeScalingType::None;
    } else {
      CEPE_THROW(r.where("rope_scaling")
                 << ".type '" << type << "' is not supported (supported: linear, dynamic)");
    }
    if (c.rope_scaling != RopeScalingType::None) {
      c.rope_scaling_factor = sr.get_double("factor", 0.0);
      if (!(c.rope_scaling_factor >= 1.0))
        CEPE_THROW(sr.where("factor") << " must be a number >= 1, got " << c.rope_scaling_factor);
    }
  }
  return c;
}

}  // namespace

ModelConfig parse_model_config(const std::string& json, const std::string& origin) {
  rapidjson::Document doc;
  parse_json_or_throw(json, &doc, origin);
  if (!doc.IsObject()) CEPE_THROW(origin << ": expected a JSON object");

  ModelConfig mc;
  mc.decoder = parse_llama(doc, origin, "");
  FieldReader r(doc, origin, "");
  mc.torch_dtype = r.get_string("torch_dtype", "");

  const Json* enc = r.find("encoder_config");
  bool cross = r.get_bool("do_cross_attention", enc != nullptr);
  if (!cross) return mc;  // a plain LLaMA decoder (any encoder_config is unused)

  if (!enc) CEPE_THROW(r.where("do_cross_attention") << " is true but encoder_config is missing");
  if (!enc->IsObject()) CEPE_THROW(r.where("encoder_config") << " must be an object");
  mc.encoder = parse_llama(*enc, origin, "encoder_config.");

  mc.num_cross_attn_layers = r.get_int("num_cross_attn_layers", mc.decoder.num_hidden_layers, 0);
  if (mc.num_cross_attn_layers > mc.decoder.num_hidden_layers)
    CEPE_THROW(r.where("num_cross_attn_layers")
               << " (" << mc.num_cross_attn_layers << ") exceeds num_hidden_layers ("
               << mc.decoder.num_hidden_layers << ")");
  int hidden_states = r.get_int("num_cross_attn_hidden_states", 1);
  if (hidden_states != 1)
    CEPE_THROW(r.where("num_cross_attn_hidden_states")
               << " = " << hidden_states
               << " is not supported: only 1 (cross-attention to the encoder's final states, as in "
                  "the released CEPE models)");
  if (r.get_bool("encoder_is_model", false))
    CEPE_THROW(r.where("encoder_is_model")
               << " = true is not supported (released models use false)");
  std::string mode = r.get_string("encode_mode", "context_only");
  if (mode != "context_only")
    CEPE_THROW(r.where("encode_mode")
               << " '" << mode << "' is not supported (only \"context_only\")");
  mc.encoder_hidden_size = r.get_int("encoder_hidden_size", mc.encoder->hidden_size);
  if (mc.encoder_hidden_size != mc.encoder->hidden_size)
    CEPE_THROW(r.where("encoder_hidden_size")
               << " (" << mc.encoder_hidden_size << ") differs from encoder_config.hidden_size ("
               << mc.encoder->hidden_size << ")");
  return mc;
}

ModelConfig load_model_config(const std::filesystem::path& model_dir) {
  const std::filesystem::path path = model_dir / "config.json";
  std::error_code ec;
  CEPE_CHECK(std::filesystem::exists(path, ec), path.string()
                                                    << ": cannot open (is " << model_dir.string()
                                                    << " a HuggingFace model directory?)");
  return parse_model_config(read_whole_file(path, "model config"), path.string());
}

}  // namespace cepe
