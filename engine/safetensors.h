// safetensors checkpoints: single file or sharded, memory-mapped, every tensor checked by name.
#pragma once

#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "engine/tensor.h"

namespace cepe {

/// Where one tensor lives inside a safetensors file.
struct TensorEntry {
  DType dtype = DType::F32;    ///< element type
  std::vector<int64_t> shape;  ///< shape as stored
  size_t begin = 0;            ///< byte offset of the data, from the start of the data section
  size_t end = 0;              ///< byte offset one past the data
};

/// One memory-mapped .safetensors file. Tensors are views into the mapping (no copy).
class SafeTensorsFile {
 public:
  /// Maps and validates the file: header JSON, dtypes, offsets in bounds and consistent with
  /// shapes.
  explicit SafeTensorsFile(const std::filesystem::path& path);
  /// Releases this handle; the mapping stays until the last view of it is gone.
  ~SafeTensorsFile();
  SafeTensorsFile(const SafeTensorsFile&) = delete;
  SafeTensorsFile& operator=(const SafeTensorsFile&) = delete;

  /// Path of the file.
  const std::filesystem::path& path() const { return path_; }
  /// Tensor entries by name (tensors of a supported dtype only).
  const std::map<std::string, TensorEntry>& entries() const { return entries_; }
  /// Tensors whose dtype is valid safetensors but not supported here (name -> dtype, e.g. "I64").
  const std::map<std::string, std::string>& unsupported() const { return unsupported_; }
  /// True when the file holds the tensor with a supported dtype.
  bool contains(const std::string& name) const { return entries_.count(name) != 0; }
  /// Read-only view of a tensor (throws naming the tensor and file when absent); keeps the mapping
  /// alive. A tensor whose address is not aligned to its element size is returned as a copy.
  Tensor view(const std::string& name) const;
  /// The `__metadata__` string map of the header.
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  /// Size of the whole file in bytes.
  size_t file_size() const { return file_size_; }

 private:
  std::filesystem::path path_;
  std::shared_ptr<void> mapping_;  // munmaps when the last view is gone
  const char* data_ = nullptr;     // start of the data section
  size_t data_size_ = 0;
  size_t file_size_ = 0;
  std::map<std::string, TensorEntry> entries_;
  std::map<std::string, std::string> unsupported_;
  std::map<std::string, std::string> metadata_;
};

/// All weights of a model directory: model.safetensors or model.safetensors.index.json + shards.
class WeightStore {
 public:
  /// Opens the checkpoint in `model_dir` (throws with the path when neither layout is present).
  /// A path to a single .safetensors file is accepted too.
  static WeightStore open(const std::filesystem::path& model_dir);

  /// True when some file holds the tensor (with a supported dtype).
  bool contains(const std::string& name) const;
  /// The tensor, checked for presence and shape; errors name the tensor and its file.
  Tensor get(const std::string& name, const std::vector<int64_t>& expected_shape) const;
  /// The tensor with whatever shape it has (for callers that check the shape themselves).
  Tensor get(const std::string& name) const;
  /// The file that holds a tensor (for error messages).
  std::filesystem::path file_of(const std::string& name) const;
  /// Names of all tensors, sorted.
  std::vector<std::string> names() const;
  /// Total bytes of all tensors as stored.
  size_t total_bytes() const;
  /// The opened files, in the order they were opened.
  const std::vector<std::shared_ptr<SafeTensorsFile>>& files() const { return files_; }
  /// The directory (or single file) the store was opened from.
  const std::filesystem::path& location() const { return location_; }

 private:
  [[noreturn]] void throw_missing(const std::string& name) const;

  std::filesystem::path location_;
  std::vector<std::shared_ptr<SafeTensorsFile>> files_;
  std::map<std::string, size_t> index_;  // tensor name -> position in files_
};

/// Writes tensors (CPU, any dtype) to a .safetensors file atomically (temp file + rename).
void write_safetensors(const std::filesystem::path& path,
                       const std::vector<std::pair<std::string, Tensor>>& tensors,
                       const std::map<std::string, std::string>& metadata = {});

/// One tensor of a streamed write: its name, dtype and shape for the header, its bytes made
/// only when the file reaches it.
struct SafeTensorsEntry {
  std::string name;            ///< tensor name
  DType dtype;                 ///< dtype the produced tensor must have
  std::vector<int64_t> shape;  ///< shape the produced tensor must have
  /// Makes the tensor (CPU); called once, in order, and dropped once its bytes are written.
  std::function<Tensor()> produce;
};

/// Writes the entries as write_safetensors does, producing one tensor at a time, so a whole
/// re-typed checkpoint is never in memory at once. `written(i)` runs after entry i's bytes.
/// A produced tensor whose dtype or shape differs from its entry's throws, naming it.
void write_safetensors_streamed(const std::filesystem::path& path,
                                const std::vector<SafeTensorsEntry>& entries,
                                const std::map<std::string, std::string>& metadata = {},
                                const std::function<void(size_t)>& written = {});

}  // namespace cepe
