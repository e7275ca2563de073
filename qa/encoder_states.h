// Passages -> encoder states for one request, reading them from an index's encoder-state store
// or a cache of recently encoded passages where possible and encoding only the rest live.
// The one place the reader (and the server's engine loop) turns passages into an EncodedContext.
#pragma once

#include <atomic>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <list>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "engine/models/cepe_llama.h"
#include "engine/tokenizer.h"
#include "index/encoder_store.h"
#include "qa/passage.h"

namespace cepe::qa {

/// A passage's encoder chunk: "Document (Title: ..): text" tokenised without BOS, cut to
/// `chunk_tokens`. The reader and `cepe index encode` both use it, so stored and live chunks
/// are the same tokens.
std::vector<int32_t> encoder_chunk_ids(const Tokenizer& tokenizer, const Passage& passage,
                                       int chunk_tokens);

/// Counters of where passages' states came from (thread-safe).
struct EncoderStateCounters {
  std::atomic<uint64_t> store_hits{0};     ///< passages read from the store
  std::atomic<uint64_t> cache_hits{0};     ///< passages read from the cache
  std::atomic<uint64_t> live_passages{0};  ///< passages encoded live
  std::atomic<uint64_t> live_tokens{0};    ///< tokens encoded live
};

/// An LRU cache of encoded passages (host F32 states), bounded in bytes and keyed by passage id,
/// chunk token hash and model fingerprint. Thread-safe.
class EncodedPassageCache {
 public:
  /// A cache holding at most `capacity_bytes` of states.
  explicit EncodedPassageCache(size_t capacity_bytes);
  /// The states stored under `key` (marking them recently used), or an undefined tensor.
  Tensor get(const std::string& key);
  /// Stores `states` (host F32 [tokens, width]) under `key`, evicting the least recently used;
  /// entries larger than the whole cache are not kept.
  void put(const std::string& key, Tensor states);
  /// Cache key of one passage's chunk under a model fingerprint.
  static std::string key(uint64_t fingerprint, std::string_view passage_id, uint64_t token_hash);
  /// Cache key of a chunk without a passage id (a caller's passage): the token ids themselves, so
  /// equal keys mean equal content and no hash collision can hand out another text's states.
  static std::string content_key(uint64_t fingerprint, const std::vector<int32_t>& chunk);

  /// Lookups that found an entry.
  uint64_t hits() const { return hits_.load(); }
  /// Lookups that did not.
  uint64_t misses() const { return misses_.load(); }
  /// Entries evicted to make room.
  uint64_t evictions() const { return evictions_.load(); }
  /// Bytes held now.
  size_t bytes() const { return bytes_.load(); }
  /// Entries held now.
  size_t entries() const;
  /// The byte bound.
  size_t capacity() const { return capacity_; }

