// Crash-safe file writing (temporary file, fsync, atomic rename) and read-only memory mapping.
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <string>
#include <string_view>
#include <utility>

namespace cepe {

/// Streams bytes to `path.tmp-<pid>-<n>` and renames it over `path` on commit(), so readers see
/// either the old file or the complete new one. Without commit() the temporary file is removed.
class AtomicFileWriter {
 public:
  /// Creates the temporary file beside `path`; throws naming the path on failure.
  explicit AtomicFileWriter(const std::filesystem::path& path);
  ~AtomicFileWriter();
  AtomicFileWriter(const AtomicFileWriter&) = delete;
  AtomicFileWriter& operator=(const AtomicFileWriter&) = delete;

  /// Appends bytes (buffered).
  void write(const void* data, size_t n);
  /// Appends a string's bytes.
  void write(std::string_view s) { write(s.data(), s.size()); }
  /// Overwrites bytes already written at `offset` (for headers filled in at the end).
  void write_at(uint64_t offset, const void* data, size_t n);
  /// Bytes written so far.
  uint64_t size() const { return size_; }
  /// Flushes, fsyncs and renames onto the final path.
  void commit();
  /// The final path.
  const std::filesystem::path& path() const { return path_; }

 private:
  void flush();
  std::filesystem::path path_;
  std::filesystem::path tmp_;
  int fd_ = -1;
  std::string buffer_;
  uint64_t size_ = 0;
  bool committed_ = false;
};

/// Writes a whole file atomically.
void write_file_atomic(const std::filesystem::path& path, std::string_view content);

/// Reads a whole file; throws "cannot open WHAT PATH: reason" when it cannot, `what` naming
/// the file's role for the reader ("question file", "--input"; empty: the path alone).
std::string read_whole_file(const std::filesystem::path& path, std::string_view what = {});

/// fsyncs a directory so that renames inside it survive a crash.
void fsync_directory(const std::filesystem::path& dir);

/// Removes the temporary files an atomic write of `path` leaves when its process is killed before
/// the rename (`PATH.tmp-PID-N`); returns how many it removed.
int remove_stale_temps(const std::filesystem::path& path);

/// A read-only memory mapping of a whole file.
class MappedFile {
 public:
  /// Maps `path`; throws naming the path when it is missing or unreadable.
  explicit MappedFile(const std::filesystem::path& path);
  ~MappedFile();
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  /// First byte of the mapping (null for an empty file).
  const char* data() const { return data_; }
  /// Size of the file in bytes.
  size_t size() const { return size_; }
  /// The mapped path.
  const std::filesystem::path& path() const { return path_; }
  /// Device and inode of the file mapped: which file this is, whatever its name holds now (a file
  /// replaced by rename has another; the mapping keeps this one's inode from being reused).
  std::pair<uint64_t, uint64_t> identity() const { return identity_; }

 private:
  std::filesystem::path path_;
  const char* data_ = nullptr;
  size_t size_ = 0;
  std::pair<uint64_t, uint64_t> identity_;
};

}  // namespace cepe
