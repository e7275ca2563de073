// The encoder-state store of an index: every passage's CEPE encoder states, computed once by
// `cepe index encode` and memory-mapped by the readers. A passage's states do not depend on the
// question (each passage is its own chunk with positions from 0), so decoding needs only these.
//
// Files: DIR/encoder_states/<fingerprint hex>.ces, one per (model, tokenizer, chunk length,
// dtype, layout), so several models' stores sit in one index. Layout (little-endian):
//   header (4096 bytes): magic "CEPEENC\0", version, dtype, width, passages, fingerprint
//                        components, table/ids/data positions, data bytes, checksums; version 2
//                        (CrossKV stores) adds the layout, cross weights hash and kv shape
//   table:  per passage row  u64 data offset | u32 tokens | u32 reserved | u64 token hash
//   ids:    passages x (u64 id hash, u64 row), sorted, for lookups by passage id
//   data:   per passage tokens x token bytes (CrossKV: layer-major, see StoreLayout), each passage
//   64-byte aligned (data starts page aligned)
// A build in progress writes <name>.partial and <name>.partial.ckpt; only finish() renames the
// file into place, so a half-written store is never found.
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/fileio.h"
#include "engine/config.h"

namespace cepe::index {

/// What a store row holds per passage token.
enum class StoreLayout : uint32_t {
  /// The encoder states E [tokens, encoder width]: what absorbed cross-attention reads.
  States = 0,
  /// Every cross-attention layer's projected keys and values (W_k·E, W_v·E), per passage laid out
  /// [cross layer][k, v][tokens][kv width]: a request then does no projection and attends over
  /// head-width keys (TurboRAG-style), at 2 x cross layers x kv width values per token.
  CrossKV = 1,
};
/// "states" / "kv".
const char* store_layout_name(StoreLayout l);
/// Parses "states" or "kv"; the error names `what` (e.g. the flag).
StoreLayout parse_store_layout(const std::string& name, const std::string& what);

/// Element type of stored states.
enum class StateDType : uint32_t {
  F32 = 0,   ///< exact
  BF16 = 1,  ///< 8-bit mantissa, F32 range
  F16 = 2,   ///< 11-bit mantissa, range +-65504
  Q8_0 = 3,  ///< blocks of 32 values: one F16 scale + 32 int8 (GGML's Q8_0; last block shorter)
};

/// "f32", "bf16", "f16", "q8_0".
const char* state_dtype_name(StateDType t);
/// Parses a dtype name; the error names `what` (e.g. the flag).
StateDType parse_state_dtype(const std::string& name, const std::string& what);
/// Bytes of one stored row of `width` values.
size_t state_row_bytes(StateDType t, int64_t width);
/// Encodes `width` floats as one stored row.
void encode_state_row(const float* src, int64_t width, StateDType t, char* dst);
/// Decodes one stored row into `width` floats.
void decode_state_row(const char* src, int64_t width, StateDType t, float* dst);

/// Everything that determines the stored states, component by component (so a mismatch can say
/// which one differs).
struct EncoderFingerprint {
  uint64_t encoder_weights = 0;  ///< hash of every encoder.* tensor: name, dtype, shape, bytes
  uint64_t encoder_config = 0;   ///< hash of the encoder config and encoder_hidden_size
  uint64_t tokenizer = 0;        ///< hash of tokenizer.model's bytes
  int64_t chunk_tokens = 0;      ///< passages truncated to this many tokens
  int64_t width = 0;             ///< encoder_hidden_size (values per state row)
  StateDType dtype = StateDType::F32;        ///< stored element type
  StoreLayout layout = StoreLayout::States;  ///< what the rows hold
  uint64_t cross_weights = 0;  ///< CrossKV: hash of the decoder's cross_attn.{k,v}_proj tensors
  int64_t cross_layers = 0;    ///< CrossKV: decoder layers with cross-attention
  int64_t kv_width = 0;        ///< CrossKV: values per key (kv heads x head dim)

