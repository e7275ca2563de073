#include "engine/random_model.h"

#include <fstream>
#include <random>
#include <sstream>

#include "common/error.h"
#include "engine/safetensors.h"

namespace cepe {
namespace {

std::string llama_config_json(int hidden, int inter, int heads, int kv, int layers, int vocab,
                              int max_pos, double theta, bool tie) {
  std::ostringstream o;
  o.precision(17);
  o << "{\"architectures\": [\"LlamaForCausalLM\"], \"model_type\": \"llama\", "
    << "\"hidden_size\": " << hidden << ", \"intermediate_size\": " << inter
    << ", \"num_attention_heads\": " << heads << ", \"num_key_value_heads\": " << kv
    << ", \"num_hidden_layers\": " << layers << ", \"vocab_size\": " << vocab
    << ", \"max_position_embeddings\": " << max_pos << ", \"rms_norm_eps\": 1e-05"
    << ", \"rope_theta\": " << theta << ", \"rope_scaling\": null"
    << ", \"tie_word_embeddings\": " << (tie ? "true" : "false")
    << ", \"bos_token_id\": 1, \"eos_token_id\": 2, \"hidden_act\": \"silu\"";
  return o.str();
}

}  // namespace

RandomModelSpec random_model_preset(const std::string& name) {
  RandomModelSpec s;
  if (name == "tiny") return s;
  if (name == "small") {  // ~20M parameters with a small vocabulary: QA batching benchmarks
    s.hidden_size = 512, s.intermediate_size = 1376, s.heads = 8, s.kv_heads = 8, s.layers = 6;
    s.cross_layers = 6;
    s.enc_hidden_size = 256, s.enc_intermediate_size = 688, s.enc_heads = 4, s.enc_layers = 2;
    return s;
  }
  if (name == "bench100m") {
    s.vocab_size = 32000;
    s.hidden_size = 768, s.intermediate_size = 2048, s.heads = 12, s.kv_heads = 12, s.layers = 8;
    s.cross_layers = 8;
    s.enc_hidden_size = 512, s.enc_intermediate_size = 1376, s.enc_heads = 8, s.enc_layers = 4;
    s.max_position_embeddings = 4096;
    return s;
  }
  if (name == "cepe-llama2-7b") {
    s.vocab_size = 32000;
    s.hidden_size = 4096, s.intermediate_size = 11008, s.heads = 32, s.kv_heads = 32;
    s.layers = 32, s.cross_layers = 32;
    s.enc_hidden_size = 1024, s.enc_intermediate_size = 4096, s.enc_heads = 16, s.enc_layers = 24;
    s.max_position_embeddings = 4096;
    s.dtype = DType::BF16;
    return s;
  }
  CEPE_THROW("unknown preset '" << name << "' (expected tiny, small, bench100m, cepe-llama2-7b)");
}

int64_t write_random_model(const RandomModelSpec& s, const std::filesystem::path& out_dir) {
  CEPE_CHECK(s.hidden_size % s.heads == 0 && s.heads % s.kv_heads == 0 &&
                 s.enc_hidden_size % s.enc_heads == 0 && s.cross_layers <= s.layers,
             "inconsistent random model shape");
  std::filesystem::create_directories(out_dir);
  std::mt19937_64 rng(s.seed);
  std::normal_distribution<float> normal(0.0f, s.init_std);
  std::vector<std::pair<std::string, Tensor>> tensors;
  int64_t params = 0;
  auto add = [&](const std::string& name, std::vector<int64_t> shape, bool ones) {
    Tensor f = Tensor::empty(shape, DType::F32);
    for (int64_t i = 0; i < f.numel(); ++i) f.data<float>()[i] = ones ? 1.0f : normal(rng);
    params += f.numel();
    if (s.dtype == DType::F32) {
      tensors.emplace_back(name, f);
    } else {
      Tensor t = Tensor::empty(shape, s.dtype);
      convert_from_f32(f.data<float>(), t.raw(), s.dtype, f.numel());
      tensors.emplace_back(name, t);
    }
  };
  auto stack = [&](const std::string& prefix, int hidden, int inter, int heads, int kv, int layers,
                   int cross_from, int enc_hidden) {
    const int64_t hd = hidden / heads, q = heads * hd, kvd = kv * hd;
    add(prefix + "embed_tokens.weight", {s.vocab_size, hidden}, false);
    for (int i = 0; i < layers; ++i) {
      const std::string p = prefix + "layers." + std::to_string(i) + ".";
      add(p + "input_layernorm.weight", {hidden}, true);
      add(p + "self_attn.q_proj.weight", {q, hidden}, false);
      add(p + "self_attn.k_proj.weight", {kvd, hidden}, false);
      add(p + "self_attn.v_proj.weight", {kvd, hidden}, false);
      add(p + "self_attn.o_proj.weight", {hidden, q}, false);
      add(p + "post_attention_layernorm.weight", {hidden}, true);
      add(p + "mlp.gate_proj.weight", {inter, hidden}, false);
      add(p + "mlp.up_proj.weight", {inter, hidden}, false);
      add(p + "mlp.down_proj.weight", {hidden, inter}, false);
      if (i >= cross_from) {
        add(p + "cross_attn.layernorm.weight", {hidden}, true);
        add(p + "cross_attn.q_proj.weight", {q, hidden}, false);
        add(p + "cross_attn.k_proj.weight", {kvd, enc_hidden}, false);
        add(p + "cross_attn.v_proj.weight", {kvd, enc_hidden}, false);
        add(p + "cross_attn.o_proj.weight", {hidden, q}, false);
      }
    }
    add(prefix + "norm.weight", {hidden}, true);
  };
  stack("model.", s.hidden_size, s.intermediate_size, s.heads, s.kv_heads, s.layers,
        s.layers - s.cross_layers, s.enc_hidden_size);
  stack("encoder.", s.enc_hidden_size, s.enc_intermediate_size, s.enc_heads, s.enc_heads,
        s.enc_layers, s.enc_layers, 0);
  if (!s.tie_word_embeddings) add("lm_head.weight", {s.vocab_size, s.hidden_size}, false);
  write_safetensors(out_dir / "model.safetensors", tensors, {{"format", "pt"}});

  std::ostringstream cfg;
  cfg << llama_config_json(s.hidden_size, s.intermediate_size, s.heads, s.kv_heads, s.layers,
                           s.vocab_size, s.max_position_embeddings, s.rope_theta,
                           s.tie_word_embeddings)
      << ", \"torch_dtype\": \""
      << (s.dtype == DType::BF16  ? "bfloat16"
          : s.dtype == DType::F16 ? "float16"
                                  : "float32")
      << "\", \"do_cross_attention\": true, \"num_cross_attn_layers\": " << s.cross_layers
      << ", \"num_cross_attn_hidden_states\": 1, \"encoder_hidden_size\": " << s.enc_hidden_size
      << ", \"encoder_is_model\": false, \"encode_mode\": \"context_only\", \"encoder_config\": "
      << llama_config_json(s.enc_hidden_size, s.enc_intermediate_size, s.enc_heads, s.enc_heads,
                           s.enc_layers, s.vocab_size, s.max_position_embeddings, s.rope_theta,
                           true)
      << "}}\n";
  const auto path = out_dir / "config.json";
  const auto tmp = out_dir / "config.json.tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    CEPE_CHECK(out, tmp.string() << ": cannot write");
    out << cfg.str();
    CEPE_CHECK(out.good(), tmp.string() << ": write failed");
  }
  std::filesystem::rename(tmp, path);
  return params;
}

}  // namespace cepe
