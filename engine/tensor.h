// A shaped, typed view of memory on one device, sharing ownership of its storage.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "engine/dtype.h"

namespace cepe {

/// Where a tensor's memory lives.
enum class Device { CPU, CUDA };

/// Name of a device ("cpu", "cuda").
const char* device_name(Device d);

/// Dense row-major tensor. Copies are cheap views of the same storage.
class Tensor {
 public:
  Tensor() = default;

  /// Allocates an uninitialised CPU tensor.
  static Tensor empty(std::vector<int64_t> shape, DType dtype);
  /// Allocates a zero-filled CPU tensor.
  static Tensor zeros(std::vector<int64_t> shape, DType dtype);
  /// Allocates an uninitialised CPU tensor for data kept as long as a model (weights): every
  /// whole 2 MB of it may be backed by a transparent huge page.
  static Tensor empty_long_lived(std::vector<int64_t> shape, DType dtype);
  /// Wraps existing memory; `owner` keeps it alive (may be null for borrowed memory).
  static Tensor wrap(void* data, std::vector<int64_t> shape, DType dtype, Device device,
                     std::shared_ptr<void> owner);

  /// True when the tensor refers to memory.
  bool defined() const { return data_ != nullptr || numel() == 0; }
  /// Raw pointer to the first element.
  void* raw() const { return data_; }
  /// Typed pointer to the first element.
  template <typename T>
  T* data() const {
    return static_cast<T*>(data_);
  }
  /// Element type.
  DType dtype() const { return dtype_; }
  /// Device holding the memory.
  Device device() const { return device_; }
  /// Shape, outermost first.
  const std::vector<int64_t>& shape() const { return shape_; }
  /// Number of dimensions.
  int rank() const { return static_cast<int>(shape_.size()); }
  /// Size of dimension i (negative counts from the end).
  int64_t dim(int i) const { return shape_.at(i < 0 ? shape_.size() + i : i); }
  /// Number of elements.
  int64_t numel() const;
  /// Number of bytes (block types: every row of the last dimension padded to whole blocks).
  size_t nbytes() const;
  /// Shape as "[a, b, c]".
  std::string shape_string() const;

  /// View of rows [begin, begin + count) along dimension 0.
  Tensor rows(int64_t begin, int64_t count) const;
  /// View with another shape of the same number of elements.
  Tensor reshape(std::vector<int64_t> shape) const;
  /// True for views of a read-only file mapping (checkpoint tensors), whose pages may be dropped
  /// from memory after a conversion and read back from the file when touched again.
  bool file_backed() const { return file_backed_; }
  /// Marks the tensor as a view of a read-only file mapping (see file_backed).
  void set_file_backed(bool on) { file_backed_ = on; }
  /// The storage owner, for views that must outlive this tensor.
  const std::shared_ptr<void>& owner() const { return owner_; }

 private:
  // empty() and empty_long_lived(): a fresh CPU tensor, on huge pages where asked and big enough.
  static Tensor allocate(std::vector<int64_t> shape, DType dtype, bool huge_pages);

  std::shared_ptr<void> owner_;
  void* data_ = nullptr;
  std::vector<int64_t> shape_;
  DType dtype_ = DType::F32;
  Device device_ = Device::CPU;
  bool file_backed_ = false;
};

/// Formats a shape as "[a, b, c]".
std::string shape_to_string(const std::vector<int64_t>& shape);

}  // namespace cepe