  /// Values per encoded row: the encoder width, or (CrossKV) the kv width.
  int64_t row_width() const { return layout == StoreLayout::CrossKV ? kv_width : width; }
  /// Encoded rows per passage token: 1, or (CrossKV) 2 x cross layers.
  int64_t rows_per_token() const { return layout == StoreLayout::CrossKV ? 2 * cross_layers : 1; }
  /// Values per passage token (row_width() x rows_per_token()).
  int64_t token_values() const { return row_width() * rows_per_token(); }
  /// Stored bytes per passage token.
  size_t token_bytes() const;

  /// One hash of all components.
  uint64_t digest() const;
  /// digest() as 16 hex digits (the store's file name).
  std::string hex() const;
  /// "" when `other` equals this but perhaps for the dtype; otherwise what differs, e.g.
  /// "another tokenizer (tokenizer.model hash 1a.. vs 2b..)".
  std::string model_mismatch(const EncoderFingerprint& other) const;
};

/// Computes the fingerprint of the model in `model_dir` (its encoder.* tensors and
/// tokenizer.model) for `chunk_tokens` and `dtype`; throws when the model has no encoder.
EncoderFingerprint encoder_fingerprint(const std::filesystem::path& model_dir,
                                       const ModelConfig& config, int64_t chunk_tokens,
                                       StateDType dtype);

/// The fingerprint of a CrossKV store for the model in `model_dir`: encoder_fingerprint's
/// components plus a hash of every decoder cross_attn.{k,v}_proj tensor; throws when the model
/// has no cross-attention layer.
EncoderFingerprint cross_kv_fingerprint(const std::filesystem::path& model_dir,
                                        const ModelConfig& config, int64_t chunk_tokens,
                                        StateDType dtype);

/// Hash of a chunk's token ids (a stored passage is used only when its tokens hash the same).
uint64_t chunk_token_hash(const std::vector<int32_t>& tokens);
/// Hash of a passage id, for the id table.
uint64_t passage_id_hash(std::string_view id);

/// DIR/encoder_states.
std::filesystem::path encoder_store_dir(const std::filesystem::path& index_dir);
/// DIR/encoder_states/<fp.hex()>.ces.
std::filesystem::path encoder_store_path(const std::filesystem::path& index_dir,
                                         const EncoderFingerprint& fp);

/// What one passage contributes to a store build.
struct StoredPassageInfo {
  uint64_t id_hash = 0;     ///< passage_id_hash(id)
  uint32_t tokens = 0;      ///< chunk length (>= 1)
  uint64_t token_hash = 0;  ///< chunk_token_hash(chunk)
};

class EncoderStore;

/// Builds a store passage by passage, resumably: rows are appended to <path>.partial and
/// committed (fsync, then an atomic checkpoint) at commit(); a writer opened on the same path,
/// fingerprint and passages after a crash continues from the last commit, and the finished file
/// is byte-equal to an uninterrupted build's.
class EncoderStoreWriter {
 public:
  /// Starts or resumes the build of `path` for `passages` (their chunk lengths and hashes, in row
  /// order). A checkpoint for another fingerprint or passage list is discarded (restart).
  EncoderStoreWriter(const std::filesystem::path& path, const EncoderFingerprint& fp,
                     std::vector<StoredPassageInfo> passages);
  ~EncoderStoreWriter();
  EncoderStoreWriter(const EncoderStoreWriter&) = delete;
  EncoderStoreWriter& operator=(const EncoderStoreWriter&) = delete;

  /// Rows already written (and committed) when the writer was opened: where encoding resumes.
  uint64_t resumed_rows() const { return resumed_rows_; }
  /// Rows written so far.
  uint64_t rows() const { return rows_; }
  /// Appends the next passage's values (F32, host): States [tokens, width]; CrossKV
  /// [cross layer][k, v][tokens][kv width]. Checks the token count.
  void append(const float* values, int64_t tokens);
  /// Appends the next passage by copying row `row` of a finished store built with the same
  /// fingerprint, byte for byte (no decode and re-encode, so q8_0 rows stay exact). The row must
  /// hold this passage's chunk: its token count and token hash are checked.
  void append_stored(const EncoderStore& from, uint64_t row);
  /// Makes the rows written so far survive a crash (fsync + checkpoint).
  void commit();
  /// Writes the table, ids and header, verifies the size, renames into place; removes the
  /// checkpoint. Every row must have been appended.
  void finish();
  /// Bytes of the finished file.
  uint64_t file_bytes() const { return data_pos_ + data_bytes_; }

