#include "engine/tokenizer.h"

#include <sentencepiece_processor.h>

#include <cstdio>
#include <system_error>

#include "common/error.h"
#include "common/utf8.h"

namespace cepe {

// ---- Tokenizer ----

Tokenizer::Tokenizer(const std::filesystem::path& model_file)
    : path_(model_file), sp_(std::make_unique<sentencepiece::SentencePieceProcessor>()) {
  std::error_code ec;
  CEPE_CHECK(std::filesystem::exists(model_file, ec),
             "tokenizer " << model_file.string() << ": no such file");
  CEPE_CHECK(std::filesystem::is_regular_file(model_file, ec),
             "tokenizer " << model_file.string() << ": not a regular file");
  const auto status = sp_->Load(model_file.string());
  CEPE_CHECK(status.ok(), "tokenizer " << model_file.string() << ": not a sentencepiece model ("
                                       << status.ToString() << ")");
  // An empty file parses as an empty protobuf message, so a model without pieces is the sign
  // of a file that was never a sentencepiece model.
  CEPE_CHECK(sp_->GetPieceSize() > 0,
             "tokenizer " << model_file.string() << ": not a sentencepiece model (no pieces)");

  byte_of_.assign(sp_->GetPieceSize(), -1);
  for (int id = 0; id < sp_->GetPieceSize(); ++id) {
    if (!sp_->IsByte(id)) continue;
    const std::string& p = sp_->IdToPiece(id);
    unsigned value = 0;
    CEPE_CHECK(p.size() == 6 && p.compare(0, 3, "<0x") == 0 && p[5] == '>' &&
                   std::sscanf(p.c_str() + 3, "%2x", &value) == 1,
               "tokenizer " << model_file.string() << ": byte piece " << id << " is '" << p
                            << "', expected <0xNN>");
    byte_of_[id] = static_cast<int16_t>(value);
  }
}

Tokenizer::~Tokenizer() = default;

void Tokenizer::check_id(int32_t id) const {
  CEPE_CHECK(id >= 0 && id < vocab_size(), "token id " << id << " is out of range [0, "
                                                       << vocab_size() << ") of tokenizer "
                                                       << path_.string());
}

std::vector<int32_t> Tokenizer::encode(const std::string& text, bool add_bos) const {
  std::vector<int> ids;
  const auto status = sp_->Encode(text, &ids);
  CEPE_CHECK(status.ok(), "tokenizer " << path_.string() << ": cannot encode text ("
                                       << status.ToString() << ")");
  std::vector<int32_t> out;
  out.reserve(ids.size() + 1);
  if (add_bos) {
    CEPE_CHECK(bos_id() >= 0, "tokenizer " << path_.string() << " has no BOS piece");
    out.push_back(bos_id());
  }
  out.insert(out.end(), ids.begin(), ids.end());
  return out;
}

std::string Tokenizer::decode(const std::vector<int32_t>& ids) const {
  for (int32_t id : ids) check_id(id);
  std::string text;
  const auto status = sp_->Decode(std::vector<int>(ids.begin(), ids.end()), &text);
  CEPE_CHECK(status.ok(),
             "tokenizer " << path_.string() << ": cannot decode ids (" << status.ToString() << ")");
  return text;
}

std::string Tokenizer::piece(int32_t id) const {
  check_id(id);
  return sp_->IdToPiece(id);
}

std::string Tokenizer::token_bytes(int32_t id) const {
  if (const int byte = byte_value(id); byte >= 0) return std::string(1, static_cast<char>(byte));
  if (is_unknown(id)) return " \xE2\x81\x87 ";  // U+2047, sentencepiece's unk surface
  std::string piece = sp_->IdToPiece(id);
  if (sp_->IsControl(id)) return piece;
  static const std::string kSpace = "\xE2\x96\x81";  // U+2581, sentencepiece's word marker
  std::string out;
  out.reserve(piece.size());
  for (size_t i = 0; i < piece.size();) {
    if (piece.compare(i, kSpace.size(), kSpace) == 0) {
      out += ' ';
      i += kSpace.size();
    } else {
      out += piece[i++];
    }
  }
  return out;
}

int32_t Tokenizer::vocab_size() const {
  return sp_->GetPieceSize();
}
int32_t Tokenizer::bos_id() const {
  return sp_->bos_id();
}
int32_t Tokenizer::eos_id() const {
  return sp_->eos_id();
}

bool Tokenizer::is_byte(int32_t id) const {
  return byte_value(id) >= 0;
}

bool Tokenizer::is_control(int32_t id) const {
  check_id(id);
  return sp_->IsControl(id);
}

bool Tokenizer::is_unknown(int32_t id) const {
  check_id(id);
  return sp_->IsUnknown(id);
}

int Tokenizer::byte_value(int32_t id) const {
  check_id(id);
  return byte_of_[id];
}

// ---- StreamDecoder ----

std::unique_ptr<Tokenizer> load_model_tokenizer(const std::filesystem::path& model_dir,
                                                const ModelConfig& config) {
  auto tokenizer = std::make_unique<Tokenizer>(model_dir / "tokenizer.model");
  CEPE_CHECK(tokenizer->vocab_size() <= config.decoder.vocab_size,
             tokenizer->path().string()
                 << " has " << tokenizer->vocab_size() << " pieces but the model's vocab_size ("
                 << (model_dir / "config.json").string() << ") is " << config.decoder.vocab_size);
  return tokenizer;
}

StreamDecoder::StreamDecoder(const Tokenizer& tokenizer, std::vector<int32_t> prompt_ids)
    : tokenizer_(tokenizer) {
  // Sentencepiece's decoding is local except for two rules: a run of byte pieces is decoded
  // together, and the first piece that yields text loses its leading "▁". Both are settled by
  // the last normal prompt piece with visible text, so the prompt is cut there: a long prompt
  // then costs nothing per step, and the result is the same as with the whole prompt.
  size_t anchor = 0;
  for (size_t i = prompt_ids.size(); i-- > 0;) {
    const int32_t id = prompt_ids[i];
    if (tokenizer_.is_byte(id) || tokenizer_.is_control(id) || tokenizer_.is_unknown(id)) continue;
    const std::string p = tokenizer_.piece(id);
    if (p.empty() || p == "\xE2\x96\x81") continue;  // "▁" alone may be stripped to nothing
    anchor = i;
    break;
  }
  ids_.assign(prompt_ids.begin() + static_cast<std::ptrdiff_t>(anchor), prompt_ids.end());
  // Bytes of an unfinished character at the end of the prompt are left to the generated text,
  // which may complete them.
  const size_t held = incomplete_byte_tail();
  prefix_chars_ = tokenizer_.decode(std::vector<int32_t>(ids_.begin(), ids_.end() - held)).size();
}

size_t StreamDecoder::incomplete_byte_tail() const {
  char tail[4];
  size_t n = 0;
  // Only the last 4 ids can hold the unfinished character; collect them oldest first.
  size_t run = 0;
  while (run < ids_.size() && run < 4 && tokenizer_.is_byte(ids_[ids_.size() - 1 - run])) ++run;
  for (size_t i = ids_.size() - run; i < ids_.size(); ++i)
    tail[n++] = static_cast<char>(tokenizer_.byte_value(ids_[i]));
  return n - utf8_complete_prefix(std::string_view(tail, n));
}

std::string StreamDecoder::push(int32_t id) {
  CEPE_CHECK(id >= 0 && id < tokenizer_.vocab_size(), "generated token id "
                                                          << id << " is out of range [0, "
                                                          << tokenizer_.vocab_size() << ")");
  ids_.push_back(id);
  const size_t held = incomplete_byte_tail();
  const std::string stable =
      tokenizer_.decode(std::vector<int32_t>(ids_.begin(), ids_.end() - held));
  const size_t end = utf8_complete_prefix(stable);
  const size_t begin = prefix_chars_ + emitted_;
  if (end <= begin) return {};
  emitted_ += end - begin;
  return stable.substr(begin, end - begin);
}

std::string StreamDecoder::flush() {
  const std::string all = tokenizer_.decode(ids_);
  const size_t begin = prefix_chars_ + emitted_;
  if (all.size() <= begin) return {};
  emitted_ = all.size() - prefix_chars_;
  return all.substr(begin);
}

std::string StreamDecoder::text() const {
  const std::string all = tokenizer_.decode(ids_);
  return all.size() <= prefix_chars_ ? std::string() : all.substr(prefix_chars_);
}

}  // namespace cepe
