#include "engine/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <rapidjson/document.h>
#include <rapidjson/stringbuffer.h>
#include <rapidjson/writer.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstring>
#include <limits>
#include <set>

#include "common/error.h"
#include "common/json.h"

namespace cepe {

// Tensor bytes are little-endian in the file and are handed out without conversion.
static_assert(std::endian::native == std::endian::little,
              "safetensors views need a little-endian host");

namespace fs = std::filesystem;

namespace {

// The reference implementation refuses headers above 100 MB; a larger length is a corrupt file,
// and refusing early avoids copying a huge bogus header before the JSON parser rejects it.
constexpr uint64_t kMaxHeaderBytes = 100'000'000;

// Element sizes of the safetensors dtypes we do not compute with. Knowing them lets a file that
// carries, say, an I64 `position_ids` buffer open and be validated; only asking for that tensor
// fails.
size_t foreign_dtype_size(const std::string& name) {
  static const std::map<std::string, size_t> sizes = {
      {"BOOL", 1}, {"U8", 1},  {"I8", 1},  {"F8_E5M2", 1}, {"F8_E4M3", 1}, {"F8_E8M0", 1},
      {"I16", 2},  {"U16", 2}, {"U32", 4}, {"I64", 8},     {"U64", 8},     {"F64", 8}};
  auto it = sizes.find(name);
  return it == sizes.end() ? 0 : it->second;
}

std::string errno_text() {
  return std::strerror(errno);
}

std::string path_text(const fs::path& p) {
  return p.string();
}

// JSON type names for error messages.
const char* json_type(const rapidjson::Value& v) {
  switch (v.GetType()) {
    case rapidjson::kNullType:
      return "null";
    case rapidjson::kFalseType:
    case rapidjson::kTrueType:
      return "a boolean";
    case rapidjson::kObjectType:
      return "an object";
    case rapidjson::kArrayType:
      return "an array";
    case rapidjson::kStringType:
      return "a string";
    case rapidjson::kNumberType:
      return "a number";
  }
  return "?";
}

// Owns the fd only until the mapping exists; the mapping does not need it.
struct Fd {
  int fd = -1;
  ~Fd() {
    if (fd >= 0) ::close(fd);
  }
};

}  // namespace

// ---------------------------------------------------------------------------------------------
// SafeTensorsFile

SafeTensorsFile::SafeTensorsFile(const fs::path& path) : path_(path) {
  const std::string where = path_text(path_);
  Fd f;
  f.fd = ::open(path_.c_str(), O_RDONLY | O_CLOEXEC);
  CEPE_CHECK(f.fd >= 0, "cannot open safetensors file " << where << ": " << errno_text());
  struct stat st {};
  CEPE_CHECK(::fstat(f.fd, &st) == 0, "cannot stat " << where << ": " << errno_text());
  CEPE_CHECK(S_ISREG(st.st_mode), where << " is not a regular file");
  file_size_ = static_cast<size_t>(st.st_size);
  CEPE_CHECK(file_size_ >= 8, where
                                  << ": file is " << file_size_
                                  << " bytes, too short for a safetensors header (8-byte length)");

  void* base = ::mmap(nullptr, file_size_, PROT_READ, MAP_PRIVATE, f.fd, 0);
  CEPE_CHECK(base != MAP_FAILED, "cannot mmap " << where << ": " << errno_text());
  const size_t map_size = file_size_;
  mapping_ = std::shared_ptr<void>(base, [map_size](void* p) { ::munmap(p, map_size); });
  const auto* bytes = static_cast<const unsigned char*>(base);

  uint64_t header_len = 0;
  for (int i = 7; i >= 0; --i) header_len = (header_len << 8) | bytes[i];
  CEPE_CHECK(header_len <= kMaxHeaderBytes, where << ": header length " << header_len
                                                  << " is absurd (limit " << kMaxHeaderBytes
                                                  << " bytes); not a safetensors file or corrupt");
  CEPE_CHECK(header_len <= file_size_ - 8, where << ": header length " << header_len
                                                 << " exceeds the file size (" << file_size_
                                                 << " bytes); truncated file?");
  CEPE_CHECK(header_len >= 2,
             where << ": header length " << header_len << " is too short for JSON");
  data_ = reinterpret_cast<const char*>(bytes) + 8 + header_len;
  data_size_ = file_size_ - 8 - header_len;

  // Parse a copy: the mapping is read-only and the JSON is not NUL-terminated.
  const std::string header(reinterpret_cast<const char*>(bytes) + 8, header_len);
  rapidjson::Document doc;
  parse_json_or_throw(header, &doc, where + ": header");
  CEPE_CHECK(doc.IsObject(), where << ": header must be a JSON object, found " << json_type(doc));

  std::vector<std::pair<std::pair<size_t, size_t>, std::string>> ranges;  // for the overlap check
  for (auto m = doc.MemberBegin(); m != doc.MemberEnd(); ++m) {
    const std::string name(m->name.GetString(), m->name.GetStringLength());
    const rapidjson::Value& v = m->value;
    if (name == "__metadata__") {
      CEPE_CHECK(v.IsObject(),
                 where << ": __metadata__ must be an object of strings, found " << json_type(v));
      for (auto kv = v.MemberBegin(); kv != v.MemberEnd(); ++kv) {
        const std::string key(kv->name.GetString(), kv->name.GetStringLength());
        CEPE_CHECK(kv->value.IsString(), where << ": __metadata__ entry '" << key
                                               << "' must be a string, found "
                                               << json_type(kv->value));
        metadata_[key] = std::string(kv->value.GetString(), kv->value.GetStringLength());
      }
      continue;
    }
    const std::string what = where + ": tensor '" + name + "'";
    CEPE_CHECK(!name.empty(), where << ": header has a tensor with an empty name");
    // RapidJSON keeps duplicate keys; a second entry would silently shadow the first.
    CEPE_CHECK(!entries_.count(name) && !unsupported_.count(name),
               what << " appears twice in the header");
    CEPE_CHECK(v.IsObject(), what << ": entry must be an object, found " << json_type(v));

    auto dt = v.FindMember("dtype");
    CEPE_CHECK(dt != v.MemberEnd(), what << ": missing \"dtype\"");
    CEPE_CHECK(dt->value.IsString(),
               what << ": \"dtype\" must be a string, found " << json_type(dt->value));
    const std::string dtype_str(dt->value.GetString(), dt->value.GetStringLength());

    auto sh = v.FindMember("shape");
    CEPE_CHECK(sh != v.MemberEnd(), what << ": missing \"shape\"");
    CEPE_CHECK(sh->value.IsArray(),
               what << ": \"shape\" must be an array, found " << json_type(sh->value));
    auto off = v.FindMember("data_offsets");
    CEPE_CHECK(off != v.MemberEnd(), what << ": missing \"data_offsets\"");
    CEPE_CHECK(off->value.IsArray() && off->value.Size() == 2,
               what << ": \"data_offsets\" must be an array [begin, end]");

    TensorEntry e;
    size_t elem_size = 0;
    const bool supported = parse_dtype(dtype_str, &e.dtype);
    if (supported) {
      elem_size = dtype_size(e.dtype);
    } else {
      elem_size = foreign_dtype_size(dtype_str);
      CEPE_CHECK(elem_size != 0, what << ": dtype " << dtype_str
                                      << " not supported (supported: F32, F16, BF16, I32)");
    }

    // Overflow-safe element count: every dim fits int64 (Tensor's type) and so does the product.
    uint64_t numel = 1;
    for (const auto& d : sh->value.GetArray()) {
      CEPE_CHECK(d.IsInt64() || d.IsUint64(), what << ": shape entries must be integers");
      CEPE_CHECK(!d.IsInt64() || d.GetInt64() >= 0,
                 what << ": negative dimension " << d.GetInt64() << " in shape");
      CEPE_CHECK(d.IsInt64(), what << ": dimension " << d.GetUint64() << " is too large");
      const auto dim = static_cast<uint64_t>(d.GetInt64());
      e.shape.push_back(d.GetInt64());
      CEPE_CHECK(
          !__builtin_mul_overflow(numel, dim, &numel) &&
              numel <= static_cast<uint64_t>(std::numeric_limits<int64_t>::max()),
          what << ": shape " << shape_to_string(e.shape) << "... overflows the element count");
    }
    uint64_t nbytes = 0;
    CEPE_CHECK(!__builtin_mul_overflow(numel, static_cast<uint64_t>(elem_size), &nbytes),
               what << ": shape " << shape_to_string(e.shape) << " of " << dtype_str
                    << " overflows the byte count");

    for (const auto& o : off->value.GetArray())
      CEPE_CHECK(o.IsUint64(), what << ": data_offsets must be non-negative integers");
    const uint64_t b = off->value[0].GetUint64(), en = off->value[1].GetUint64();
    CEPE_CHECK(b <= en, what << ": data_offsets [" << b << ", " << en << "] are reversed");
    CEPE_CHECK(en <= data_size_, what << ": data_offsets [" << b << ", " << en
                                      << "] exceed the data section (" << data_size_
                                      << " bytes); truncated file?");
    CEPE_CHECK(en - b == nbytes, what << ": data_offsets [" << b << ", " << en << "] hold "
                                      << en - b << " bytes but shape " << shape_to_string(e.shape)
                                      << " of " << dtype_str << " needs " << nbytes);
    e.begin = static_cast<size_t>(b);
    e.end = static_cast<size_t>(en);
    ranges.push_back({{e.begin, e.end}, name});
    if (supported) {
      entries_.emplace(name, std::move(e));
    } else {
      unsupported_.emplace(name, dtype_str);
    }
  }

  // Overlapping tensors only arise from a corrupt or hand-edited header; catch them here rather
  // than let two weights silently share bytes.
  std::sort(ranges.begin(), ranges.end());
  size_t reach = 0;  // furthest end among the non-empty ranges seen so far
  const std::string* reach_name = nullptr;
  for (const auto& [range, name] : ranges) {
    if (range.first == range.second) continue;  // empty tensors overlap nothing
    CEPE_CHECK(!reach_name || range.first >= reach, where << ": tensors '" << *reach_name
                                                          << "' and '" << name
                                                          << "' overlap in the data section");
    reach = range.second;
    reach_name = &name;
  }
}

SafeTensorsFile::~SafeTensorsFile() = default;

Tensor SafeTensorsFile::view(const std::string& name) const {
  auto it = entries_.find(name);
  if (it == entries_.end()) {
    auto u = unsupported_.find(name);
    CEPE_CHECK(u == unsupported_.end(),
               "tensor '" << name << "' in " << path_text(path_) << ": dtype " << u->second
                          << " not supported (supported: F32, F16, BF16, I32)");
    CEPE_THROW("tensor '" << name << "' not found in " << path_text(path_));
  }
  const TensorEntry& e = it->second;
  const char* p = data_ + e.begin;
  // The format only promises 8-byte alignment of the data section when writers pad the header, and
  // a tensor following an odd-sized one of a narrower dtype can start anywhere. Dereferencing a
  // misaligned float* is undefined behaviour and breaks vectorised kernels, so such a tensor is
  // copied into aligned memory instead of viewed.
  if (reinterpret_cast<uintptr_t>(p) % dtype_size(e.dtype) != 0) {
    Tensor t = Tensor::empty(e.shape, e.dtype);
    if (t.nbytes()) std::memcpy(t.raw(), p, t.nbytes());
    return t;
  }
  // The mapping is PROT_READ: views are read-only, and a write through one faults.
  Tensor t = Tensor::wrap(const_cast<char*>(p), e.shape, e.dtype, Device::CPU, mapping_);
  t.set_file_backed(true);  // a PROT_READ mapping: dropped pages are read back from the file
  return t;
}

// ---------------------------------------------------------------------------------------------
// WeightStore

namespace {

constexpr const char* kSingleFile = "model.safetensors";
constexpr const char* kIndexFile = "model.safetensors.index.json";

std::string read_text_file(const fs::path& path) {
  Fd f;
  f.fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  CEPE_CHECK(f.fd >= 0, "cannot open " << path_text(path) << ": " << errno_text());
  std::string out;
  char buf[1 << 16];
  for (;;) {
    const ssize_t n = ::read(f.fd, buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    CEPE_CHECK(n >= 0, "cannot read " << path_text(path) << ": " << errno_text());
    if (n == 0) break;
    out.append(buf, static_cast<size_t>(n));
  }
  return out;
}

// Shard names come from a downloaded file; keep them inside the model directory.
void check_shard_name(const std::string& shard, const std::string& tensor, const fs::path& index) {
  CEPE_CHECK(!shard.empty(), path_text(index)
                                 << ": tensor '" << tensor << "' maps to an empty file name");
  const fs::path p(shard);
  bool escapes = p.is_absolute();
  for (const auto& part : p) escapes = escapes || part == "..";
  CEPE_CHECK(!escapes, path_text(index) << ": tensor '" << tensor << "' maps to '" << shard
                                        << "', outside the model directory");
}

}  // namespace

WeightStore WeightStore::open(const fs::path& model_dir) {
  WeightStore ws;
  ws.location_ = model_dir;
  auto add_file = [&ws](std::shared_ptr<SafeTensorsFile> file) {
    const size_t pos = ws.files_.size();
    for (const auto& [name, entry] : file->entries()) {
      auto [it, inserted] = ws.index_.emplace(name, pos);
      CEPE_CHECK(inserted, "tensor '" << name << "' is in both "
                                      << path_text(ws.files_[it->second]->path()) << " and "
                                      << path_text(file->path()));
    }
    ws.files_.push_back(std::move(file));
  };

  std::error_code ec;
  if (fs::is_regular_file(model_dir, ec)) {
    add_file(std::make_shared<SafeTensorsFile>(model_dir));
    return ws;
  }
  CEPE_CHECK(fs::is_directory(model_dir, ec),
             "model directory " << path_text(model_dir) << " does not exist or is not a directory");

  const fs::path index_path = model_dir / kIndexFile;
  if (fs::exists(index_path, ec)) {
    const std::string text = read_text_file(index_path);
    rapidjson::Document doc;
    parse_json_or_throw(text, &doc, path_text(index_path));
    CEPE_CHECK(doc.IsObject(), path_text(index_path) << ": must be a JSON object");
    auto wm = doc.FindMember("weight_map");
    CEPE_CHECK(wm != doc.MemberEnd() && wm->value.IsObject(),
               path_text(index_path) << ": missing \"weight_map\" object");
    CEPE_CHECK(wm->value.MemberCount() > 0, path_text(index_path) << ": \"weight_map\" is empty");

    // Open each shard once, in first-mention order, then check the index against the shards.
    std::map<std::string, size_t> shard_pos;
    std::vector<std::pair<std::string, std::string>> listed;  // tensor -> shard
    for (auto m = wm->value.MemberBegin(); m != wm->value.MemberEnd(); ++m) {
      const std::string tensor(m->name.GetString(), m->name.GetStringLength());
      CEPE_CHECK(m->value.IsString(), path_text(index_path) << ": weight_map entry for tensor '"
                                                            << tensor << "' must be a file name");
      const std::string shard(m->value.GetString(), m->value.GetStringLength());
      check_shard_name(shard, tensor, index_path);
      listed.emplace_back(tensor, shard);
      if (!shard_pos.count(shard)) {
        const fs::path shard_path = model_dir / shard;
        CEPE_CHECK(fs::exists(shard_path, ec), path_text(index_path)
                                                   << " lists shard " << shard << " (for tensor '"
                                                   << tensor << "') but " << path_text(shard_path)
                                                   << " does not exist");
        shard_pos[shard] = ws.files_.size();
        add_file(std::make_shared<SafeTensorsFile>(shard_path));
      }
    }
    for (const auto& [tensor, shard] : listed) {
      const auto& file = ws.files_[shard_pos.at(shard)];
      if (file->contains(tensor)) continue;
      // A tensor of an unsupported dtype is present; asking for it fails later with that reason.
      if (file->unsupported().count(tensor)) continue;
      auto it = ws.index_.find(tensor);
      CEPE_THROW("tensor '" << tensor << "' is listed in " << path_text(index_path) << " under "
                            << shard << " but is absent from " << path_text(file->path())
                            << (it != ws.index_.end()
                                    ? " (found in " + path_text(ws.files_[it->second]->path()) + ")"
                                    : std::string()));
    }
    return ws;
  }

  const fs::path single = model_dir / kSingleFile;
  if (fs::exists(single, ec)) {
    add_file(std::make_shared<SafeTensorsFile>(single));
    return ws;
  }
  CEPE_THROW("no " << kSingleFile << " or " << kIndexFile << " in " << path_text(model_dir));
}

bool WeightStore::contains(const std::string& name) const {
  return index_.count(name) != 0;
}

void WeightStore::throw_missing(const std::string& name) const {
  for (const auto& f : files_) {
    auto u = f->unsupported().find(name);
    CEPE_CHECK(u == f->unsupported().end(),
               "tensor '" << name << "' in " << path_text(f->path()) << ": dtype " << u->second
                          << " not supported (supported: F32, F16, BF16, I32)");
  }
  std::string checked;
  const size_t shown = std::min<size_t>(files_.size(), 4);
  for (size_t i = 0; i < shown; ++i) {
    if (i) checked += ", ";
    checked += files_[i]->path().filename().string();
  }
  if (files_.size() > shown) checked += " and " + std::to_string(files_.size() - shown) + " more";
  // A checkpoint saved from a wrapper module often differs only by a leading "model." or similar.
  std::string hint;
  for (const auto& [stored, pos] : index_) {
    auto ends_with = [](const std::string& s, const std::string& suffix) {
      return s.size() > suffix.size() &&
             s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0 &&
             s[s.size() - suffix.size() - 1] == '.';
    };
    if (ends_with(stored, name) || ends_with(name, stored)) {
      hint = "; did you mean '" + stored + "'?";
      break;
    }
  }
  CEPE_THROW("tensor '" << name << "' not found in " << path_text(location_) << " (checked "
                        << checked << ")" << hint);
}

Tensor WeightStore::get(const std::string& name) const {
  auto it = index_.find(name);
  if (it == index_.end()) throw_missing(name);
  return files_[it->second]->view(name);
}

Tensor WeightStore::get(const std::string& name, const std::vector<int64_t>& expected_shape) const {
  auto it = index_.find(name);
  if (it == index_.end()) throw_missing(name);
  const SafeTensorsFile& file = *files_[it->second];
  const TensorEntry& e = file.entries().at(name);
  CEPE_CHECK(e.shape == expected_shape, "tensor '" << name << "' in " << path_text(file.path())
                                                   << " has shape " << shape_to_string(e.shape)
                                                   << ", expected "
                                                   << shape_to_string(expected_shape));
  return file.view(name);
}

fs::path WeightStore::file_of(const std::string& name) const {
  auto it = index_.find(name);
  if (it == index_.end()) throw_missing(name);
  return files_[it->second]->path();
}

std::vector<std::string> WeightStore::names() const {
  std::vector<std::string> out;
  out.reserve(index_.size());
  for (const auto& [name, pos] : index_) out.push_back(name);
  return out;
}

size_t WeightStore::total_bytes() const {
  size_t total = 0;
  for (const auto& f : files_)
    for (const auto& [name, e] : f->entries()) total += e.end - e.begin;
  return total;
}

// ---------------------------------------------------------------------------------------------
// write_safetensors

namespace {

void write_all(int fd, const char* p, size_t n, const fs::path& tmp) {
  while (n > 0) {
    const ssize_t w = ::write(fd, p, n);
    if (w < 0 && errno == EINTR) continue;
    CEPE_CHECK(w > 0, "cannot write " << path_text(tmp) << ": " << errno_text());
    p += w;
    n -= static_cast<size_t>(w);
  }
}

}  // namespace

void write_safetensors(const fs::path& path,
                       const std::vector<std::pair<std::string, Tensor>>& tensors,
                       const std::map<std::string, std::string>& metadata) {
  std::vector<SafeTensorsEntry> entries;
  entries.reserve(tensors.size());
  for (const auto& [name, t] : tensors)
    entries.push_back({name, t.dtype(), t.shape(), [&t = t] { return t; }});
  write_safetensors_streamed(path, entries, metadata);
}

void write_safetensors_streamed(const fs::path& path, const std::vector<SafeTensorsEntry>& entries,
                                const std::map<std::string, std::string>& metadata,
                                const std::function<void(size_t)>& written) {
  const std::string where = path_text(path);
  for (const SafeTensorsEntry& e : entries)
    CEPE_CHECK(!dtype_is_block(e.dtype), where << ": tensor '" << e.name << "' is "
                                               << dtype_name(e.dtype)
                                               << ", which safetensors cannot hold");
  std::set<std::string> seen;
  rapidjson::StringBuffer sb;
  rapidjson::Writer<rapidjson::StringBuffer> w(sb);
  w.StartObject();
  if (!metadata.empty()) {
    w.Key("__metadata__");
    w.StartObject();
    for (const auto& [k, v] : metadata) {
      w.Key(k.data(), static_cast<rapidjson::SizeType>(k.size()));
      w.String(v.data(), static_cast<rapidjson::SizeType>(v.size()));
    }
    w.EndObject();
  }
  uint64_t offset = 0;
  for (const SafeTensorsEntry& e : entries) {
    CEPE_CHECK(!e.name.empty() && e.name != "__metadata__",
               "cannot write " << where << ": invalid tensor name '" << e.name << "'");
    CEPE_CHECK(seen.insert(e.name).second,
               "cannot write " << where << ": tensor '" << e.name << "' given twice");
    int64_t numel = 1;
    for (int64_t d : e.shape) {
      CEPE_CHECK(d >= 0, "cannot write " << where << ": tensor '" << e.name
                                         << "' has a negative dimension");
      numel *= d;
    }
    w.Key(e.name.data(), static_cast<rapidjson::SizeType>(e.name.size()));
    w.StartObject();
    w.Key("dtype");
    w.String(dtype_name(e.dtype));
    w.Key("shape");
    w.StartArray();
    for (int64_t d : e.shape) w.Int64(d);
    w.EndArray();
    w.Key("data_offsets");
    w.StartArray();
    w.Uint64(offset);
    offset += static_cast<uint64_t>(numel) * dtype_size(e.dtype);
    w.Uint64(offset);
    w.EndArray();
    w.EndObject();
  }
  w.EndObject();

  // Padding to 8 keeps the data section (and so every F32/I32 tensor) aligned when mapped.
  std::string header(sb.GetString(), sb.GetSize());
  header.append((8 - header.size() % 8) % 8, ' ');
  unsigned char len[8];
  for (int i = 0; i < 8; ++i)
    len[i] = static_cast<unsigned char>(uint64_t{header.size()} >> (8 * i));

  // Write beside the target and rename: readers never see a half-written checkpoint.
  const fs::path tmp = path.string() + ".tmp." + std::to_string(::getpid());
  Fd f;
  f.fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  CEPE_CHECK(f.fd >= 0,
             "cannot create " << path_text(tmp) << " (writing " << where << "): " << errno_text());
  try {
    write_all(f.fd, reinterpret_cast<const char*>(len), 8, tmp);
    write_all(f.fd, header.data(), header.size(), tmp);
    for (size_t i = 0; i < entries.size(); ++i) {
      const SafeTensorsEntry& e = entries[i];
      const Tensor t = e.produce();
      CEPE_CHECK(t.device() == Device::CPU, "cannot write " << where << ": tensor '" << e.name
                                                            << "' is on "
                                                            << device_name(t.device()));
      CEPE_CHECK(t.dtype() == e.dtype && t.shape() == e.shape,
                 "cannot write " << where << ": tensor '" << e.name << "' came out "
                                 << dtype_name(t.dtype()) << " " << t.shape_string()
                                 << ", its header entry says " << dtype_name(e.dtype));
      CEPE_CHECK(t.raw() != nullptr || t.numel() == 0,
                 "cannot write " << where << ": tensor '" << e.name << "' is undefined");
      if (t.nbytes()) write_all(f.fd, static_cast<const char*>(t.raw()), t.nbytes(), tmp);
      if (written) written(i);
    }
    CEPE_CHECK(::fsync(f.fd) == 0, "cannot fsync " << path_text(tmp) << ": " << errno_text());
    const int fd = f.fd;
    f.fd = -1;
    CEPE_CHECK(::close(fd) == 0, "cannot close " << path_text(tmp) << ": " << errno_text());
    CEPE_CHECK(::rename(tmp.c_str(), path.c_str()) == 0,
               "cannot rename " << path_text(tmp) << " to " << where << ": " << errno_text());
  } catch (...) {
    ::unlink(tmp.c_str());
    throw;
  }
  // Make the rename itself durable; failure here leaves a complete file, so it is not an error.
  const fs::path parent = path.has_parent_path() ? path.parent_path() : fs::path(".");
  Fd dir;
  dir.fd = ::open(parent.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dir.fd >= 0) ::fsync(dir.fd);
}

}  // namespace cepe
