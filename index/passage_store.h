// The passage store of an index: id, title and text of every passage, memory-mapped, O(1) by row.
//
// Layout (little-endian):
//   header (64 bytes): magic "CEPEPSG\0", u32 version, u32 header size, u64 count, u64 data size,
//                      u64 offsets position, u64 data checksum, u64 reserved, u64 header checksum
//   data:    per passage  u32 id length | u32 title length | id | title | text
//   offsets: (count + 1) u64 offsets into data, 8-byte aligned
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "common/fileio.h"
#include "common/hash.h"
#include "retriever/passage.h"

namespace cepe::index {

/// One passage as read from the store; views into the mapping, valid while the store lives.
using PassageView = retriever::PassageView;

/// Current on-disk version of the passage store.
inline constexpr uint32_t kPassageStoreVersion = 1;

/// Writes a passage store; the file appears under its final name only after finish().
class PassageStoreWriter {
 public:
  /// Starts writing `path` (through a temporary file).
  explicit PassageStoreWriter(const std::filesystem::path& path);
  /// Appends one passage; returns its row.
  uint64_t add(std::string_view id, std::string_view title, std::string_view text);
  /// Passages added so far.
  uint64_t count() const { return offsets_.size() - 1; }
  /// Writes the offsets and header, then renames the file into place.
  void finish();

 private:
  AtomicFileWriter out_;
  std::vector<uint64_t> offsets_;
  Hasher checksum_;
};

/// A read-only, memory-mapped passage store.
class PassageStore : public retriever::PassageLookup {
 public:
  /// Maps and validates the header and sizes; throws naming the file when it is not a store, has
  /// another version, or is truncated.
  explicit PassageStore(const std::filesystem::path& path);

  /// Number of passages.
  uint64_t size() const override { return count_; }
  /// Passage at `row`; throws when the row is out of range or the record is corrupt.
  PassageView get(uint64_t row) const override;
  /// Recomputes the data checksum; throws naming the file when it does not match the header.
  void verify() const;
  /// Size of the file in bytes.
  uint64_t file_bytes() const { return file_->size(); }
  /// The store's path.
  const std::filesystem::path& path() const { return file_->path(); }

 private:
  std::shared_ptr<MappedFile> file_;
  uint64_t count_ = 0;
  uint64_t data_size_ = 0;
  uint64_t checksum_ = 0;
  const char* data_ = nullptr;
  const char* offsets_ = nullptr;
};

}  // namespace cepe::index
