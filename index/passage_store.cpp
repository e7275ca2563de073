#include "index/passage_store.h"

#include <cstddef>
#include <cstring>
#include <limits>

#include "common/error.h"

namespace cepe::index {

namespace {
constexpr char kMagic[8] = {'C', 'E', 'P', 'E', 'P', 'S', 'G', '\0'};
constexpr uint32_t kHeaderSize = 64;

struct Header {
  char magic[8];
  uint32_t version;
  uint32_t header_size;
  uint64_t count;
  uint64_t data_size;
  uint64_t offsets_pos;
  uint64_t data_checksum;
  uint64_t reserved;
  uint64_t header_checksum;
};
static_assert(sizeof(Header) == kHeaderSize);

uint64_t header_checksum(const Header& h) {
  return hash64(
      std::string_view(reinterpret_cast<const char*>(&h), offsetof(Header, header_checksum)),
      0x48445221);
}

uint64_t read_u64(const char* p) {
  uint64_t v;
  std::memcpy(&v, p, 8);
  return v;
}

uint32_t read_u32(const char* p) {
  uint32_t v;
  std::memcpy(&v, p, 4);
  return v;
}
}  // namespace

PassageStoreWriter::PassageStoreWriter(const std::filesystem::path& path)
    : out_(path), offsets_{0}, checksum_(0x50534731) {
  Header placeholder{};
  out_.write(&placeholder, sizeof placeholder);
}

uint64_t PassageStoreWriter::add(std::string_view id, std::string_view title,
                                 std::string_view text) {
  constexpr size_t kMax = std::numeric_limits<uint32_t>::max();
  CEPE_CHECK(id.size() <= kMax && title.size() <= kMax, "passage id or title too long");
  const uint32_t lens[2] = {static_cast<uint32_t>(id.size()), static_cast<uint32_t>(title.size())};
  // The record is hashed whole so that the checksum is independent of buffering.
  std::string record;
  record.reserve(8 + id.size() + title.size() + text.size());
  record.append(reinterpret_cast<const char*>(lens), 8);
  record.append(id);
  record.append(title);
  record.append(text);
  checksum_.update_string(record);
  out_.write(record);
  offsets_.push_back(offsets_.back() + record.size());
  return offsets_.size() - 2;
}

void PassageStoreWriter::finish() {
  Header h{};
  std::memcpy(h.magic, kMagic, 8);
  h.version = kPassageStoreVersion;
  h.header_size = kHeaderSize;
  h.count = count();
  h.data_size = offsets_.back();
  const uint64_t pad = (8 - (out_.size() % 8)) % 8;
  const char zeros[8] = {};
  out_.write(zeros, pad);
  h.offsets_pos = out_.size();
  out_.write(offsets_.data(), offsets_.size() * sizeof(uint64_t));
  Hasher all = checksum_;
  all.update(offsets_.data(), offsets_.size() * sizeof(uint64_t));
  h.data_checksum = all.digest();
  h.header_checksum = header_checksum(h);
  out_.write_at(0, &h, sizeof h);
  out_.commit();
}

PassageStore::PassageStore(const std::filesystem::path& path)
    : file_(std::make_shared<MappedFile>(path)) {
  const std::string name = path.string();
  CEPE_CHECK(file_->size() >= kHeaderSize, name << ": truncated passage store (" << file_->size()
                                                << " bytes, header needs " << kHeaderSize << ")");
  Header h;
  std::memcpy(&h, file_->data(), sizeof h);
  CEPE_CHECK(std::memcmp(h.magic, kMagic, 8) == 0,
             name << ": not a CEPE passage store (bad magic)");
  CEPE_CHECK(h.version == kPassageStoreVersion,
             name << ": passage store version " << h.version << " is not supported (expected "
                  << kPassageStoreVersion << "); rebuild the index");
  CEPE_CHECK(h.header_size == kHeaderSize && h.header_checksum == header_checksum(h),
             name << ": corrupt passage store header (checksum mismatch)");
  // Every size is checked before it is used in arithmetic: a header claiming 2^61-1 passages (its
  // checksum recomputed by whoever forged it) must fail here, not wrap around and pass.
  const uint64_t file_size = file_->size();
  CEPE_CHECK(h.data_size <= file_size - kHeaderSize, name << ": truncated passage store ("
                                                          << file_size << " bytes, header says "
                                                          << h.data_size << " bytes of data)");
  CEPE_CHECK(h.offsets_pos >= kHeaderSize + h.data_size && h.offsets_pos % 8 == 0 &&
                 h.offsets_pos <= file_size,
             name << ": corrupt passage store header (offsets at " << h.offsets_pos << ")");
  const uint64_t table_room = (file_size - h.offsets_pos) / sizeof(uint64_t);
  CEPE_CHECK(h.count < table_room, name << ": truncated passage store (header says " << h.count
                                        << " passages, the file has room for "
                                        << (table_room > 0 ? table_room - 1 : 0) << ")");
  const uint64_t expected = h.offsets_pos + (h.count + 1) * sizeof(uint64_t);
  CEPE_CHECK(file_size == expected, name << ": passage store has " << file_size - expected
                                         << " unexpected trailing bytes");
  count_ = h.count;
  data_size_ = h.data_size;
  checksum_ = h.data_checksum;
  data_ = file_->data() + kHeaderSize;
  offsets_ = file_->data() + h.offsets_pos;
  CEPE_CHECK(read_u64(offsets_) == 0 && read_u64(offsets_ + 8 * count_) == data_size_,
             name << ": corrupt passage store (offset table does not span the data)");
}

PassageView PassageStore::get(uint64_t row) const {
  CEPE_CHECK(row < count_, path().string() << ": passage row " << row << " out of range (store has "
                                           << count_ << ")");
  const uint64_t begin = read_u64(offsets_ + 8 * row);
  const uint64_t end = read_u64(offsets_ + 8 * (row + 1));
  // Checked on every read: a corrupt offset must not turn into an out-of-bounds view.
  CEPE_CHECK(begin <= end && end <= data_size_ && end - begin >= 8,
             path().string() << ": corrupt passage store (record " << row << " has bad offsets)");
  const char* p = data_ + begin;
  const uint64_t id_len = read_u32(p);
  const uint64_t title_len = read_u32(p + 4);
  CEPE_CHECK(8 + id_len + title_len <= end - begin,
             path().string() << ": corrupt passage store (record " << row << " has bad lengths)");
  PassageView v;
  v.id = std::string_view(p + 8, id_len);
  v.title = std::string_view(p + 8 + id_len, title_len);
  v.text = std::string_view(p + 8 + id_len + title_len, end - begin - 8 - id_len - title_len);
  return v;
}

void PassageStore::verify() const {
  Hasher h(0x50534731);
  for (uint64_t row = 0; row < count_; ++row) {
    const uint64_t begin = read_u64(offsets_ + 8 * row);
    const uint64_t end = read_u64(offsets_ + 8 * (row + 1));
    CEPE_CHECK(begin <= end && end <= data_size_,
               path().string() << ": corrupt passage store (record " << row << " has bad offsets)");
    h.update_string(std::string_view(data_ + begin, end - begin));
  }
  h.update(offsets_, (count_ + 1) * sizeof(uint64_t));
  CEPE_CHECK(h.digest() == checksum_,
             path().string() << ": passage store checksum mismatch (the file is corrupt)");
}

}  // namespace cepe::index
