#include "engine/quant.h"

#include <omp.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <exception>
#include <vector>

#include "common/error.h"

namespace cepe {

WeightKind parse_weight_kind(const std::string& name, const std::string& where) {
  if (name == "stored") return WeightKind::Stored;
  if (name == "f32") return WeightKind::F32;
  if (name == "bf16") return WeightKind::BF16;
  if (name == "f16") return WeightKind::F16;
  if (name == "q8_0") return WeightKind::Q8_0;
  if (name == "q4_0") return WeightKind::Q4_0;
  CEPE_THROW(where << ": unknown weights kind '" << name
                   << "' (expected stored, f32, bf16, f16, q8_0 or q4_0)");
}

StoredWeights parse_stored_weights(const std::string& name, Device device, WeightKind weights,
                                   const std::string& where) {
  if (name == "auto") return StoredWeights::Auto;
  CEPE_CHECK(name == "mapped",
             where << ": unknown stored-weights mode '" << name << "' (expected auto or mapped)");
  CEPE_CHECK(device == Device::CPU, where << ": mapped reads the checkpoint in place on the cpu; a "
                                          << device_name(device) << " backend uploads its weights");
  CEPE_CHECK(weights == WeightKind::Stored,
             where << ": mapped reads the checkpoint's own matrices in place, so it needs weights "
                      "'stored' (got '"
                   << weight_kind_name(weights) << "', which converts them into memory)");
  return StoredWeights::Mapped;
}

const char* weight_kind_name(WeightKind kind) {
  switch (kind) {
    case WeightKind::Stored:
      return "stored";
    case WeightKind::F32:
      return "f32";
    case WeightKind::BF16:
      return "bf16";
    case WeightKind::F16:
      return "f16";
    case WeightKind::Q8_0:
      return "q8_0";
    case WeightKind::Q4_0:
      return "q4_0";
  }
  return "?";
}

DType weight_kind_dtype(WeightKind kind, DType stored) {
  switch (kind) {
    case WeightKind::Stored:
      return stored;
    case WeightKind::F32:
      return DType::F32;
    case WeightKind::BF16:
      return DType::BF16;
    case WeightKind::F16:
      return DType::F16;
    case WeightKind::Q8_0:
      return DType::Q8_0;
    case WeightKind::Q4_0:
      return DType::Q4_0;
  }
  return stored;
}

void quantize_row_q8_0_ref(const float* x, BlockQ8_0* out, int64_t n) {
  const int64_t blocks = (n + 31) / 32;
  for (int64_t b = 0; b < blocks; ++b) {
    float v[32] = {0};
    const int64_t len = std::min<int64_t>(32, n - b * 32);
    std::memcpy(v, x + b * 32, static_cast<size_t>(len) * sizeof(float));
    float amax = 0.0f;
    for (float f : v) amax = std::max(amax, std::fabs(f));
    const float d = amax / 127.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    out[b].d = f32_to_f16(d);
    for (int i = 0; i < 32; ++i) out[b].qs[i] = static_cast<int8_t>(std::nearbyint(v[i] * id));
  }
}

void quantize_row_q4_0_ref(const float* x, BlockQ4_0* out, int64_t n) {
  const int64_t blocks = (n + 31) / 32;
  for (int64_t b = 0; b < blocks; ++b) {
    float v[32] = {0};
    const int64_t len = std::min<int64_t>(32, n - b * 32);
    std::memcpy(v, x + b * 32, static_cast<size_t>(len) * sizeof(float));
    // GGUF: the scale maps the weight of largest magnitude to -8 exactly, so its sign is kept
    // and the 16 levels -8..7 cover [-|max|, |max| * 7/8].
    float amax = 0.0f, max = 0.0f;
    for (float f : v)
      if (std::fabs(f) > amax) {
        amax = std::fabs(f);
        max = f;
      }
    const float d = max / -8.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    out[b].d = f32_to_f16(d);
    for (int j = 0; j < 16; ++j) {
      const int lo = std::min(15, static_cast<int>(static_cast<int8_t>(v[j] * id + 8.5f)));
      const int hi = std::min(15, static_cast<int>(static_cast<int8_t>(v[j + 16] * id + 8.5f)));
      out[b].qs[j] = static_cast<uint8_t>(lo | (hi << 4));
    }
  }
}

void dequantize_row_q8_0_ref(const BlockQ8_0* in, float* out, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    const BlockQ8_0& b = in[i / 32];
    out[i] = f16_to_f32(b.d) * static_cast<float>(b.qs[i % 32]);
  }
}