 private:
  using Entry = std::pair<std::string, Tensor>;
  mutable std::mutex mu_;
  size_t capacity_;
  std::list<Entry> lru_;  // most recently used first
  std::unordered_map<std::string, std::list<Entry>::iterator> map_;
  std::atomic<uint64_t> hits_{0}, misses_{0}, evictions_{0};
  std::atomic<size_t> bytes_{0};
};

/// A passage's states as found in a store or the cache.
struct FoundStates {
  Tensor states;   ///< host F32 [tokens, encoder width], or undefined
  ProjectedKV kv;  ///< from a K/V store: every cross layer's keys and values (states undefined)
  /// True when either is set.
  bool found() const { return states.raw() != nullptr || kv.defined(); }
};

/// One chunk's projected keys and values in a K/V store's order: [cross layer][k, v][tokens][kv
/// width], host F32 (what EncoderStoreWriter::append takes for StoreLayout::CrossKV).
std::vector<float> stored_kv_values(Backend& backend, const ProjectedKV& kv);

/// Where `--encoder-store` / `encoder_store` points: "auto" (the index's matching store, if any),
/// "off", or a store file.
struct EncoderStoreChoice {
  std::string mode = "auto";  ///< auto, off, or a path to a .ces file
};

/// Opens the store `mode` asks for, for `model_dir`'s encoder with `chunk_tokens`: auto returns
/// the matching store of `index_dir` (a K/V store before a States one, K/V only when `device` is
/// the CPU; null when there is none; each store present that does not match is reported once
/// through `report`), a path must match (throws naming the difference).
std::shared_ptr<const index::EncoderStore> open_encoder_store(
    const std::string& mode, const std::filesystem::path& index_dir,
    const std::filesystem::path& model_dir, const ModelConfig& config, int chunk_tokens,
    Device device, const std::function<void(const std::string&)>& report);

/// Turns a request's passages into encoder states: from the store (when given), the cache (when
/// given), or encoded live in one packed pass, then joined in passage order. Uses the model from
/// the caller's thread only; the store and cache may be shared.
class EncoderStates {
 public:
  /// Live encoding only, until use_store / use_cache.
  explicit EncoderStates(CepeModel& model) : model_(model) {}
  /// Reads passages found in `store` from it (null: none).
  void use_store(std::shared_ptr<const index::EncoderStore> store) { store_ = std::move(store); }
  /// Keeps live-encoded passages in `cache` under the model's `fingerprint` (null: no cache).
  void use_cache(std::shared_ptr<EncodedPassageCache> cache, uint64_t fingerprint) {
    cache_ = std::move(cache);
    fingerprint_ = fingerprint;
  }
  /// The store in use (may be null).
  const std::shared_ptr<const index::EncoderStore>& store() const { return store_; }
  /// The cache in use (may be null).
  const std::shared_ptr<EncodedPassageCache>& cache() const { return cache_; }

  /// True when a store or a cache is in use (lookup() may find something).
  bool enabled() const { return store_ || cache_; }
  /// True when live-encoded passages are kept in a cache (remember() stores them).
  bool caching() const { return cache_ != nullptr; }
  /// Passage `id`'s states for `chunk` from the store (read-only views of an f32 store's mapping;
  /// a K/V store gives projected keys and values) or the cache (counted as a hit); nothing found
  /// when neither has it ("" ids, a caller's passages, are looked up in the cache by their tokens
  /// only).
  FoundStates lookup(const std::string& id, const std::vector<int32_t>& chunk);
  /// Keeps the live-encoded states `rows` (host F32, chunk.size() x width) of passage `id` in
  /// the cache, when there is one.
  void remember(const std::string& id, const std::vector<int32_t>& chunk, const float* rows);
  /// Counts passages and tokens encoded live.
  void count_live(size_t passages, int64_t tokens);

  /// States of `chunks` (passage `ids[i]`'s chunk is chunks[i]; "" ids: by content, cache only).
  /// Identical to model.encode(chunks) when nothing is found. Otherwise, on the CPU, one part
  /// per passage, read where it lies (an f32 store's mapping, a cache entry, the live pass);
  /// on a device, the passages' states joined into one [tokens, width] tensor and uploaded.
  /// States of a bf16/f16/q8_0 store are decoded to F32 per request.
  EncodedContext encode(const std::vector<std::string>& ids,
                        const std::vector<std::vector<int32_t>>& chunks);

  /// Where states came from so far.
  const EncoderStateCounters& counters() const { return counters_; }

 private:
  /// The cache key of passage `id`'s chunk: by id and token hash, or by the tokens when id is "".
  std::string cache_key(const std::string& id, const std::vector<int32_t>& chunk,
                        uint64_t token_hash) const;

  CepeModel& model_;
  std::shared_ptr<const index::EncoderStore> store_;
  std::shared_ptr<EncodedPassageCache> cache_;
  uint64_t fingerprint_ = 0;
  EncoderStateCounters counters_;
};

}  // namespace cepe::qa
