#include "engine/llama2c.h"

#include <sentencepiece_processor.h>
#include <unistd.h>

#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <sstream>
#include <system_error>
#include <unordered_map>
#include <utility>

#include "common/error.h"
#include "common/fileio.h"
#include "common/utf8.h"
#include "engine/safetensors.h"
#include "engine/tensor.h"

namespace cepe {

namespace fs = std::filesystem;

namespace {

constexpr size_t kHeaderBytes = 7 * sizeof(int32_t);
// llama2.c's export.py writes this magic ("ak42") first in its versioned formats.
constexpr int32_t kVersionedMagic = 0x616b3432;
const char* const kSpaceSymbol = "\xE2\x96\x81";  // U+2581, sentencepiece's escaped space

std::string name_of(const fs::path& p) {
  return p.filename().string();
}

std::string errno_text() {
  return std::strerror(errno);
}

void require_regular_file(const fs::path& p, const char* what) {
  std::error_code ec;
  CEPE_CHECK(fs::exists(p, ec), what << " " << p.string() << ": no such file");
  CEPE_CHECK(fs::is_regular_file(p, ec), what << " " << p.string() << ": not a regular file");
}

int32_t load_i32(const char* p) {
  int32_t v;
  std::memcpy(&v, p, 4);  // llama2.c files are little-endian, as is every host we build for
  return v;
}

float load_f32(const char* p) {
  float v;
  std::memcpy(&v, p, 4);
  return v;
}

// ---- protobuf wire format, just what a sentencepiece ModelProto needs ----

class ProtoWriter {
 public:
  void varint(uint64_t v) {
    while (v >= 0x80) {
      buf_.push_back(static_cast<char>((v & 0x7F) | 0x80));
      v >>= 7;
    }
    buf_.push_back(static_cast<char>(v));
  }
  void tag(int field, int wire_type) { varint(static_cast<uint64_t>(field) << 3 | wire_type); }
  void bytes(int field, const std::string& s) {
    tag(field, 2);
    varint(s.size());
    buf_ += s;
  }
  // int32 fields are sign-extended to 64 bits on the wire, so -1 takes ten bytes.
  void int32(int field, int32_t v) {
    tag(field, 0);
    varint(static_cast<uint64_t>(static_cast<int64_t>(v)));
  }
  void boolean(int field, bool v) {
    tag(field, 0);
    varint(v ? 1 : 0);
  }
  void float32(int field, float v) {
    tag(field, 5);
    char b[4];
    std::memcpy(b, &v, 4);
    buf_.append(b, 4);
  }
  const std::string& str() const { return buf_; }

 private:
  std::string buf_;
};

// sentencepiece_model.proto field numbers and enum values.
enum PieceType { kNormal = 1, kUnknown = 2, kControl = 3, kByte = 6 };
enum : int {
  kModelPieces = 1,
  kModelTrainerSpec = 2,
  kModelNormalizerSpec = 3,
  kPieceText = 1,
  kPieceScore = 2,
  kPieceType = 3,
  kTrainerModelType = 3,
  kTrainerVocabSize = 4,
  kTrainerByteFallback = 35,
  kTrainerUnkId = 40,
  kTrainerBosId = 41,
  kTrainerEosId = 42,
  kTrainerPadId = 43,
  kNormalizerName = 1,
  kNormalizerAddDummyPrefix = 3,
  kNormalizerRemoveExtraWhitespaces = 4,
  kNormalizerEscapeWhitespaces = 5,
};
constexpr int kModelTypeBpe = 2;

// `<0xNN>` with upper-case hex, as sentencepiece spells byte pieces; -1 for anything else.
int byte_piece_value(const std::string& s) {
  if (s.size() != 6 || s.compare(0, 3, "<0x") != 0 || s[5] != '>') return -1;
  int v = 0;
  for (int i = 3; i < 5; ++i) {
    const char c = s[i];
    if (c >= '0' && c <= '9') {
      v = v * 16 + (c - '0');
    } else if (c >= 'A' && c <= 'F') {
      v = v * 16 + (c - 'A' + 10);
    } else {
      return -1;
    }
  }
  return v;
}

std::string trim(const std::string& s) {
  const size_t b = s.find_first_not_of(" \n\t\r");
  if (b == std::string::npos) return {};
  return s.substr(b, s.find_last_not_of(" \n\t\r") - b + 1);
}

std::string replace_all(std::string s, const std::string& from, const std::string& to) {
  for (size_t pos = 0; (pos = s.find(from, pos)) != std::string::npos; pos += to.size())
    s.replace(pos, from.size(), to);
  return s;
}

// Printable form of a piece for error messages.
std::string printable(const std::string& s) {
  std::string out = "'";
  for (unsigned char c : s) {
    if (c >= 0x20 && c != 0x7F) {
      out.push_back(static_cast<char>(c));
    } else {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\x%02X", c);
      out += buf;
    }
  }
  return out + "'";
}

// ---- checkpoint reading ----

class WeightReader {
 public:
  explicit WeightReader(const fs::path& path) : path_(path), in_(path, std::ios::binary) {
    CEPE_CHECK(in_, "cannot open checkpoint " << path.string() << ": " << errno_text());
    in_.seekg(static_cast<std::streamoff>(kHeaderBytes));
  }