void dequantize_row_q4_0_ref(const BlockQ4_0* in, float* out, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    const BlockQ4_0& b = in[i / 32];
    const int j = static_cast<int>(i % 32);
    const int nibble = j < 16 ? (b.qs[j] & 0x0f) : (b.qs[j - 16] >> 4);
    out[i] = f16_to_f32(b.d) * static_cast<float>(nibble - 8);
  }
}

void dequantize_row_ref(const void* row, DType dtype, float* out, int64_t width) {
  switch (dtype) {
    case DType::Q8_0:
      dequantize_row_q8_0_ref(static_cast<const BlockQ8_0*>(row), out, width);
      return;
    case DType::Q4_0:
      dequantize_row_q4_0_ref(static_cast<const BlockQ4_0*>(row), out, width);
      return;
    case DType::Q8_0x16:
    case DType::Q4_0x16:
      CEPE_THROW("dequantize_row_ref: a " << dtype_name(dtype)
                                          << " row is not contiguous (use unpack_row16 first)");
    default:
      convert_to_f32(row, dtype, out, static_cast<size_t>(width));
  }
}

namespace {

// Byte offset of group g's block b, and of a block's quants, in a packed matrix.
size_t packed_block_offset(DType packed, int64_t blocks, int64_t g, int64_t b) {
  return static_cast<size_t>((g * blocks + b) * kPackRows) * dtype_block_bytes(packed);
}

// Packs 16 row-major rows of `from` blocks (`rows16`, `row_bytes` apart) as group g of a packed
// matrix at `dst` (layout: pack_rows16).
void pack_group(const char* rows16, DType from, int64_t blocks, int64_t g, char* dst) {
  const DType to = from == DType::Q8_0 ? DType::Q8_0x16 : DType::Q4_0x16;
  const size_t block_bytes = dtype_block_bytes(from);
  const size_t row_bytes = static_cast<size_t>(blocks) * block_bytes;
  const size_t quant_bytes = block_bytes - 2;              // 32 (Q8_0) or 16 (Q4_0)
  const uint8_t flip = from == DType::Q8_0 ? 0x80 : 0x00;  // int8 -> q + 128
  for (int64_t b = 0; b < blocks; ++b) {
    char* blk = dst + packed_block_offset(to, blocks, g, b);
    for (int64_t r = 0; r < kPackRows; ++r) {
      const char* in = rows16 + r * row_bytes + b * block_bytes;
      std::memcpy(blk + 2 * r, in, 2);
      for (size_t c = 0; c < quant_bytes / 4; ++c)
        for (size_t i = 0; i < 4; ++i)
          blk[packed_quant_index(c, r, i)] =
              static_cast<char>(static_cast<uint8_t>(in[2 + 4 * c + i]) ^ flip);
    }
  }
}

}  // namespace

Tensor pack_rows16(const Tensor& source) {
  const DType from = source.dtype();
  CEPE_CHECK(from == DType::Q8_0 || from == DType::Q4_0,
             "pack_rows16: expected a Q8_0 or Q4_0 matrix, got " << dtype_name(from));
  CEPE_CHECK(source.rank() == 2, "pack_rows16: expected a matrix, got " << source.shape_string());
  const DType to = from == DType::Q8_0 ? DType::Q8_0x16 : DType::Q4_0x16;
  const int64_t rows = source.dim(0), width = source.dim(1), blocks = (width + 31) / 32;
  const size_t row_bytes = dtype_row_bytes(from, width);
  Tensor out = Tensor::empty_long_lived(source.shape(), to);
  const char* src = static_cast<const char*>(source.raw());
  char* dst = static_cast<char*>(out.raw());
  const int64_t groups = rows / kPackRows;
  for (int64_t g = 0; g < groups; ++g)
    pack_group(src + g * kPackRows * row_bytes, from, blocks, g, dst);
  const int64_t done = groups * kPackRows;
  std::memcpy(dst + done * row_bytes, src + done * row_bytes, (rows - done) * row_bytes);
  return out;
}

