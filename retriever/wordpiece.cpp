#include "retriever/wordpiece.h"

#include <rapidjson/document.h>

#include <algorithm>

#include "common/error.h"
#include "common/fileio.h"
#include "common/json.h"
#include "common/unicode.h"
#include "common/utf8.h"

namespace cepe::retriever {
namespace {

namespace fs = std::filesystem;

bool is_control(char32_t c) {
  return c != U'\t' && c != U'\n' && c != U'\r' && unicode::is_other(c);
}

bool is_whitespace(char32_t c) {
  return c == U' ' || c == U'\t' || c == U'\n' || c == U'\r' || unicode::is_space_separator(c);
}

// What Python's str.split() splits on besides the whitespace above (the rest of str.isspace()
// is control characters, already removed).
bool is_split_space(char32_t c) {
  return is_whitespace(c) || c == 0x0B || c == 0x0C || (c >= 0x1C && c <= 0x1F) || c == 0x85 ||
         c == 0x2028 || c == 0x2029;
}

bool is_punctuation(char32_t c) {
  if ((c >= 33 && c <= 47) || (c >= 58 && c <= 64) || (c >= 91 && c <= 96) ||
      (c >= 123 && c <= 126))
    return true;
  return unicode::is_punctuation(c);
}

bool is_cjk(char32_t c) {
  return (c >= 0x4E00 && c <= 0x9FFF) || (c >= 0x3400 && c <= 0x4DBF) ||
         (c >= 0x20000 && c <= 0x2A6DF) || (c >= 0x2A700 && c <= 0x2B73F) ||
         (c >= 0x2B740 && c <= 0x2B81F) || (c >= 0x2B820 && c <= 0x2CEAF) ||
         (c >= 0xF900 && c <= 0xFAFF) || (c >= 0x2F800 && c <= 0x2FA1F);
}

std::string to_utf8(const std::u32string& s) {
  std::string out;
  for (char32_t c : s) utf8_append(&out, c);
  return out;
}

// A special token as tokenizer_config.json spells it: a string or an AddedToken object.
bool json_token(const rapidjson::Value& v, std::string* out) {
  if (v.IsString()) {
    *out = v.GetString();
    return true;
  }
  if (v.IsObject() && v.HasMember("content") && v["content"].IsString()) {
    *out = v["content"].GetString();
    return true;
  }
  return false;
}

}  // namespace

WordPiece WordPiece::load(const fs::path& dir) {
  const fs::path vocab_path = dir / "vocab.txt";
  CEPE_CHECK(fs::is_regular_file(vocab_path),
             "WordPiece vocabulary " << vocab_path.string() << " not found");
  const std::string text = read_whole_file(vocab_path, "WordPiece vocabulary");
  std::vector<std::string> vocab;
  size_t pos = 0;
  while (pos < text.size()) {  // one token per line, as HuggingFace's load_vocab reads it
    size_t nl = text.find('\n', pos);
    if (nl == std::string::npos) nl = text.size();
    vocab.push_back(text.substr(pos, nl - pos));
    pos = nl + 1;
  }
  CEPE_CHECK(!vocab.empty(), "WordPiece vocabulary " << vocab_path.string() << " is empty");

  WordPieceOptions o;
  const fs::path cfg_path = dir / "tokenizer_config.json";
  if (fs::exists(cfg_path)) {
    const std::string json = read_whole_file(cfg_path, "tokenizer config");
    rapidjson::Document doc;
    parse_json_or_throw(json, &doc, cfg_path.string());
    CEPE_CHECK(doc.IsObject(), cfg_path.string() << ": not a JSON object");
    auto boolean = [&](const char* key, bool* out) {
      if (!doc.HasMember(key) || doc[key].IsNull()) return false;
      CEPE_CHECK(doc[key].IsBool(), cfg_path.string() << ": " << key << " must be true or false");
      *out = doc[key].GetBool();
      return true;
    };
    boolean("do_lower_case", &o.lower_case);
    bool strip = false;
    if (boolean("strip_accents", &strip)) o.strip_accents = strip;
    boolean("tokenize_chinese_chars", &o.tokenize_chinese_chars);
    for (auto [key, dst] :
         {std::pair{"unk_token", &o.unk_token}, std::pair{"cls_token", &o.cls_token},
          std::pair{"sep_token", &o.sep_token}}) {
      if (doc.HasMember(key))
        CEPE_CHECK(json_token(doc[key], dst),
                   cfg_path.string() << ": " << key << " must be a string or {\"content\": ...}");
    }
    if (doc.HasMember("model_max_length") && doc["model_max_length"].IsNumber()) {
      const double m = doc["model_max_length"].GetDouble();
      if (m >= 2 && m < 1e9) o.model_max_length = static_cast<int64_t>(m);  // 1e30: "no limit"
    }
  }
  try {
    return WordPiece(std::move(vocab), std::move(o));
  } catch (const Error& e) {
    CEPE_THROW("WordPiece vocabulary " << vocab_path.string() << ": " << e.message());
  }
}

WordPiece::WordPiece(std::vector<std::string> vocab, WordPieceOptions options)
    : vocab_(std::move(vocab)), options_(std::move(options)) {
  CEPE_CHECK(vocab_.size() < (1u << 31), "vocabulary of " << vocab_.size() << " tokens is too big");
  for (size_t i = 0; i < vocab_.size(); ++i) ids_[vocab_[i]] = static_cast<int32_t>(i);
  auto special = [&](const std::string& t, const char* what) {
    const int32_t i = id(t);
    CEPE_CHECK(i >= 0, "the " << what << " token '" << t << "' is not in the vocabulary");
    return i;
  };
  unk_id_ = special(options_.unk_token, "unknown-word");
  cls_id_ = special(options_.cls_token, "CLS");
  sep_id_ = special(options_.sep_token, "SEP");
}

int32_t WordPiece::id(std::string_view token) const {
  const auto it = ids_.find(std::string(token));
  return it == ids_.end() ? -1 : it->second;
}

const std::string& WordPiece::token(int32_t id) const {
  CEPE_CHECK(id >= 0 && id < size(),
             "token id " << id << " is outside the vocabulary [0, " << size() << ")");
  return vocab_[static_cast<size_t>(id)];
}

std::vector<std::string> WordPiece::basic_tokenize(std::string_view text) const {
  // Cleanup (NUL, U+FFFD and control characters dropped, whitespace to spaces) and CJK ideographs
  // surrounded by spaces, then words split on whitespace.
  std::vector<std::u32string> words(1);
  size_t pos = 0;
  while (pos < text.size()) {
    const char32_t c = utf8_next(text, &pos);  // malformed bytes decode as U+FFFD
    if (c == 0 || c == 0xFFFD || is_control(c)) continue;
    const bool cjk = options_.tokenize_chinese_chars && is_cjk(c);
    if (is_split_space(c) || cjk) {
      if (!words.back().empty()) words.emplace_back();
      if (cjk) {
        words.back() += c;
        words.emplace_back();
      }
      continue;
    }
    words.back() += c;
  }
  if (words.back().empty()) words.pop_back();

  const bool strip = options_.strip_accents.value_or(options_.lower_case);
  std::vector<std::string> out;
  for (std::u32string& w : words) {
    if (options_.lower_case) w = unicode::lower(w);
    if (strip) w = unicode::strip_accents(w);
    std::u32string piece;
    for (char32_t c : w) {
      if (is_punctuation(c)) {
        if (!piece.empty()) out.push_back(to_utf8(piece));
        piece.clear();
        out.push_back(to_utf8(std::u32string(1, c)));
      } else {
        piece += c;
      }
    }
    if (!piece.empty()) out.push_back(to_utf8(piece));
  }
  return out;
}

void WordPiece::wordpiece(const std::string& word, std::vector<int32_t>* ids) const {
  // Character boundaries (byte offsets) of the word.
  std::vector<size_t> bounds;
  for (size_t pos = 0; pos < word.size();) {
    bounds.push_back(pos);
    utf8_next(word, &pos);
  }
  const size_t chars = bounds.size();
  bounds.push_back(word.size());
  if (chars > static_cast<size_t>(options_.max_input_chars_per_word)) {
    ids->push_back(unk_id_);
    return;
  }
  const size_t mark = ids->size();
  std::string candidate;
  for (size_t start = 0; start < chars;) {
    int32_t found = -1;
    size_t end = chars;
    for (; end > start; --end) {  // longest match first
      candidate.assign(start > 0 ? "##" : "");
      candidate.append(word, bounds[start], bounds[end] - bounds[start]);
      found = id(candidate);
      if (found >= 0) break;
    }
    if (found < 0) {  // some part matches nothing: the whole word is unknown
      ids->resize(mark);
      ids->push_back(unk_id_);
      return;
    }
    ids->push_back(found);
    start = end;
  }
}

std::vector<std::string> WordPiece::tokenize(std::string_view text) const {
  std::vector<int32_t> ids;
  for (const std::string& w : basic_tokenize(text)) wordpiece(w, &ids);
  std::vector<std::string> out;
  out.reserve(ids.size());
  for (int32_t i : ids) out.push_back(vocab_[static_cast<size_t>(i)]);
  return out;
}

std::vector<int32_t> WordPiece::encode(std::string_view text, size_t max_tokens) const {
  CEPE_CHECK(max_tokens >= 2, "max_tokens " << max_tokens << " leaves no room for [CLS] [SEP]");
  std::vector<int32_t> ids{cls_id_};
  for (const std::string& w : basic_tokenize(text)) {
    wordpiece(w, &ids);
    if (ids.size() >= max_tokens - 1) break;
  }
  ids.resize(std::min(ids.size(), max_tokens - 1));
  ids.push_back(sep_id_);
  return ids;
}

}  // namespace cepe::retriever
