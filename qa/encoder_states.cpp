#include "qa/encoder_states.h"

#include <cstring>
#include <optional>

#include "common/error.h"
#include "qa/prompt.h"

namespace cepe::qa {

std::vector<int32_t> encoder_chunk_ids(const Tokenizer& tokenizer, const Passage& passage,
                                       int chunk_tokens) {
  std::vector<int32_t> ids = tokenizer.encode(encoder_chunk_text(passage), false);
  if (static_cast<int>(ids.size()) > chunk_tokens) ids.resize(chunk_tokens);
  return ids;
}

// ---------------------------------------------------------------------------------------------

EncodedPassageCache::EncodedPassageCache(size_t capacity_bytes) : capacity_(capacity_bytes) {}

std::string EncodedPassageCache::key(uint64_t fingerprint, std::string_view passage_id,
                                     uint64_t token_hash) {
  std::string k(17, 'i');  // 'i': keyed by passage id; 'c': by content
  std::memcpy(k.data() + 1, &fingerprint, 8);
  std::memcpy(k.data() + 9, &token_hash, 8);
  k.append(passage_id);
  return k;
}

std::string EncodedPassageCache::content_key(uint64_t fingerprint,
                                             const std::vector<int32_t>& chunk) {
  std::string k(9 + chunk.size() * sizeof(int32_t), 'c');
  std::memcpy(k.data() + 1, &fingerprint, 8);
  if (!chunk.empty()) std::memcpy(k.data() + 9, chunk.data(), chunk.size() * sizeof(int32_t));
  return k;
}

Tensor EncodedPassageCache::get(const std::string& key) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = map_.find(key);
  if (it == map_.end()) {
    misses_.fetch_add(1);
    return Tensor();
  }
  hits_.fetch_add(1);
  lru_.splice(lru_.begin(), lru_, it->second);
  return it->second->second;
}

void EncodedPassageCache::put(const std::string& key, Tensor states) {
  const size_t n = states.nbytes() + key.size();
  if (n > capacity_) return;
  std::lock_guard<std::mutex> lock(mu_);
  if (map_.count(key)) return;
  while (!lru_.empty() && bytes_.load() + n > capacity_) {
    const Entry& last = lru_.back();
    bytes_.fetch_sub(last.second.nbytes() + last.first.size());
    map_.erase(last.first);
    lru_.pop_back();
    evictions_.fetch_add(1);
  }
  lru_.emplace_front(key, std::move(states));
  map_[key] = lru_.begin();
  bytes_.fetch_add(n);
}

size_t EncodedPassageCache::entries() const {
  std::lock_guard<std::mutex> lock(mu_);
  return map_.size();
}

std::vector<float> stored_kv_values(Backend& backend, const ProjectedKV& kv) {
  std::vector<float> out;
  for (size_t l = 0; l < kv.k.size(); ++l) {
    if (!kv.k[l].defined()) continue;
    for (const Tensor* t : {&kv.k[l], &kv.v[l]}) {
      const Tensor host = backend.to_host_f32(*t);
      out.insert(out.end(), host.data<float>(), host.data<float>() + host.numel());
    }
  }
  return out;
}

// ---------------------------------------------------------------------------------------------

