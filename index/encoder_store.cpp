#include "index/encoder_store.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstddef>
#include <cstring>
#include <sstream>

#include "common/error.h"
#include "common/hash.h"
#include "engine/dtype.h"
#include "engine/safetensors.h"

namespace cepe::index {

namespace fs = std::filesystem;

namespace {

constexpr char kMagic[8] = {'C', 'E', 'P', 'E', 'E', 'N', 'C', '\0'};
// Version 1: States stores (their bytes are unchanged since); version 2: any layout, the header
// extended after header_checksum.
constexpr uint32_t kVersion = 1;
constexpr uint32_t kVersionKV = 2;
constexpr uint64_t kHeaderBytes = 4096;
constexpr uint64_t kTableEntry = 24;  // u64 offset, u32 tokens, u32 reserved, u64 token hash
constexpr uint64_t kIdEntry = 16;     // u64 id hash, u64 row
constexpr uint64_t kRowAlign = 64;
constexpr int64_t kQ8Block = 32;
// Bump when the chunk text or tokenisation rule changes (qa::encoder_chunk_ids): stores built
// by an older rule then no longer match.
constexpr uint64_t kChunkRuleVersion = 1;

struct Header {
  char magic[8];
  uint32_t version;
  uint32_t dtype;
  uint64_t width;
  uint64_t count;
  uint64_t chunk_tokens;
  uint64_t weights_hash;
  uint64_t config_hash;
  uint64_t tokenizer_hash;
  uint64_t table_pos;
  uint64_t ids_pos;
  uint64_t data_pos;
  uint64_t data_bytes;
  uint64_t total_tokens;
  uint64_t data_checksum;
  uint64_t header_checksum;
  // Version 2 (zero in version 1 files):
  uint32_t layout;
  uint32_t reserved;
  uint64_t cross_weights;
  uint64_t cross_layers;
  uint64_t kv_width;
  uint64_t extension_checksum;
};

uint64_t header_checksum(const Header& h) {
  return hash64(
      std::string_view(reinterpret_cast<const char*>(&h), offsetof(Header, header_checksum)),
      0x454e4348);
}

uint64_t extension_checksum(const Header& h) {
  const size_t begin = offsetof(Header, layout);
  return hash64(std::string_view(reinterpret_cast<const char*>(&h) + begin,
                                 offsetof(Header, extension_checksum) - begin),
                0x45585432);
}

uint64_t align_up(uint64_t v, uint64_t a) {
  return (v + a - 1) / a * a;
}

std::string errno_text() {
  return std::strerror(errno);
}

std::string hex64(uint64_t v) {
  char buf[17];
  std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(v));
  return buf;
}

template <typename T>
T load(const char* p) {
  T v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

// Feeds one checkpoint tensor into a weights fingerprint: name, dtype, shape, bytes.
void hash_tensor(Hasher& h, const std::string& name, const Tensor& t) {
  h.update_string(name);
  h.update_u64(static_cast<uint64_t>(t.dtype()));
  for (int64_t d : t.shape()) h.update_u64(static_cast<uint64_t>(d));
  h.update_u64(mix64(hash64(std::string_view(static_cast<const char*>(t.raw()), t.nbytes()))));
}

uint64_t data_checksum(const char* data, uint64_t n) {
  Hasher h(0x44415441);
  h.update(data, n);
  return h.digest();
}

void write_all(int fd, const void* data, size_t n, const fs::path& path) {
  const char* p = static_cast<const char*>(data);
  while (n > 0) {
    const ssize_t w = ::write(fd, p, n);
    if (w < 0 && errno == EINTR) continue;
    CEPE_CHECK(w > 0, "cannot write " << path.string() << ": " << errno_text());
    p += w;
    n -= static_cast<size_t>(w);
  }
}

void pwrite_all(int fd, const void* data, size_t n, uint64_t offset, const fs::path& path) {
  const char* p = static_cast<const char*>(data);
  while (n > 0) {
    const ssize_t w = ::pwrite(fd, p, n, static_cast<off_t>(offset));
    if (w < 0 && errno == EINTR) continue;
    CEPE_CHECK(w > 0, "cannot write " << path.string() << ": " << errno_text());
    p += w;
    n -= static_cast<size_t>(w);
    offset += static_cast<uint64_t>(w);
  }
}

}  // namespace

const char* store_layout_name(StoreLayout l) {
  return l == StoreLayout::CrossKV ? "kv" : "states";
}

StoreLayout parse_store_layout(const std::string& name, const std::string& what) {
  if (name == "states") return StoreLayout::States;
  if (name == "kv") return StoreLayout::CrossKV;
  CEPE_THROW(what << ": '" << name << "' is not a store layout (states or kv)");
}

size_t EncoderFingerprint::token_bytes() const {
  return state_row_bytes(dtype, row_width()) * static_cast<size_t>(rows_per_token());
}

const char* state_dtype_name(StateDType t) {
  switch (t) {
    case StateDType::F32:
      return "f32";
    case StateDType::BF16:
      return "bf16";
    case StateDType::F16:
      return "f16";
    case StateDType::Q8_0:
      return "q8_0";
  }
  return "?";
}

StateDType parse_state_dtype(const std::string& name, const std::string& what) {
  for (StateDType t : {StateDType::F32, StateDType::BF16, StateDType::F16, StateDType::Q8_0})
    if (name == state_dtype_name(t)) return t;
  CEPE_THROW(what << ": '" << name << "' is not a state dtype (f32, bf16, f16 or q8_0)");
}

size_t state_row_bytes(StateDType t, int64_t width) {
  switch (t) {
    case StateDType::F32:
      return static_cast<size_t>(width) * 4;
    case StateDType::BF16:
    case StateDType::F16:
      return static_cast<size_t>(width) * 2;
    case StateDType::Q8_0:  // a last, shorter block when width is not a multiple of 32
      return static_cast<size_t>((width + kQ8Block - 1) / kQ8Block) * 2 +
             static_cast<size_t>(width);
  }
  return 0;
}

void encode_state_row(const float* src, int64_t width, StateDType t, char* dst) {
  switch (t) {
    case StateDType::F32:
      std::memcpy(dst, src, static_cast<size_t>(width) * 4);
      return;
    case StateDType::BF16:
      convert_from_f32(src, dst, DType::BF16, static_cast<size_t>(width));
      return;
    case StateDType::F16:
      convert_from_f32(src, dst, DType::F16, static_cast<size_t>(width));
      return;
    case StateDType::Q8_0:
      for (int64_t b = 0; b * kQ8Block < width; ++b) {
        const float* x = src + b * kQ8Block;
        const int64_t len = std::min(kQ8Block, width - b * kQ8Block);
        char* out = dst + b * (2 + kQ8Block);
        float amax = 0.0f;
        for (int64_t i = 0; i < len; ++i) amax = std::max(amax, std::fabs(x[i]));
        // The scale is rounded to F16 first and the values quantised against the rounded one,
        // so the only error is the int8 rounding: |x - d q| <= d / 2.
        const uint16_t d16 = f32_to_f16(amax / 127.0f);
        const float d = f16_to_f32(d16);
        const float inv = d > 0.0f ? 1.0f / d : 0.0f;
        std::memcpy(out, &d16, 2);
        for (int64_t i = 0; i < len; ++i) {
          const float q = std::nearbyint(x[i] * inv);
          out[2 + i] = static_cast<char>(static_cast<int8_t>(std::clamp(q, -127.0f, 127.0f)));
        }
      }
      return;
  }
}

void decode_state_row(const char* src, int64_t width, StateDType t, float* dst) {
  switch (t) {
    case StateDType::F32:
      std::memcpy(dst, src, static_cast<size_t>(width) * 4);
      return;
    case StateDType::BF16:
      convert_to_f32(src, DType::BF16, dst, static_cast<size_t>(width));
      return;
    case StateDType::F16:
      convert_to_f32(src, DType::F16, dst, static_cast<size_t>(width));
      return;
    case StateDType::Q8_0:
      for (int64_t b = 0; b * kQ8Block < width; ++b) {
        const char* in = src + b * (2 + kQ8Block);
        const float d = f16_to_f32(load<uint16_t>(in));
        const int64_t len = std::min(kQ8Block, width - b * kQ8Block);
        for (int64_t i = 0; i < len; ++i)
          dst[b * kQ8Block + i] = d * static_cast<float>(static_cast<int8_t>(in[2 + i]));
      }
      return;
  }
}

uint64_t EncoderFingerprint::digest() const {
  Hasher h(0x46505254);
  h.update_u64(kChunkRuleVersion);
  h.update_u64(encoder_weights);
  h.update_u64(encoder_config);
  h.update_u64(tokenizer);
  h.update_u64(static_cast<uint64_t>(chunk_tokens));
  h.update_u64(static_cast<uint64_t>(width));
  h.update_u64(static_cast<uint64_t>(dtype));
  if (layout != StoreLayout::States) {  // States digests (and file names) predate the layouts
    h.update_u64(static_cast<uint64_t>(layout));
    h.update_u64(cross_weights);
    h.update_u64(static_cast<uint64_t>(cross_layers));
    h.update_u64(static_cast<uint64_t>(kv_width));
  }
  return h.digest();
}

std::string EncoderFingerprint::hex() const {
  return hex64(digest());
}

std::string EncoderFingerprint::model_mismatch(const EncoderFingerprint& other) const {
  std::vector<std::string> why;
  if (layout != other.layout)
    why.push_back(std::string("the ") + store_layout_name(layout) + " layout (this run looks for " +
                  store_layout_name(other.layout) + ")");
  if (encoder_weights != other.encoder_weights)
    why.push_back("other encoder weights (hash " + hex64(encoder_weights) + ", the model's " +
                  hex64(other.encoder_weights) + ")");
  if (encoder_config != other.encoder_config || width != other.width)
    why.push_back("another encoder config (hash " + hex64(encoder_config) + ", the model's " +
                  hex64(other.encoder_config) + ")");
  if (tokenizer != other.tokenizer)
    why.push_back("another tokenizer (tokenizer.model hash " + hex64(tokenizer) + ", the model's " +
                  hex64(other.tokenizer) + ")");
  if (chunk_tokens != other.chunk_tokens)
    why.push_back("chunk length " + std::to_string(chunk_tokens) + " tokens (this run uses " +
                  std::to_string(other.chunk_tokens) + ")");
  if (layout == other.layout && layout == StoreLayout::CrossKV &&
      (cross_weights != other.cross_weights || cross_layers != other.cross_layers ||
       kv_width != other.kv_width))
    why.push_back("other cross-attention K/V weights (hash " + hex64(cross_weights) +
                  ", the model's " + hex64(other.cross_weights) + ")");
  std::string out;
  for (size_t i = 0; i < why.size(); ++i) out += (i ? "; " : "") + why[i];
  return out;
}

EncoderFingerprint encoder_fingerprint(const fs::path& model_dir, const ModelConfig& config,
                                       int64_t chunk_tokens, StateDType dtype) {
  CEPE_CHECK(config.is_cepe() && config.encoder,
             model_dir.string() << ": the model has no CEPE encoder, so it has no encoder states");
  CEPE_CHECK(chunk_tokens > 0, "chunk length must be > 0 (got " << chunk_tokens << ")");
  EncoderFingerprint fp;
  fp.chunk_tokens = chunk_tokens;
  fp.width = config.encoder_hidden_size;
  fp.dtype = dtype;
  const LlamaConfig& c = *config.encoder;
  Hasher cfg(0x43464721);
  for (int64_t v :
       {int64_t(c.hidden_size), int64_t(c.intermediate_size), int64_t(c.num_attention_heads),
        int64_t(c.num_key_value_heads), int64_t(c.num_hidden_layers), int64_t(c.head_dim),
        int64_t(c.vocab_size), int64_t(c.max_position_embeddings), int64_t(c.rope_scaling),
        int64_t(config.encoder_hidden_size)})
    cfg.update_u64(static_cast<uint64_t>(v));
  for (double v : {double(c.rms_norm_eps), c.rope_theta, c.rope_scaling_factor}) {
    uint64_t bits;
    std::memcpy(&bits, &v, 8);
    cfg.update_u64(bits);
  }
  fp.encoder_config = cfg.digest();

  const WeightStore weights = WeightStore::open(model_dir);
  Hasher w(0x57474854);
  size_t tensors = 0;
  for (const std::string& name : weights.names()) {
    if (name.rfind("encoder.", 0) != 0) continue;
    hash_tensor(w, name, weights.get(name));
    ++tensors;
  }
  CEPE_CHECK(tensors > 0, model_dir.string() << ": no encoder.* tensors in the checkpoint");
  fp.encoder_weights = w.digest();

  const fs::path tok = model_dir / "tokenizer.model";
  CEPE_CHECK(fs::exists(tok), tok.string() << ": not found (the encoder-state fingerprint "
                                              "includes the tokenizer)");
  fp.tokenizer = hash64(read_whole_file(tok), 0x544f4b21);
  return fp;
}

EncoderFingerprint cross_kv_fingerprint(const fs::path& model_dir, const ModelConfig& config,
                                        int64_t chunk_tokens, StateDType dtype) {
  EncoderFingerprint fp = encoder_fingerprint(model_dir, config, chunk_tokens, dtype);
  const LlamaConfig& d = config.decoder;
  CEPE_CHECK(config.num_cross_attn_layers > 0,
             model_dir.string() << ": the model has no cross-attention layer, so no K/V to store");
  fp.layout = StoreLayout::CrossKV;
  fp.cross_layers = config.num_cross_attn_layers;
  fp.kv_width = int64_t(d.num_key_value_heads) * d.head_dim;
  const WeightStore weights = WeightStore::open(model_dir);
  Hasher w(0x434b5657);
  size_t tensors = 0;
  for (const std::string& name : weights.names()) {
    const bool kv = name.find(".cross_attn.k_proj.") != std::string::npos ||
                    name.find(".cross_attn.v_proj.") != std::string::npos;
    if (name.rfind("model.", 0) != 0 || !kv) continue;
    hash_tensor(w, name, weights.get(name));
    ++tensors;
  }
  CEPE_CHECK(tensors == static_cast<size_t>(2 * fp.cross_layers),
             model_dir.string() << ": " << tensors << " cross_attn.{k,v}_proj tensors for "
                                << fp.cross_layers << " cross-attention layers");
  fp.cross_weights = w.digest();
  return fp;
}

uint64_t chunk_token_hash(const std::vector<int32_t>& tokens) {
  Hasher h(0x544b4e53);
  h.update_u64(tokens.size());
  h.update(tokens.data(), tokens.size() * sizeof(int32_t));
  return h.digest();
}

uint64_t passage_id_hash(std::string_view id) {
  return hash64(id, 0x50494421);
}

fs::path encoder_store_dir(const fs::path& index_dir) {
  return index_dir / "encoder_states";
}

fs::path encoder_store_path(const fs::path& index_dir, const EncoderFingerprint& fp) {
  return encoder_store_dir(index_dir) / (fp.hex() + ".ces");
}

// ---------------------------------------------------------------------------------------------
// Writer

namespace {

constexpr std::string_view kCheckpointSuffix = ".partial.ckpt";

// A checkpoint's text up to the row count: "fp HEX list HEX rows " (then the count and a newline).
std::string checkpoint_prefix(const EncoderFingerprint& fp, uint64_t list_hash) {
  return "fp " + fp.hex() + " list " + hex64(list_hash) + " rows ";
}

}  // namespace

std::optional<StoreBuildCheckpoint> read_store_checkpoint(const fs::path& file) {
  const std::string name = file.filename().string();
  if (name.size() <= kCheckpointSuffix.size() || !name.ends_with(kCheckpointSuffix))
    return std::nullopt;
  std::string text;
  try {
    text = read_whole_file(file);
  } catch (const Error&) {
    return std::nullopt;
  }
  const size_t at = text.find(" rows ");
  if (text.rfind("fp ", 0) != 0 || at == std::string::npos) return std::nullopt;
  StoreBuildCheckpoint c;
  c.store = file.parent_path() / name.substr(0, name.size() - kCheckpointSuffix.size());
  c.rows = std::strtoull(text.c_str() + at + 6, nullptr, 10);
  return c;
}

EncoderStoreWriter::EncoderStoreWriter(const fs::path& path, const EncoderFingerprint& fp,
                                       std::vector<StoredPassageInfo> passages)
    : path_(path),
      partial_(path.string() + ".partial"),
      ckpt_(path.string() + std::string(kCheckpointSuffix)),
      fp_(fp),
      passages_(std::move(passages)) {
  CEPE_CHECK(fp_.width > 0 && fp_.row_width() > 0 && fp_.rows_per_token() > 0,
             "encoder store: width must be > 0");
  const uint64_t n = passages_.size();
  const size_t row_bytes = fp_.token_bytes();
  offsets_.resize(n + 1);
  uint64_t at = 0;
  Hasher list(0x4c495354);
  for (uint64_t i = 0; i < n; ++i) {
    CEPE_CHECK(passages_[i].tokens > 0, "encoder store: passage row " << i << " has no tokens");
    offsets_[i] = at;
    at = align_up(at + passages_[i].tokens * row_bytes, kRowAlign);
    list.update_u64(passages_[i].id_hash);
    list.update_u64(passages_[i].tokens);
    list.update_u64(passages_[i].token_hash);
  }
  offsets_[n] = at;
  data_bytes_ = at;
  list_hash_ = list.digest();
  data_pos_ = align_up(kHeaderBytes + n * kTableEntry + n * kIdEntry, 4096);

  fs::create_directories(path_.parent_path());
  // A build killed while writing its checkpoint leaves the checkpoint's temporary file behind.
  remove_stale_temps(ckpt_);
  // Resume when a checkpoint of this very build exists and the partial file holds its bytes.
  const std::string expect = checkpoint_prefix(fp_, list_hash_);
  uint64_t committed = 0;
  if (fs::exists(ckpt_) && fs::exists(partial_)) {
    const std::string text = read_whole_file(ckpt_);
    if (text.rfind(expect, 0) == 0) {
      const unsigned long long rows = std::strtoull(text.c_str() + expect.size(), nullptr, 10);
      if (rows <= n && fs::file_size(partial_) >= data_pos_ + offsets_[rows]) committed = rows;
    }
  }
  fd_ = ::open(partial_.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  CEPE_CHECK(fd_ >= 0, "cannot open " << partial_.string() << ": " << errno_text());
  // Bytes past the last commit may be torn: cut them (and start over without a checkpoint).
  const uint64_t keep = data_pos_ + offsets_[committed];
  CEPE_CHECK(::ftruncate(fd_, static_cast<off_t>(keep)) == 0,
             "cannot truncate " << partial_.string() << ": " << errno_text());
  if (committed == 0) {
    // Header, table and ids are written at finish(); the region stays zero until then.
    std::vector<char> zeros(static_cast<size_t>(data_pos_), 0);
    pwrite_all(fd_, zeros.data(), zeros.size(), 0, partial_);
  }
  CEPE_CHECK(::lseek(fd_, static_cast<off_t>(keep), SEEK_SET) >= 0,
             "cannot seek in " << partial_.string() << ": " << errno_text());
  rows_ = resumed_rows_ = committed;
}

EncoderStoreWriter::~EncoderStoreWriter() {
  if (fd_ >= 0) ::close(fd_);
}

void EncoderStoreWriter::append(const float* values, int64_t tokens) {
  CEPE_CHECK(rows_ < passages_.size(),
             "encoder store: more rows than the " << passages_.size() << " passages");
  CEPE_CHECK(tokens == passages_[rows_].tokens, "encoder store: row "
                                                    << rows_ << " has " << tokens << " states for "
                                                    << passages_[rows_].tokens << " tokens");
  const int64_t width = fp_.row_width();
  const size_t row_bytes = state_row_bytes(fp_.dtype, width);
  const uint64_t bytes = offsets_[rows_ + 1] - offsets_[rows_];
  row_buffer_.assign(static_cast<size_t>(bytes), 0);
  for (int64_t r = 0; r < tokens * fp_.rows_per_token(); ++r)
    encode_state_row(values + r * width, width, fp_.dtype, row_buffer_.data() + r * row_bytes);
  write_all(fd_, row_buffer_.data(), row_buffer_.size(), partial_);
  ++rows_;
}

void EncoderStoreWriter::append_stored(const EncoderStore& from, uint64_t row) {
  CEPE_CHECK(rows_ < passages_.size(),
             "encoder store: more rows than the " << passages_.size() << " passages");
  CEPE_CHECK(from.fingerprint().digest() == fp_.digest(),
             "encoder store: cannot copy rows of " << from.path().string()
                                                   << ": it was built with another fingerprint");
  const StoredPassageInfo& want = passages_[rows_];
  CEPE_CHECK(from.tokens(row) == want.tokens && from.token_hash(row) == want.token_hash,
             "encoder store: row " << row << " of " << from.path().string()
                                   << " holds another chunk than passage row " << rows_);
  const std::string_view bytes = from.raw_row(row);
  const uint64_t span = offsets_[rows_ + 1] - offsets_[rows_];
  row_buffer_.assign(static_cast<size_t>(span), 0);  // the padding to the next row stays zero
  std::memcpy(row_buffer_.data(), bytes.data(), bytes.size());
  write_all(fd_, row_buffer_.data(), row_buffer_.size(), partial_);
  ++rows_;
}

void EncoderStoreWriter::commit() {
  CEPE_CHECK(::fsync(fd_) == 0, "cannot fsync " << partial_.string() << ": " << errno_text());
  write_file_atomic(ckpt_, checkpoint_prefix(fp_, list_hash_) + std::to_string(rows_) + "\n");
}

void EncoderStoreWriter::finish() {
  const uint64_t n = passages_.size();
  CEPE_CHECK(rows_ == n, "encoder store: finish() after " << rows_ << " of " << n << " rows");
  CEPE_CHECK(::fsync(fd_) == 0, "cannot fsync " << partial_.string() << ": " << errno_text());
  // The data checksum is computed from the file, so a resumed build checks what is on disk.
  uint64_t checksum = 0;
  {
    MappedFile mapped(partial_);
    CEPE_CHECK(mapped.size() == data_pos_ + data_bytes_,
               partial_.string() << ": " << mapped.size() << " bytes, expected "
                                 << data_pos_ + data_bytes_);
    checksum = data_checksum(mapped.data() + data_pos_, data_bytes_);
  }
  std::vector<char> table(static_cast<size_t>(n * kTableEntry), 0);
  std::vector<std::pair<uint64_t, uint64_t>> ids(n);
  uint64_t total_tokens = 0;
  for (uint64_t i = 0; i < n; ++i) {
    char* e = table.data() + i * kTableEntry;
    std::memcpy(e, &offsets_[i], 8);
    std::memcpy(e + 8, &passages_[i].tokens, 4);
    std::memcpy(e + 16, &passages_[i].token_hash, 8);
    ids[i] = {passages_[i].id_hash, i};
    total_tokens += passages_[i].tokens;
  }
  std::sort(ids.begin(), ids.end());
  std::vector<char> id_bytes(static_cast<size_t>(n * kIdEntry));
  for (uint64_t i = 0; i < n; ++i) {
    std::memcpy(id_bytes.data() + i * kIdEntry, &ids[i].first, 8);
    std::memcpy(id_bytes.data() + i * kIdEntry + 8, &ids[i].second, 8);
  }
  Header h{};
  std::memcpy(h.magic, kMagic, 8);
  h.version = fp_.layout == StoreLayout::States ? kVersion : kVersionKV;
  h.dtype = static_cast<uint32_t>(fp_.dtype);
  h.width = static_cast<uint64_t>(fp_.width);
  h.count = n;
  h.chunk_tokens = static_cast<uint64_t>(fp_.chunk_tokens);
  h.weights_hash = fp_.encoder_weights;
  h.config_hash = fp_.encoder_config;
  h.tokenizer_hash = fp_.tokenizer;
  h.table_pos = kHeaderBytes;
  h.ids_pos = kHeaderBytes + n * kTableEntry;
  h.data_pos = data_pos_;
  h.data_bytes = data_bytes_;
  h.total_tokens = total_tokens;
  h.data_checksum = checksum;
  h.header_checksum = header_checksum(h);
  if (h.version == kVersionKV) {
    h.layout = static_cast<uint32_t>(fp_.layout);
    h.cross_weights = fp_.cross_weights;
    h.cross_layers = static_cast<uint64_t>(fp_.cross_layers);
    h.kv_width = static_cast<uint64_t>(fp_.kv_width);
    h.extension_checksum = extension_checksum(h);
  }
  if (!table.empty()) pwrite_all(fd_, table.data(), table.size(), h.table_pos, partial_);
  if (!id_bytes.empty()) pwrite_all(fd_, id_bytes.data(), id_bytes.size(), h.ids_pos, partial_);
  pwrite_all(fd_, &h, sizeof h, 0, partial_);
  CEPE_CHECK(::fsync(fd_) == 0, "cannot fsync " << partial_.string() << ": " << errno_text());
  ::close(fd_);
  fd_ = -1;
  std::error_code ec;
  fs::rename(partial_, path_, ec);
  CEPE_CHECK(!ec, "cannot rename " << partial_.string() << " to " << path_.string() << ": "
                                   << ec.message());
  fs::remove(ckpt_, ec);
  fsync_directory(path_.parent_path());
}

// ---------------------------------------------------------------------------------------------
// Reader

EncoderStore::EncoderStore(const fs::path& path) : file_(std::make_shared<MappedFile>(path)) {
  const std::string name = path.string();
  CEPE_CHECK(file_->size() >= kHeaderBytes,
             name << ": not an encoder-state store (" << file_->size() << " bytes)");
  const Header h = load<Header>(file_->data());
  CEPE_CHECK(std::memcmp(h.magic, kMagic, 8) == 0, name << ": not an encoder-state store");
  CEPE_CHECK(h.version == kVersion || h.version == kVersionKV,
             name << ": encoder-state store version " << h.version << ", this build reads "
                  << kVersion << " and " << kVersionKV);
  CEPE_CHECK(h.header_checksum == header_checksum(h), name << ": corrupt header (checksum)");
  if (h.version == kVersionKV) {
    CEPE_CHECK(h.extension_checksum == extension_checksum(h),
               name << ": corrupt header extension (checksum)");
    CEPE_CHECK(h.layout <= static_cast<uint32_t>(StoreLayout::CrossKV),
               name << ": unknown store layout " << h.layout);
    fp_.layout = static_cast<StoreLayout>(h.layout);
    fp_.cross_weights = h.cross_weights;
    CEPE_CHECK(
        h.cross_layers > 0 && h.cross_layers < 4096 && h.kv_width > 0 && h.kv_width < (1u << 20),
        name << ": implausible K/V shape (" << h.cross_layers << " layers x " << h.kv_width << ")");
    fp_.cross_layers = static_cast<int64_t>(h.cross_layers);
    fp_.kv_width = static_cast<int64_t>(h.kv_width);
  }
  CEPE_CHECK(h.dtype <= static_cast<uint32_t>(StateDType::Q8_0),
             name << ": unknown state dtype " << h.dtype);
  fp_.dtype = static_cast<StateDType>(h.dtype);
  CEPE_CHECK(h.width > 0 && h.width < (1u << 20), name << ": implausible width " << h.width);
  fp_.width = static_cast<int64_t>(h.width);
  fp_.chunk_tokens = static_cast<int64_t>(h.chunk_tokens);
  fp_.encoder_weights = h.weights_hash;
  fp_.encoder_config = h.config_hash;
  fp_.tokenizer = h.tokenizer_hash;
  count_ = h.count;
  CEPE_CHECK(count_ <= file_->size() / (kTableEntry + kIdEntry),
             name << ": header claims " << count_ << " passages, more than the file can hold");
  total_tokens_ = h.total_tokens;
  data_bytes_ = h.data_bytes;
  checksum_ = h.data_checksum;
  CEPE_CHECK(h.table_pos == kHeaderBytes && h.ids_pos == kHeaderBytes + count_ * kTableEntry &&
                 h.data_pos >= h.ids_pos + count_ * kIdEntry && h.data_pos % kRowAlign == 0 &&
                 h.data_pos + h.data_bytes == file_->size(),
             name << ": truncated or inconsistent (" << file_->size() << " bytes for " << count_
                  << " passages)");
  table_ = file_->data() + h.table_pos;
  ids_ = file_->data() + h.ids_pos;
  data_ = file_->data() + h.data_pos;
  // Every row must lie inside the data region, where the writer put it (on a kRowAlign boundary,
  // so rows read in place as F32 or F16 are aligned): checked once here, so reads need no checks.
  const size_t row_bytes = fp_.token_bytes();
  for (uint64_t r = 0; r < count_; ++r) {
    const char* e = table_ + r * kTableEntry;
    const uint64_t off = load<uint64_t>(e);
    const uint32_t tokens = load<uint32_t>(e + 8);
    CEPE_CHECK(off <= data_bytes_ && tokens <= (data_bytes_ - off) / row_bytes,
               name << ": passage row " << r << " lies outside the data");
    CEPE_CHECK(off % kRowAlign == 0, name << ": passage row " << r << " starts at offset " << off
                                          << ", not on a " << kRowAlign
                                          << "-byte boundary (corrupt table)");
  }
}

std::optional<uint64_t> EncoderStore::find(std::string_view id, uint32_t tokens,
                                           uint64_t token_hash) const {
  const uint64_t want = passage_id_hash(id);
  uint64_t lo = 0, hi = count_;
  while (lo < hi) {
    const uint64_t mid = lo + (hi - lo) / 2;
    if (load<uint64_t>(ids_ + mid * kIdEntry) < want)
      lo = mid + 1;
    else
      hi = mid;
  }
  // Several rows may share an id (or its hash): the one whose tokens match is the passage.
  for (uint64_t i = lo; i < count_ && load<uint64_t>(ids_ + i * kIdEntry) == want; ++i) {
    const uint64_t row = load<uint64_t>(ids_ + i * kIdEntry + 8);
    if (row >= count_) continue;
    const char* e = table_ + row * kTableEntry;
    if (load<uint32_t>(e + 8) == tokens && load<uint64_t>(e + 16) == token_hash) return row;
  }
  return std::nullopt;
}

uint32_t EncoderStore::tokens(uint64_t row) const {
  CEPE_CHECK(row < count_, path().string() << ": row " << row << " out of range");
  return load<uint32_t>(table_ + row * kTableEntry + 8);
}

uint64_t EncoderStore::token_hash(uint64_t row) const {
  CEPE_CHECK(row < count_, path().string() << ": row " << row << " out of range");
  return load<uint64_t>(table_ + row * kTableEntry + 16);
}

std::string_view EncoderStore::raw_row(uint64_t row) const {
  return {row_ptr(row), tokens(row) * fp_.token_bytes()};
}

const char* EncoderStore::row_ptr(uint64_t row) const {
  CEPE_CHECK(row < count_, path().string() << ": row " << row << " out of range");
  return data_ + load<uint64_t>(table_ + row * kTableEntry);
}

void EncoderStore::read(uint64_t row, float* dst) const {
  const char* p = row_ptr(row);
  const int64_t rows = int64_t(tokens(row)) * fp_.rows_per_token(), width = fp_.row_width();
  const size_t row_bytes = state_row_bytes(fp_.dtype, width);
  for (int64_t r = 0; r < rows; ++r)
    decode_state_row(p + r * row_bytes, width, fp_.dtype, dst + r * width);
}

const float* EncoderStore::f32_data(uint64_t row) const {
  if (fp_.dtype != StateDType::F32) return nullptr;
  return reinterpret_cast<const float*>(row_ptr(row));
}

const uint16_t* EncoderStore::f16_data(uint64_t row) const {
  if (fp_.dtype != StateDType::F16) return nullptr;
  return reinterpret_cast<const uint16_t*>(row_ptr(row));
}

void EncoderStore::verify() const {
  CEPE_CHECK(data_checksum(data_, data_bytes_) == checksum_,
             path().string() << ": data checksum mismatch (the file is corrupt)");
}

StoreLookup find_encoder_store(const fs::path& index_dir, const EncoderFingerprint& want,
                               const EncoderFingerprint* want_kv) {
  StoreLookup out;
  const fs::path dir = encoder_store_dir(index_dir);
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) return out;
  std::vector<fs::path> files;
  for (const auto& e : fs::directory_iterator(dir, ec))
    if (e.path().extension() == ".ces") files.push_back(e.path());
  std::sort(files.begin(), files.end());
  std::vector<std::shared_ptr<const EncoderStore>> matching;
  for (const fs::path& f : files) {
    std::shared_ptr<const EncoderStore> s;
    try {
      s = std::make_shared<const EncoderStore>(f);
    } catch (const Error& e) {
      out.rejected.push_back(e.message());
      continue;
    }
    const bool kv = s->fingerprint().layout == StoreLayout::CrossKV;
    if (kv && !want_kv) {
      out.rejected.push_back(f.string() +
                             ": a cross K/V store, which this run does not read "
                             "(CPU only)");
      continue;
    }
    const std::string why = s->fingerprint().model_mismatch(kv ? *want_kv : want);
    if (why.empty())
      matching.push_back(std::move(s));
    else
      out.rejected.push_back(f.string() + ": made with " + why);
  }
  // A K/V store wins (no projection per request), then the most exact dtype (StateDType's order).
  auto rank = [](const EncoderStore& s) {
    return std::make_pair(s.fingerprint().layout == StoreLayout::CrossKV ? 0 : 1,
                          static_cast<uint32_t>(s.fingerprint().dtype));
  };
  for (const auto& s : matching)
    if (!out.store || rank(*s) < rank(*out.store)) out.store = s;
  return out;
}

}  // namespace cepe::index