void unpack_row16(const Tensor& t, int64_t r, void* out) {
  const DType packed = t.dtype(), plain = dtype_unpacked(packed);
  const int64_t rows = t.dim(0), width = t.dim(-1), blocks = (width + 31) / 32;
  CEPE_CHECK(r >= 0 && r < rows, "unpack_row16: row " << r << " of " << rows);
  const size_t row_bytes = dtype_row_bytes(plain, width);
  const char* src = static_cast<const char*>(t.raw());
  if (!dtype_is_packed(packed) || r >= rows / kPackRows * kPackRows) {
    std::memcpy(out, src + r * row_bytes, row_bytes);
    return;
  }
  const size_t block_bytes = dtype_block_bytes(plain), quant_bytes = block_bytes - 2;
  const uint8_t flip = plain == DType::Q8_0 ? 0x80 : 0x00;
  const int64_t g = r / kPackRows, lane = r % kPackRows;
  char* dst = static_cast<char*>(out);
  for (int64_t b = 0; b < blocks; ++b) {
    const char* blk = src + packed_block_offset(packed, blocks, g, b);
    char* o = dst + b * block_bytes;
    std::memcpy(o, blk + 2 * lane, 2);
    for (size_t c = 0; c < quant_bytes / 4; ++c)
      for (size_t i = 0; i < 4; ++i)
        o[2 + 4 * c + i] =
            static_cast<char>(static_cast<uint8_t>(blk[packed_quant_index(c, lane, i)]) ^ flip);
  }
}

void release_file_pages(const Tensor& t, size_t begin, size_t end) {
  end = std::min(end, t.nbytes());
  if (!t.file_backed() || begin >= end) return;
  // Only whole pages inside the range: a page shared with a neighbouring tensor or rows not yet
  // read may still be in use.
  const uintptr_t page = static_cast<uintptr_t>(::sysconf(_SC_PAGESIZE));
  const uintptr_t base = reinterpret_cast<uintptr_t>(t.raw());
  const uintptr_t first = (base + begin + page - 1) / page * page;
  const uintptr_t last = (base + end) / page * page;
  if (last > first)
    ::madvise(reinterpret_cast<void*>(first), last - first, MADV_DONTNEED);  // advisory only
}

// How much of a file-backed source copy_weight and convert_weight read before dropping its pages:
// a large matrix (a 32000 x 4096 head is 500 MB in F32) is never resident whole beside its copy.
constexpr size_t kReleaseBytes = size_t{4} << 20;

// Runs body(t, nt) on `threads` OpenMP threads (one: inline) and rethrows the first exception
// of any of them on the caller's thread, as none may leave a parallel region.
template <typename Body>
void run_on_threads(int threads, Body body) {
  if (threads <= 1) return body(0, 1);
  std::exception_ptr error;
#pragma omp parallel num_threads(threads)
  {
    try {
      body(omp_get_thread_num(), omp_get_num_threads());
    } catch (...) {
#pragma omp critical(cepe_run_on_threads)
      if (!error) error = std::current_exception();
    }
  }
  if (error) std::rethrow_exception(error);
}

