#include "server/info.h"

#include <rapidjson/stringbuffer.h>
#include <rapidjson/writer.h>

#include "common/json.h"
#include "index/manifest.h"

namespace cepe::server {
namespace {

using Writer = rapidjson::Writer<rapidjson::StringBuffer>;

}  // namespace

std::string server_info_json(const Resources& res, const config::ServerConfig& cfg,
                             const char* server_name) {
  rapidjson::StringBuffer sb;
  Writer w(sb);
  w.StartObject();
  w.Key("server");
  w.String(server_name);
  w.Key("model");
  w.StartObject();
  w.Key("name");
  write_json_text(w, res.model_name);
  w.Key("dir");
  write_json_text(w, cfg.model);
  w.Key("device");
  write_json_text(w, cfg.device);
  if (res.model) {
    const ModelConfig& mc = res.model->config();
    w.Key("cepe");
    w.Bool(mc.is_cepe());
    w.Key("vocab_size");
    w.Int(mc.decoder.vocab_size);
    w.Key("layers");
    w.Int(mc.decoder.num_hidden_layers);
    w.Key("hidden_size");
    w.Int(mc.decoder.hidden_size);
    w.Key("cross_attention_layers");
    w.Int(mc.num_cross_attn_layers);
    w.Key("cross_attention");
    w.String(cross_attention_mode_name(res.model->cross_attention_mode()));
    w.Key("kv_cache");
    w.String(dtype_name(res.model->kv_cache_dtype()));
    // What the weights became at load and where they live (threads, kernels, and how many MB of
    // stored matrices are read in place from the file mapping).
    w.Key("weights");
    write_json_text(w, cfg.weights);
    w.Key("weight_bytes");
    w.Uint64(res.model->weight_bytes());
    w.Key("backend");
    write_json_text(w, res.model->backend().describe());
    w.Key("max_position_embeddings");
    w.Int(mc.decoder.max_position_embeddings);
    // Where passage states come from, and what one request holds with them.
    w.Key("encoder_store");
    if (res.encoder_store) {
      w.StartObject();
      w.Key("path");
      write_json_text(w, res.encoder_store->path().string());
      w.Key("dtype");
      w.String(index::state_dtype_name(res.encoder_store->fingerprint().dtype));
      w.Key("layout");
      w.String(index::store_layout_name(res.encoder_store->fingerprint().layout));
      w.Key("passages");
      w.Uint64(res.encoder_store->size());
      w.Key("bytes");
      w.Uint64(res.encoder_store->file_bytes());
      w.EndObject();
    } else {
      w.Null();
    }
    w.Key("encoder_cache_bytes");
    w.Uint64(res.encoder_cache ? res.encoder_cache->capacity() : 0);
    if (mc.is_cepe()) {
      const LlamaConfig& d = mc.decoder;
      w.Key("request_memory");
      w.StartObject();
      w.Key("self_attention_bytes_per_token");
      w.Uint64(uint64_t(2) * d.num_hidden_layers * d.num_key_value_heads * d.head_dim *
               dtype_size(res.model->kv_cache_dtype()));
      w.Key("encoder_state_bytes_per_passage_token");
      const bool absorbed = res.model->cross_attention_mode() == CrossAttentionMode::Absorbed;
      // Keys and values projected for a request take the KV cache's type (CepeModel).
      const uint64_t projected_kv_bytes = uint64_t(2) * mc.num_cross_attn_layers *
                                          d.num_key_value_heads * d.head_dim *
                                          dtype_size(res.model->kv_cache_dtype());
      const uint64_t per_passage_token =
          absorbed ? uint64_t(mc.encoder_hidden_size) * 4 : projected_kv_bytes;
      w.Uint64(per_passage_token);
      // Passages of an f32 store are read in place from its mapping on the CPU (states by the
      // absorbed cross-attention; a K/V store's keys and values, f32 or f16, by any mode): they
      // cost a request nothing. Other K/V dtypes are decoded per request, into the KV cache's
      // type.
      w.Key("encoder_state_bytes_per_stored_passage_token");
      const index::EncoderStore* store = res.encoder_store.get();
      const bool cpu = res.model->backend().device() == Device::CPU;
      const bool kv_store = store && store->fingerprint().layout == index::StoreLayout::CrossKV;
      const index::StateDType dtype = store ? store->fingerprint().dtype : index::StateDType::F32;
      const bool in_place =
          cpu && store &&
          (kv_store ? dtype == index::StateDType::F32 || dtype == index::StateDType::F16
                    : absorbed && dtype == index::StateDType::F32);
      w.Uint64(in_place ? 0 : kv_store ? projected_kv_bytes : per_passage_token);
      w.EndObject();
    }
  }
  w.EndObject();
  w.Key("index");
  if (res.retriever) {
    const auto& m = res.retriever->manifest();
    w.StartObject();
    w.Key("dir");
    write_json_text(w, cfg.index);
    w.Key("passages");
    w.Uint64(m.passages);
    w.Key("retriever");
    write_json_text(w, m.retriever);
    // The side an index lacks is null, not an empty setting.
    if (index::has_dense(m)) {
      w.Key("embedder");
      write_json_text(w, m.embedder_spec);
      w.Key("dim");
      w.Int(m.dim);
      w.Key("faiss");
      write_json_text(w, m.faiss_factory);
    } else {
      for (const char* key : {"embedder", "dim", "faiss"}) {
        w.Key(key);
        w.Null();
      }
    }
    w.Key("bm25");
    if (index::has_bm25(m)) {
      w.StartObject();
      w.Key("k1");
      w.Double(m.bm25.k1);
      w.Key("b");
      w.Double(m.bm25.b);
      w.Key("stemmer");
      write_json_text(w, m.bm25.stemmer);
      w.Key("stopwords");
      write_json_text(w, m.bm25.stopwords);
      w.EndObject();
    } else {
      w.Null();
    }
    w.EndObject();
  } else {
    w.Null();
  }
  w.Key("limits");
  w.StartObject();
  w.Key("max_k");
  w.Int(cfg.max_k);
  w.Key("default_k");
  w.Int(cfg.default_k);
  w.Key("max_new_tokens");
  w.Int(cfg.max_new_tokens);
  w.Key("default_max_new_tokens");
  w.Int(cfg.default_max_new_tokens);
  w.Key("max_question_chars");
  w.Int(cfg.max_question_chars);
  w.Key("max_body_bytes");
  w.Int64(cfg.max_body_bytes);
  w.Key("max_stop");
  w.Int(cfg.max_stop);
  w.Key("max_logprobs");
  w.Int(cfg.max_logprobs);
  w.Key("request_timeout_ms");
  w.Int(cfg.request_timeout_ms);
  w.EndObject();
  w.Key("engine");
  w.StartObject();
  w.Key("batching");
  w.Bool(cfg.batching);
  w.Key("max_batch");
  w.Int(cfg.batching ? cfg.max_batch : 1);
  w.Key("max_queue");
  w.Int(cfg.max_queue);
  w.EndObject();
  w.Key("auth");
  w.Bool(!cfg.api_keys.empty());
  w.EndObject();
  return std::string(sb.GetString(), sb.GetSize());
}

}  // namespace cepe::server
