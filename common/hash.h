// A fast non-cryptographic 64-bit hash for feature hashing, duplicate detection and checksums.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string_view>

namespace cepe {

/// Final avalanche step: every input bit affects every output bit.
inline uint64_t mix64(uint64_t h) {
  h ^= h >> 33;
  h *= 0xff51afd7ed558ccdULL;
  h ^= h >> 33;
  h *= 0xc4ceb9fe1a85ec53ULL;
  h ^= h >> 33;
  return h;
}

/// Streaming hash: the same bytes give the same value however they are split into update() calls
/// only when split on 8-byte boundaries, so callers feed whole records.
class Hasher {
 public:
  /// Starts a hash with `seed`.
  explicit Hasher(uint64_t seed = 0) : h_(seed ^ 0x9e3779b97f4a7c15ULL) {}
  /// Feeds `n` bytes.
  void update(const void* data, size_t n) {
    const auto* p = static_cast<const unsigned char*>(data);
    len_ += n;
    while (n >= 8) {
      uint64_t w;
      std::memcpy(&w, p, 8);
      absorb(w);
      p += 8;
      n -= 8;
    }
    if (n) {
      uint64_t w = 0;
      std::memcpy(&w, p, n);
      // The tail length is folded in so that "a\0" and "a" differ.
      absorb(w ^ (static_cast<uint64_t>(n) << 56));
    }
  }
  /// Feeds a string (its length is included, so concatenations of fields stay unambiguous).
  void update_string(std::string_view s) {
    update_u64(s.size());
    update(s.data(), s.size());
  }
  /// Feeds one 64-bit value.
  void update_u64(uint64_t v) { absorb(v); }
  /// The hash of everything fed so far.
  uint64_t digest() const { return mix64(h_ ^ len_); }

 private:
  void absorb(uint64_t w) {
    h_ ^= mix64(w + 0x632be59bd9b4e019ULL);
    h_ = ((h_ << 29) | (h_ >> 35)) * 0x9fb21c651e98df25ULL;
  }
  uint64_t h_;
  uint64_t len_ = 0;
};

/// Hash of a byte string.
inline uint64_t hash64(std::string_view s, uint64_t seed = 0) {
  Hasher h(seed);
  h.update(s.data(), s.size());
  return h.digest();
}

}  // namespace cepe