std::shared_ptr<const index::EncoderStore> open_encoder_store(
    const std::string& mode, const std::filesystem::path& index_dir,
    const std::filesystem::path& model_dir, const ModelConfig& config, int chunk_tokens,
    Device device, const std::function<void(const std::string&)>& report) {
  if (mode == "off" || !config.is_cepe()) return nullptr;
  const index::EncoderFingerprint want =
      index::encoder_fingerprint(model_dir, config, chunk_tokens, index::StateDType::F32);
  // Projected keys and values are read in place as row blocks, a CPU form.
  std::optional<index::EncoderFingerprint> want_kv;
  if (device == Device::CPU && config.num_cross_attn_layers > 0)
    want_kv = index::cross_kv_fingerprint(model_dir, config, chunk_tokens, index::StateDType::F32);
  if (mode == "auto") {
    if (index_dir.empty()) return nullptr;
    index::StoreLookup found =
        index::find_encoder_store(index_dir, want, want_kv ? &*want_kv : nullptr);
    for (const std::string& why : found.rejected)
      if (report) report("encoder store ignored: " + why);
    return found.store;
  }
  auto store = std::make_shared<const index::EncoderStore>(mode);
  const bool kv = store->fingerprint().layout == index::StoreLayout::CrossKV;
  CEPE_CHECK(!kv || want_kv, "encoder store " << mode
                                              << " holds projected keys and values, which are "
                                                 "read on the CPU only");
  const std::string why = store->fingerprint().model_mismatch(kv ? *want_kv : want);
  CEPE_CHECK(why.empty(),
             "encoder store " << mode << " does not fit this model: it was made with " << why);
  return store;
}

std::string EncoderStates::cache_key(const std::string& id, const std::vector<int32_t>& chunk,
                                     uint64_t token_hash) const {
  return id.empty() ? EncodedPassageCache::content_key(fingerprint_, chunk)
                    : EncodedPassageCache::key(fingerprint_, id, token_hash);
}

FoundStates EncoderStates::lookup(const std::string& id, const std::vector<int32_t>& chunk) {
  FoundStates out;
  if (chunk.empty() || (!store_ && !cache_)) return out;
  const uint64_t token_hash = index::chunk_token_hash(chunk);
  const auto tokens = static_cast<int64_t>(chunk.size());
  if (store_ && !id.empty()) {
    if (auto row = store_->find(id, static_cast<uint32_t>(tokens), token_hash)) {
      const index::EncoderFingerprint& fp = store_->fingerprint();
      counters_.store_hits.fetch_add(1);
      // An f32 store's rows are the values themselves: read-only views of the mapping, which
      // the store (held by the views) keeps alive. So are an f16 K/V store's: the CPU attention
      // widens F16 key and value rows as it reads them. Other dtypes are decoded to F32.
      Tensor all;
      const int64_t rows = tokens * fp.rows_per_token();
      const bool kv = fp.layout == index::StoreLayout::CrossKV;
      const void* mapped = store_->f32_data(*row);
      if (!mapped && kv) mapped = store_->f16_data(*row);
      if (mapped) {
        all = Tensor::wrap(const_cast<void*>(mapped), {rows, fp.row_width()},
                           fp.dtype == index::StateDType::F16 ? DType::F16 : DType::F32,
                           Device::CPU, std::const_pointer_cast<void>(store_->owner()));
        all.set_file_backed(true);
      } else {
        all = Tensor::empty({rows, fp.row_width()}, DType::F32);
        store_->read(*row, all.data<float>());
      }
      if (fp.layout == index::StoreLayout::States) {
        out.states = all;
        return out;
      }
      // [cross layer][k, v][tokens][kv width]; cross layers are the decoder's last ones.
      const int layers = model_.config().decoder.num_hidden_layers;
      const int first = layers - static_cast<int>(fp.cross_layers);
      out.kv.k.resize(layers);
      out.kv.v.resize(layers);
      for (int c = 0; c < fp.cross_layers; ++c) {
        out.kv.k[first + c] = all.rows((2 * c) * tokens, tokens);
        out.kv.v[first + c] = all.rows((2 * c + 1) * tokens, tokens);
      }
      return out;
    }
  }
  if (cache_) {
    // Cached entries are never written after put(), so the entry itself can be shared.
    Tensor cached = cache_->get(cache_key(id, chunk, token_hash));
    if (cached.defined() && cached.numel() > 0) {
      counters_.cache_hits.fetch_add(1);
      out.states = cached;
    }
  }
  return out;
}

