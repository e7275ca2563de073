#include "qa/encoder_states.h"

#include <cstring>

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
  std::string k(16, '\0');
  std::memcpy(k.data(), &fingerprint, 8);
  std::memcpy(k.data() + 8, &token_hash, 8);
  k.append(passage_id);
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

// ---------------------------------------------------------------------------------------------

std::shared_ptr<const index::EncoderStore> open_encoder_store(
    const std::string& mode, const std::filesystem::path& index_dir,
    const std::filesystem::path& model_dir, const ModelConfig& config, int chunk_tokens,
    const std::function<void(const std::string&)>& report) {
  if (mode == "off" || !config.is_cepe()) return nullptr;
  const index::EncoderFingerprint want =
      index::encoder_fingerprint(model_dir, config, chunk_tokens, index::StateDType::F32);
  if (mode == "auto") {
    if (index_dir.empty()) return nullptr;
    index::StoreLookup found = index::find_encoder_store(index_dir, want);
    for (const std::string& why : found.rejected)
      if (report) report("encoder store ignored: " + why);
    return found.store;
  }
  auto store = std::make_shared<const index::EncoderStore>(mode);
  const std::string why = store->fingerprint().model_mismatch(want);
  CEPE_CHECK(why.empty(),
             "encoder store " << mode << " does not fit this model: it was made with " << why);
  return store;
}

EncodedContext EncoderStates::encode(const std::vector<std::string>& ids,
                                     const std::vector<std::vector<int32_t>>& chunks) {
  CEPE_CHECK(ids.size() == chunks.size(),
             "encoder states: " << ids.size() << " passage ids for " << chunks.size() << " chunks");
  if (chunks.empty()) return EncodedContext();
  if (!store_ && !cache_) {
    EncodedContext ctx = model_.encode(chunks);
    counters_.live_passages.fetch_add(chunks.size());
    counters_.live_tokens.fetch_add(static_cast<uint64_t>(ctx.tokens()));
    return ctx;
  }
  const int64_t width = model_.config().encoder_hidden_size;
  enum class From { Store, Cache, Live };
  struct Piece {
    From from = From::Live;
    uint64_t row = 0;         // store row
    Tensor cached;            // cache entry
    int64_t live_begin = 0;   // first row in the live context
    uint64_t token_hash = 0;  // for the cache key
  };
  std::vector<Piece> pieces(chunks.size());
  std::vector<std::vector<int32_t>> live_chunks;
  std::vector<size_t> live_of;
  for (size_t i = 0; i < chunks.size(); ++i) {
    CEPE_CHECK(!chunks[i].empty(), "context chunk " << i << " is empty");
    Piece& p = pieces[i];
    p.token_hash = index::chunk_token_hash(chunks[i]);
    const auto tokens = static_cast<uint32_t>(chunks[i].size());
    if (!ids[i].empty() && store_) {
      if (auto row = store_->find(ids[i], tokens, p.token_hash)) {
        p.from = From::Store;
        p.row = *row;
        continue;
      }
    }
    if (!ids[i].empty() && cache_) {
      p.cached = cache_->get(EncodedPassageCache::key(fingerprint_, ids[i], p.token_hash));
      if (p.cached.defined() && p.cached.numel() > 0) {
        p.from = From::Cache;
        continue;
      }
    }
    live_of.push_back(i);
    live_chunks.push_back(chunks[i]);
  }
  EncodedContext live;
  if (!live_chunks.empty()) {
    live = model_.encode(live_chunks);
    counters_.live_passages.fetch_add(live_chunks.size());
    counters_.live_tokens.fetch_add(static_cast<uint64_t>(live.tokens()));
  }
  // Nothing found: the live context is the answer as it stands (no copy).
  if (live_chunks.size() == chunks.size()) {
    if (cache_) {
      const Tensor host = model_.backend().to_host_f32(live.states);
      int64_t at = 0;
      for (size_t i = 0; i < chunks.size(); ++i) {
        const int64_t n = static_cast<int64_t>(chunks[i].size());
        if (!ids[i].empty()) {
          // A copy of its own: a view would keep the whole request's states alive.
          Tensor copy = Tensor::empty({n, width}, DType::F32);
          std::memcpy(copy.raw(), host.data<float>() + at * width, copy.nbytes());
          cache_->put(EncodedPassageCache::key(fingerprint_, ids[i], pieces[i].token_hash),
                      std::move(copy));
        }
        at += n;
      }
    }
    return live;
  }
  Tensor live_host;
  if (live.tokens() > 0) live_host = model_.backend().to_host_f32(live.states);
  int64_t at = 0;
  for (size_t j = 0; j < live_of.size(); ++j) {
    pieces[live_of[j]].live_begin = at;
    at += static_cast<int64_t>(chunks[live_of[j]].size());
  }
  // One host tensor in passage order (uploaded once on a device backend).
  int64_t total = 0;
  for (const auto& c : chunks) total += static_cast<int64_t>(c.size());
  Tensor host = Tensor::empty({total, width}, DType::F32);
  EncodedContext ctx;
  int64_t row = 0;
  for (size_t i = 0; i < chunks.size(); ++i) {
    const int64_t n = static_cast<int64_t>(chunks[i].size());
    float* dst = host.data<float>() + row * width;
    const Piece& p = pieces[i];
    switch (p.from) {
      case From::Store:
        store_->read(p.row, dst);
        counters_.store_hits.fetch_add(1);
        break;
      case From::Cache:
        std::memcpy(dst, p.cached.raw(), static_cast<size_t>(n * width) * sizeof(float));
        counters_.cache_hits.fetch_add(1);
        break;
      case From::Live: {
        const float* src = live_host.data<float>() + p.live_begin * width;
        std::memcpy(dst, src, static_cast<size_t>(n * width) * sizeof(float));
        if (cache_ && !ids[i].empty()) {
          Tensor copy = Tensor::empty({n, width}, DType::F32);
          std::memcpy(copy.raw(), src, copy.nbytes());
          cache_->put(EncodedPassageCache::key(fingerprint_, ids[i], p.token_hash),
                      std::move(copy));
        }
        break;
      }
    }
    ctx.chunk_lengths.push_back(n);
    row += n;
  }
  ctx.states = model_.backend().to_device(host);
  return ctx;
}

}  // namespace cepe::qa