 private:
  std::filesystem::path path_, partial_, ckpt_;
  EncoderFingerprint fp_;
  std::vector<StoredPassageInfo> passages_;
  std::vector<uint64_t> offsets_;  // per row, relative to data start
  uint64_t data_pos_ = 0, data_bytes_ = 0;
  uint64_t rows_ = 0, resumed_rows_ = 0;
  uint64_t list_hash_ = 0;
  int fd_ = -1;
  std::vector<char> row_buffer_;
};

/// A store build in progress or interrupted, as its checkpoint records it.
struct StoreBuildCheckpoint {
  std::filesystem::path store;  ///< the store it builds (the checkpoint's name less its suffix)
  uint64_t rows = 0;            ///< passage rows committed so far
};

/// Reads `file` when it is a store build's checkpoint (<store>.partial.ckpt, written by
/// EncoderStoreWriter::commit()); nullopt for any other file or an unreadable checkpoint.
std::optional<StoreBuildCheckpoint> read_store_checkpoint(const std::filesystem::path& file);

/// A finished store, memory-mapped read-only. Thread-safe (immutable).
class EncoderStore {
 public:
  /// Maps and validates `path`; throws naming the file when it is not a store, has another
  /// version, or is truncated.
  explicit EncoderStore(const std::filesystem::path& path);

  /// The fingerprint the store was built with.
  const EncoderFingerprint& fingerprint() const { return fp_; }
  /// Passages (rows).
  uint64_t size() const { return count_; }
  /// The row of passage `id` whose chunk hashes to `token_hash` and has `tokens` tokens, or none.
  std::optional<uint64_t> find(std::string_view id, uint32_t tokens, uint64_t token_hash) const;
  /// Tokens stored for `row`.
  uint32_t tokens(uint64_t row) const;
  /// chunk_token_hash of the chunk stored at `row`.
  uint64_t token_hash(uint64_t row) const;
  /// Row `row`'s stored bytes (tokens(row) x fingerprint().token_bytes(), in the store's dtype).
  std::string_view raw_row(uint64_t row) const;
  /// Decodes row `row`'s values into dst (tokens(row) x token_values() F32, in the layout's
  /// order).
  void read(uint64_t row, float* dst) const;
  /// Row `row`'s values in place when the store is F32 (null otherwise): no copy.
  const float* f32_data(uint64_t row) const;
  /// Row `row`'s values in place when the store is F16 (null otherwise): no copy.
  const uint16_t* f16_data(uint64_t row) const;
  /// Recomputes the data checksum; throws naming the file when it differs.
  void verify() const;
  /// Size of the file in bytes.
  uint64_t file_bytes() const { return file_->size(); }
  /// Total stored tokens.
  uint64_t total_tokens() const { return total_tokens_; }
  /// The file.
  const std::filesystem::path& path() const { return file_->path(); }
  /// Device and inode of the file (a store written again under the same name has another).
  std::pair<uint64_t, uint64_t> file_identity() const { return file_->identity(); }
  /// The mapping's owner, for views that must keep it alive.
  std::shared_ptr<const void> owner() const { return file_; }

 private:
  const char* row_ptr(uint64_t row) const;
  std::shared_ptr<MappedFile> file_;
  EncoderFingerprint fp_;
  uint64_t count_ = 0, total_tokens_ = 0, data_bytes_ = 0, checksum_ = 0;
  const char* table_ = nullptr;
  const char* ids_ = nullptr;
  const char* data_ = nullptr;
};

/// Result of looking for a model's store in an index.
struct StoreLookup {
  std::shared_ptr<const EncoderStore> store;  ///< null when none matches
  std::vector<std::string> rejected;  ///< one line per store present that does not match, why
};

/// Opens the store in `index_dir` whose fingerprint matches `want` in everything but the dtype
/// (preferring f32, then bf16, f16, q8_0); with `want_kv` (a CrossKV fingerprint) a matching
/// CrossKV store is preferred to a States one. Stores that match neither are listed with the
/// reason.
StoreLookup find_encoder_store(const std::filesystem::path& index_dir,
                               const EncoderFingerprint& want,
                               const EncoderFingerprint* want_kv = nullptr);

}  // namespace cepe::index
