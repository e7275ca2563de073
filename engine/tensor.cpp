#include "engine/tensor.h"

#include <sys/mman.h>

#include <cstdlib>
#include <cstring>
#include <new>

#include "common/error.h"

namespace cepe {

const char* device_name(Device d) {
  return d == Device::CPU ? "cpu" : "cuda";
}

std::string shape_to_string(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) {
    if (i) s += ", ";
    s += std::to_string(shape[i]);
  }
  return s + "]";
}

int64_t Tensor::numel() const {
  int64_t n = 1;
  for (int64_t d : shape_) n *= d;
  return n;
}

size_t Tensor::nbytes() const {
  if (!dtype_is_block(dtype_)) return static_cast<size_t>(numel()) * dtype_size(dtype_);
  if (shape_.empty()) return dtype_row_bytes(dtype_, 1);
  const int64_t width = shape_.back();
  if (width == 0) return 0;
  return static_cast<size_t>(numel() / width) * dtype_row_bytes(dtype_, width);
}

std::string Tensor::shape_string() const {
  return shape_to_string(shape_);
}

Tensor Tensor::allocate(std::vector<int64_t> shape, DType dtype, bool huge_pages) {
  constexpr size_t kHugePage = size_t{2} << 20;
  Tensor t;
  t.shape_ = std::move(shape);
  t.dtype_ = dtype;
  for (int64_t d : t.shape_) CEPE_CHECK(d >= 0, "negative dimension in shape " << t.shape_string());
  const size_t bytes = t.nbytes();
  // 64-byte alignment keeps BLAS and vector loops on whole cache lines; 2 MB alignment lets
  // whole huge pages cover the tensor.
  const bool huge = huge_pages && bytes >= kHugePage;
  const size_t alignment = huge ? kHugePage : 64;
  void* p = bytes ? std::aligned_alloc(alignment, (bytes + alignment - 1) / alignment * alignment)
                  : nullptr;
  if (bytes && !p) throw std::bad_alloc();
  // Advisory: without transparent huge pages (or with them off) this is ordinary memory. Only
  // whole 2 MB blocks are advised, so a tensor's tail never grows resident memory by most of a
  // huge page.
  if (huge) ::madvise(p, bytes / kHugePage * kHugePage, MADV_HUGEPAGE);
  t.owner_ = std::shared_ptr<void>(p, [](void* q) { std::free(q); });
  t.data_ = p;
  return t;
}

Tensor Tensor::empty(std::vector<int64_t> shape, DType dtype) {
  return allocate(std::move(shape), dtype, false);
}

Tensor Tensor::empty_long_lived(std::vector<int64_t> shape, DType dtype) {
  // A decode step streams every weight once, and with 4 KB pages each 4 KB read is a TLB miss and
  // a page walk; on 2 MB pages F32 decode steps took 11-22 % less time (with the copy out of the
  // file mapping, see copy_weight). Tensors under 2 MB stay on the ordinary heap.
  return allocate(std::move(shape), dtype, true);
}

Tensor Tensor::zeros(std::vector<int64_t> shape, DType dtype) {
  Tensor t = empty(std::move(shape), dtype);
  if (t.nbytes()) std::memset(t.data_, 0, t.nbytes());
  return t;
}

Tensor Tensor::wrap(void* data, std::vector<int64_t> shape, DType dtype, Device device,
                    std::shared_ptr<void> owner) {
  Tensor t;
  t.owner_ = std::move(owner);
  t.data_ = data;
  t.shape_ = std::move(shape);
  t.dtype_ = dtype;
  t.device_ = device;
  return t;
}

Tensor Tensor::rows(int64_t begin, int64_t count) const {
  CEPE_CHECK(
      rank() >= 1 && begin >= 0 && count >= 0 && begin + count <= shape_[0],
      "row slice [" << begin << ", " << begin + count << ") out of range for " << shape_string());
  Tensor t = *this;
  t.shape_[0] = count;
  const size_t row_bytes = shape_[0] ? nbytes() / shape_[0] : 0;
  t.data_ = static_cast<char*>(data_) + begin * row_bytes;
  return t;
}

Tensor Tensor::reshape(std::vector<int64_t> shape) const {
  Tensor t = *this;
  t.shape_ = std::move(shape);
  CEPE_CHECK(t.numel() == numel(),
             "cannot reshape " << shape_string() << " to " << t.shape_string());
  CEPE_CHECK(!dtype_is_block(dtype_) ||
                 (!shape_.empty() && !t.shape_.empty() && shape_.back() == t.shape_.back()),
             "cannot reshape " << dtype_name(dtype_) << " tensor " << shape_string() << " to "
                               << t.shape_string() << ": block rows keep their width");
  return t;
}

}  // namespace cepe