void EncoderStates::remember(const std::string& id, const std::vector<int32_t>& chunk,
                             const float* rows) {
  if (!cache_ || chunk.empty()) return;
  const int64_t width = model_.config().encoder_hidden_size;
  // A copy of its own: a view would keep the whole pass's states alive.
  Tensor copy = Tensor::empty({static_cast<int64_t>(chunk.size()), width}, DType::F32);
  std::memcpy(copy.raw(), rows, copy.nbytes());
  cache_->put(cache_key(id, chunk, index::chunk_token_hash(chunk)), std::move(copy));
}

void EncoderStates::count_live(size_t passages, int64_t tokens) {
  counters_.live_passages.fetch_add(passages);
  counters_.live_tokens.fetch_add(static_cast<uint64_t>(tokens));
}

EncodedContext EncoderStates::encode(const std::vector<std::string>& ids,
                                     const std::vector<std::vector<int32_t>>& chunks) {
  CEPE_CHECK(ids.size() == chunks.size(),
             "encoder states: " << ids.size() << " passage ids for " << chunks.size() << " chunks");
  if (chunks.empty()) return EncodedContext();
  for (size_t i = 0; i < chunks.size(); ++i)
    CEPE_CHECK(!chunks[i].empty(), "context chunk " << i << " is empty");
  std::vector<FoundStates> found(chunks.size());
  std::vector<std::vector<int32_t>> live_chunks;
  std::vector<size_t> live_of;
  for (size_t i = 0; i < chunks.size(); ++i) {
    found[i] = lookup(ids[i], chunks[i]);
    if (found[i].found()) continue;
    live_of.push_back(i);
    live_chunks.push_back(chunks[i]);
  }
  EncodedContext live;
  if (!live_chunks.empty()) {
    live = model_.encode(live_chunks);
    count_live(live_chunks.size(), live.tokens());
  }
  const int64_t width = model_.config().encoder_hidden_size;
  Tensor live_host;
  if (live.tokens() > 0 && (caching() || live_chunks.size() < chunks.size()))
    live_host = model_.backend().to_host_f32(live.states);
  std::vector<int64_t> live_begin(chunks.size(), 0);
  int64_t at = 0;
  for (size_t i : live_of) {
    live_begin[i] = at;
    remember(ids[i], chunks[i], live_host.raw() ? live_host.data<float>() + at * width : nullptr);
    at += static_cast<int64_t>(chunks[i].size());
  }
  // Nothing found: the live context is the answer as it stands (no copy).
  if (live_chunks.size() == chunks.size()) return live;
  if (model_.backend().device() == Device::CPU) {
    // Each passage's rows where they lie: the store's mapping, a cache entry, the live pass.
    EncodedContext ctx;
    bool projected = false;
    for (size_t i = 0; i < chunks.size(); ++i) {
      const int64_t n = static_cast<int64_t>(chunks[i].size());
      ctx.parts.push_back(found[i].found() ? found[i].states : live.states.rows(live_begin[i], n));
      ctx.projected.push_back(found[i].kv);
      projected = projected || found[i].kv.defined();
      ctx.chunk_lengths.push_back(n);
    }
    if (!projected) ctx.projected.clear();
    return ctx;
  }
  // One host tensor in passage order, uploaded once.
  int64_t total = 0;
  for (const auto& c : chunks) total += static_cast<int64_t>(c.size());
  Tensor host = Tensor::empty({total, width}, DType::F32);
  EncodedContext ctx;
  int64_t row = 0;
  for (size_t i = 0; i < chunks.size(); ++i) {
    const int64_t n = static_cast<int64_t>(chunks[i].size());
    CEPE_CHECK(!found[i].kv.defined(), "projected keys and values are read on the CPU only");
    const float* src = found[i].found() ? found[i].states.data<float>()
                                        : live_host.data<float>() + live_begin[i] * width;
    std::memcpy(host.data<float>() + row * width, src,
                static_cast<size_t>(n * width) * sizeof(float));
    ctx.chunk_lengths.push_back(n);
    row += n;
  }
  ctx.states = model_.backend().to_device(host);
  return ctx;
}

}  // namespace cepe::qa