  // Reads `n` floats of the array `what` and checks they are finite: NaN or Inf in a
  // checkpoint means a corrupt file, and would only surface later as garbage text.
  void read(float* dst, size_t n, const std::string& what) {
    in_.read(reinterpret_cast<char*>(dst), static_cast<std::streamsize>(n * sizeof(float)));
    CEPE_CHECK(in_, name_of(path_) << ": cannot read " << what << ": " << errno_text());
    for (size_t i = 0; i < n; ++i)
      CEPE_CHECK(std::isfinite(dst[i]), name_of(path_) << ": " << what
                                                       << " holds a non-finite value at element "
                                                       << i << " (corrupt checkpoint?)");
  }

  void skip(size_t n) { in_.seekg(static_cast<std::streamoff>(n * sizeof(float)), std::ios::cur); }

 private:
  fs::path path_;
  std::ifstream in_;
};

std::string layer_name(int layer, const char* suffix) {
  return "model.layers." + std::to_string(layer) + "." + suffix;
}

std::string config_json(const Llama2cHeader& h) {
  std::ostringstream os;
  os << "{\n"
     << "  \"architectures\": [\"LlamaForCausalLM\"],\n"
     << "  \"model_type\": \"llama\",\n"
     << "  \"hidden_size\": " << h.dim << ",\n"
     << "  \"intermediate_size\": " << h.hidden_dim << ",\n"
     << "  \"num_attention_heads\": " << h.n_heads << ",\n"
     << "  \"num_key_value_heads\": " << h.n_kv_heads << ",\n"
     << "  \"num_hidden_layers\": " << h.n_layers << ",\n"
     << "  \"hidden_act\": \"silu\",\n"
     << "  \"rms_norm_eps\": 1e-05,\n"
     << "  \"vocab_size\": " << h.vocab_size << ",\n"
     << "  \"max_position_embeddings\": " << h.seq_len << ",\n"
     << "  \"rope_theta\": 10000.0,\n"
     << "  \"tie_word_embeddings\": " << (h.shared_classifier ? "true" : "false") << ",\n"
     << "  \"bos_token_id\": 1,\n"
     << "  \"eos_token_id\": 2,\n"
     << "  \"torch_dtype\": \"float32\"\n"
     << "}\n";
  return os.str();
}

}  // namespace

uint64_t Llama2cHeader::weight_count() const {
  const uint64_t d = dim, hd = hidden_dim, L = n_layers, v = vocab_size, kv = kv_dim();
  uint64_t n = v * d;                                                        // token embedding
  n += L * d;                                                                // rms_att
  n += L * d * d + 2 * L * kv * d;                                           // wq, wk, wv
  n += L * d * d;                                                            // wo
  n += L * d;                                                                // rms_ffn
  n += 3 * L * hd * d;                                                       // w1, w2, w3
  n += d;                                                                    // rms_final
  n += static_cast<uint64_t>(seq_len) * static_cast<uint64_t>(head_size());  // freq_cis re+im
  if (!shared_classifier) n += v * d;                                        // wcls
  return n;
}

Llama2cHeader read_llama2c_header(const fs::path& checkpoint) {
  require_regular_file(checkpoint, "checkpoint");
  const std::string file = name_of(checkpoint);
  std::error_code ec;
  const uint64_t size = fs::file_size(checkpoint, ec);
  CEPE_CHECK(!ec, "cannot stat checkpoint " << checkpoint.string() << ": " << ec.message());
  CEPE_CHECK(size >= kHeaderBytes,
             file << ": truncated: the header needs " << kHeaderBytes << " bytes, found " << size);
  char raw[kHeaderBytes];
  {
    std::ifstream in(checkpoint, std::ios::binary);
    CEPE_CHECK(in.read(raw, kHeaderBytes),
               "cannot read checkpoint " << checkpoint.string() << ": " << errno_text());
  }
  int32_t f[7];
  for (int i = 0; i < 7; ++i) f[i] = load_i32(raw + 4 * i);
  CEPE_CHECK(f[0] != kVersionedMagic,
             file << ": a versioned llama2.c export (magic \"ak42\", version " << f[1]
                  << "); only the legacy format (export.py --version 0) is supported");

  Llama2cHeader h;
  h.dim = f[0], h.hidden_dim = f[1], h.n_layers = f[2], h.n_heads = f[3], h.n_kv_heads = f[4];
  h.seq_len = f[6];
  h.shared_classifier = f[5] > 0;
  // Bounds far above any llama2.c model: they reject garbage before it drives the arithmetic.
  // A negative vocab_size marks an untied classifier; its magnitude is the size (in 64 bits, as
  // -INT32_MIN does not fit in 32).
  const int64_t vocab_size = f[5] < 0 ? -int64_t{f[5]} : int64_t{f[5]};
  const struct {
    const char* name;
    int64_t value;
    int64_t max;
  } fields[] = {{"dim", f[0], 1 << 16},        {"hidden_dim", f[1], 1 << 20},
                {"n_layers", f[2], 1 << 10},   {"n_heads", f[3], 1 << 12},
                {"n_kv_heads", f[4], 1 << 12}, {"vocab_size", vocab_size, 1 << 22},
                {"seq_len", f[6], 1 << 24}};
  for (const auto& fl : fields)
    CEPE_CHECK(fl.value > 0 && fl.value <= fl.max, file << ": header field " << fl.name << " = "
                                                        << fl.value << " is outside [1, " << fl.max
                                                        << "] (not a llama2.c checkpoint?)");
  h.vocab_size = static_cast<int>(vocab_size);
  CEPE_CHECK(h.dim % h.n_heads == 0,
             file << ": n_heads (" << h.n_heads << ") does not divide dim (" << h.dim << ")");
  CEPE_CHECK(h.head_size() % 2 == 0,
             file << ": head size " << h.head_size() << " is odd; RoPE needs pairs");
  CEPE_CHECK(h.n_kv_heads <= h.n_heads && h.n_heads % h.n_kv_heads == 0,
             file << ": n_kv_heads (" << h.n_kv_heads << ") does not divide n_heads (" << h.n_heads
                  << ")");

  const uint64_t expected = h.weight_count() * sizeof(float);
  const uint64_t found = size - kHeaderBytes;
  CEPE_CHECK(found >= expected,
             file << ": truncated: expected " << expected << " bytes of weights, found " << found);
  CEPE_CHECK(found == expected, file << ": " << found - expected
                                     << " unexpected bytes after the weights (expected " << expected
                                     << " bytes of weights, found " << found
                                     << "): the header does not describe this file");
  return h;
}

std::vector<int64_t> llama2c_rope_row_order(int n_heads, int head_size) {
  // HF row (head, half, i) holds llama2.c row (head, 2 i + half): the pair (2i, 2i+1) that
  // llama2.c rotates together becomes the pair (i, i + head_size/2) rotate_half expects.
  const int half = head_size / 2;
  std::vector<int64_t> order(static_cast<size_t>(n_heads) * head_size);
  for (int h = 0; h < n_heads; ++h)
    for (int j = 0; j < 2; ++j)
      for (int i = 0; i < half; ++i)
        order[static_cast<size_t>(h) * head_size + j * half + i] =
            static_cast<int64_t>(h) * head_size + 2 * i + j;
  return order;
}

std::string llama2c_tokenizer_to_sentencepiece(const fs::path& tokenizer_bin, int vocab_size) {
  require_regular_file(tokenizer_bin, "tokenizer");
  const std::string file = name_of(tokenizer_bin);
  const std::string data = read_whole_file(tokenizer_bin, "tokenizer");
  CEPE_CHECK(vocab_size >= 3,
             file << ": vocab_size " << vocab_size << " leaves no room for <unk>, <s> and </s>");
  CEPE_CHECK(data.size() >= 4,
             file << ": truncated: the header needs 4 bytes, found " << data.size());
  const int32_t max_token_length = load_i32(data.data());
  CEPE_CHECK(max_token_length > 0 && max_token_length <= (1 << 16),
             file << ": max_token_length " << max_token_length
                  << " is implausible (not a llama2.c tokenizer?)");

  struct Piece {
    std::string text;
    float score;
    PieceType type;
  };
  std::vector<Piece> pieces;
  pieces.reserve(vocab_size);
  size_t off = 4;
  int bytes_seen = 0;
  std::unordered_map<std::string, int> index;
  for (int id = 0; id < vocab_size; ++id) {
    CEPE_CHECK(data.size() - off >= 8, file << ": truncated: piece " << id << " of " << vocab_size
                                            << " needs 8 header bytes at offset " << off
                                            << ", only " << data.size() - off << " left");
    const float score = load_f32(data.data() + off);
    const int32_t len = load_i32(data.data() + off + 4);
    off += 8;
    CEPE_CHECK(len > 0 && len <= max_token_length, file << ": piece " << id << " has length " << len
                                                        << " (expected 1.." << max_token_length
                                                        << ")");
    CEPE_CHECK(data.size() - off >= static_cast<size_t>(len),
               file << ": truncated: piece " << id << " of " << vocab_size << " needs " << len
                    << " bytes at offset " << off << ", only " << data.size() - off << " left");
    CEPE_CHECK(std::isfinite(score), file << ": piece " << id << " has a non-finite score");
    std::string text = data.substr(off, len);
    off += len;

    PieceType type = kNormal;
    // llama2.c's export wraps BOS/EOS in newlines ("\n<s>\n") and writes "▁" as a plain space.
    static const char* const kSpecial[3] = {"<unk>", "<s>", "</s>"};
    if (id < 3) {
      CEPE_CHECK(trim(text) == kSpecial[id], file << ": piece " << id << " is " << printable(text)
                                                  << ", expected " << kSpecial[id]);
      text = kSpecial[id];
      type = id == 0 ? kUnknown : kControl;
    } else if (byte_piece_value(text) >= 0) {
      type = kByte;
      ++bytes_seen;
    } else {
      CEPE_CHECK(utf8_valid(text),
                 file << ": piece " << id << " " << printable(text) << " is not valid UTF-8");
      text = replace_all(text, " ", kSpaceSymbol);
    }
    const auto [it, fresh] = index.emplace(text, id);
    CEPE_CHECK(fresh, file << ": piece " << id << " " << printable(text) << " repeats piece "
                           << it->second);
    pieces.push_back({std::move(text), score, type});
  }
  CEPE_CHECK(off == data.size(), file << ": " << data.size() - off << " unexpected bytes after "
                                      << vocab_size << " pieces (does the checkpoint's vocab_size "
                                      << vocab_size << " belong to this tokenizer?)");
  // Byte fallback needs every byte: a partial set would turn some characters into <unk>.
  CEPE_CHECK(bytes_seen == 0 || bytes_seen == 256,
             file << ": has " << bytes_seen << " of the 256 <0xNN> byte pieces");

  ProtoWriter model;
  for (const Piece& p : pieces) {
    ProtoWriter sp;
    sp.bytes(kPieceText, p.text);
    sp.float32(kPieceScore, p.score);
    sp.int32(kPieceType, p.type);
    model.bytes(kModelPieces, sp.str());
  }
  ProtoWriter trainer;
  trainer.int32(kTrainerModelType, kModelTypeBpe);
  trainer.int32(kTrainerVocabSize, vocab_size);
  trainer.boolean(kTrainerByteFallback, bytes_seen == 256);
  trainer.int32(kTrainerUnkId, 0);
  trainer.int32(kTrainerBosId, 1);
  trainer.int32(kTrainerEosId, 2);
  trainer.int32(kTrainerPadId, -1);
  model.bytes(kModelTrainerSpec, trainer.str());
  // LLaMA's normalizer: no Unicode normalisation, a dummy "▁" in front, spaces kept as they are.
  ProtoWriter normalizer;
  normalizer.bytes(kNormalizerName, "identity");
  normalizer.boolean(kNormalizerAddDummyPrefix, true);
  normalizer.boolean(kNormalizerRemoveExtraWhitespaces, false);
  normalizer.boolean(kNormalizerEscapeWhitespaces, true);
  model.bytes(kModelNormalizerSpec, normalizer.str());

  // Sentencepiece itself is the judge of whether the proto is usable.
  sentencepiece::SentencePieceProcessor sp;
  const auto status = sp.LoadFromSerializedProto(model.str());
  CEPE_CHECK(status.ok(), file << ": the converted tokenizer does not load in sentencepiece ("
                               << status.ToString() << ")");
  CEPE_CHECK(sp.GetPieceSize() == vocab_size && sp.bos_id() == 1 && sp.eos_id() == 2,
             file << ": the converted tokenizer has unexpected special ids");
  return model.str();
}

Llama2cHeader convert_llama2c(const fs::path& checkpoint, const fs::path& tokenizer_bin,
                              const fs::path& out_dir) {
  const Llama2cHeader h = read_llama2c_header(checkpoint);
  const std::string tokenizer_proto =
      llama2c_tokenizer_to_sentencepiece(tokenizer_bin, h.vocab_size);

  const int64_t d = h.dim, hd = h.hidden_dim, v = h.vocab_size, kv = h.kv_dim();
  const int L = h.n_layers;
  WeightReader in(checkpoint);
  auto read_tensor = [&](std::vector<int64_t> shape, const std::string& what) {
    Tensor t = Tensor::empty(std::move(shape), DType::F32);
    in.read(t.data<float>(), static_cast<size_t>(t.numel()), what);
    return t;
  };
  // Arrays are stored [layer, ...]; each becomes one tensor per layer.
  auto read_layers = [&](std::vector<int64_t> shape, const std::string& what) {
    std::vector<Tensor> out;
    for (int l = 0; l < L; ++l)
      out.push_back(read_tensor(shape, what + " (layer " + std::to_string(l) + ")"));
    return out;
  };
  auto permute_rope = [&](const std::vector<Tensor>& ws, int heads) {
    const auto order = llama2c_rope_row_order(heads, h.head_size());
    std::vector<Tensor> out;
    for (const Tensor& w : ws) {
      Tensor p = Tensor::empty(w.shape(), DType::F32);
      const int64_t cols = w.dim(1);
      for (size_t r = 0; r < order.size(); ++r)
        std::memcpy(p.data<float>() + r * cols, w.data<float>() + order[r] * cols,
                    cols * sizeof(float));
      out.push_back(p);
    }
    return out;
  };

  Tensor embed = read_tensor({v, d}, "token_embedding");
  auto rms_att = read_layers({d}, "rms_att");
  auto wq = permute_rope(read_layers({d, d}, "wq"), h.n_heads);
  auto wk = permute_rope(read_layers({kv, d}, "wk"), h.n_kv_heads);
  auto wv = read_layers({kv, d}, "wv");
  auto wo = read_layers({d, d}, "wo");
  auto rms_ffn = read_layers({d}, "rms_ffn");
  auto w1 = read_layers({hd, d}, "w1");
  auto w2 = read_layers({d, hd}, "w2");
  auto w3 = read_layers({hd, d}, "w3");
  Tensor norm = read_tensor({d}, "rms_final");
  in.skip(static_cast<size_t>(h.seq_len) * h.head_size());  // freq_cis: recomputed by the engine
  Tensor lm_head;
  if (!h.shared_classifier) lm_head = read_tensor({v, d}, "wcls");

  std::vector<std::pair<std::string, Tensor>> tensors;
  tensors.emplace_back("model.embed_tokens.weight", embed);
  for (int l = 0; l < L; ++l) {
    tensors.emplace_back(layer_name(l, "input_layernorm.weight"), rms_att[l]);
    tensors.emplace_back(layer_name(l, "self_attn.q_proj.weight"), wq[l]);
    tensors.emplace_back(layer_name(l, "self_attn.k_proj.weight"), wk[l]);
    tensors.emplace_back(layer_name(l, "self_attn.v_proj.weight"), wv[l]);
    tensors.emplace_back(layer_name(l, "self_attn.o_proj.weight"), wo[l]);
    tensors.emplace_back(layer_name(l, "post_attention_layernorm.weight"), rms_ffn[l]);
    tensors.emplace_back(layer_name(l, "mlp.gate_proj.weight"), w1[l]);
    tensors.emplace_back(layer_name(l, "mlp.up_proj.weight"), w3[l]);
    tensors.emplace_back(layer_name(l, "mlp.down_proj.weight"), w2[l]);
  }
  tensors.emplace_back("model.norm.weight", norm);
  if (!h.shared_classifier) tensors.emplace_back("lm_head.weight", lm_head);

  std::error_code ec;
  fs::create_directories(out_dir, ec);
  CEPE_CHECK(!ec && fs::is_directory(out_dir, ec), "cannot create output directory "
                                                       << out_dir.string() << ": "
                                                       << (ec ? ec.message() : "not a directory"));
  write_safetensors(out_dir / "model.safetensors", tensors,
                    {{"format", "pt"}, {"source", "llama2.c " + name_of(checkpoint)}});
  write_file_atomic(out_dir / "tokenizer.model", tokenizer_proto);
  // config.json last: a directory with a config is a complete model.
  write_file_atomic(out_dir / "config.json", config_json(h));
  return h;
}

}  // namespace cepe