Tensor copy_weight(const Tensor& source, int threads) {
  CEPE_CHECK(source.device() == Device::CPU, "copy_weight: the source must be a CPU tensor");
  Tensor out = Tensor::empty_long_lived(source.shape(), source.dtype());
  const char* src = static_cast<const char*>(source.raw());
  char* dst = static_cast<char*>(out.raw());
  const size_t chunks = (source.nbytes() + kReleaseBytes - 1) / kReleaseBytes;
  // Each thread takes a contiguous run of chunks: the fresh pages it writes are faulted in, and
  // cleared by the kernel, on its own core.
  run_on_threads(static_cast<int>(std::min<size_t>(threads, chunks)), [&](int t, int nt) {
    for (size_t c = chunks * t / nt; c < chunks * (t + 1) / nt; ++c) {
      const size_t at = c * kReleaseBytes, n = std::min(kReleaseBytes, source.nbytes() - at);
      std::memcpy(dst + at, src + at, n);
      release_file_pages(source, at, at + n);
    }
  });
  release_file_pages(source);  // the pages astride two threads' shares
  return out;
}

Tensor convert_weight(const Tensor& source, DType target, int threads) {
  CEPE_CHECK(source.device() == Device::CPU, "convert_weight: the source must be a CPU tensor");
  CEPE_CHECK(target != DType::I32 && source.dtype() != DType::I32,
             "convert_weight: I32 tensors are not weights");
  if (source.dtype() == target) return source;
  CEPE_CHECK(source.rank() >= 1,
             "convert_weight: a scalar cannot be converted to " << dtype_name(target));
  const int64_t width = source.dim(-1);
  const int64_t rows = width ? source.numel() / width : 0;
  // A packed target is quantized 16 rows at a time into `group` and packed from there, so no
  // row-major copy of the matrix is ever made.
  const bool packed = target == DType::Q8_0x16 || target == DType::Q4_0x16;
  const DType row_type = packed ? dtype_unpacked(target) : target;
  CEPE_CHECK(!packed || source.rank() == 2,
             "convert_weight: only a matrix can be packed, got " << source.shape_string());
  const int64_t packed_rows = packed ? rows / kPackRows * kPackRows : 0;
  Tensor out = Tensor::empty_long_lived(source.shape(), target);
  const size_t in_row = dtype_row_bytes(source.dtype(), width);
  const size_t out_row = dtype_row_bytes(row_type, width);
  const char* src = static_cast<const char*>(source.raw());
  char* dst = static_cast<char*>(out.raw());
  // Threads take contiguous runs of whole 16-row groups (the last one the tail), so each packs
  // its own groups; every row converts the same way on any thread.
  const int64_t groups = (rows + kPackRows - 1) / kPackRows;
  run_on_threads(static_cast<int>(std::min<int64_t>(threads, groups)), [&](int t, int nt) {
    const int64_t r0 = std::min(rows, groups * t / nt * kPackRows);
    const int64_t r1 = std::min(rows, groups * (t + 1) / nt * kPackRows);
    std::vector<char> group(packed ? kPackRows * out_row : 0);
    std::vector<float> row(static_cast<size_t>(width));
    // The source's pages are dropped every kReleaseBytes as rows are consumed.
    size_t released = static_cast<size_t>(r0) * in_row;
    for (int64_t r = r0; r < r1; ++r) {
      const size_t consumed = static_cast<size_t>(r) * in_row;
      if (consumed - released >= kReleaseBytes) {
        release_file_pages(source, released, consumed);
        released = consumed;
      }
      dequantize_row_ref(src + r * in_row, source.dtype(), row.data(), width);
      void* o = r < packed_rows ? group.data() + (r % kPackRows) * out_row : dst + r * out_row;
      switch (row_type) {
        case DType::Q8_0:
          quantize_row_q8_0_ref(row.data(), static_cast<BlockQ8_0*>(o), width);
          break;
        case DType::Q4_0:
          quantize_row_q4_0_ref(row.data(), static_cast<BlockQ4_0*>(o), width);
          break;
        default:
          convert_from_f32(row.data(), o, target, static_cast<size_t>(width));
      }
      if (r < packed_rows && r % kPackRows == kPackRows - 1)
        pack_group(group.data(), row_type, (width + 31) / 32, r / kPackRows, dst);
    }
    release_file_pages(source, released, static_cast<size_t>(r1) * in_row);
  });
  release_file_pages(source);  // the pages astride two threads' shares
  return out;
}

}  // namespace cepe
