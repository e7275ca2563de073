#include "retriever/lexical_embedder.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <unordered_set>

#include "common/error.h"
#include "common/fileio.h"
#include "common/hash.h"
#include "common/utf8.h"

namespace cepe::retriever {

namespace {


// Bumped whenever lexical_words() or the feature hashing changes, so old indexes are refused.
// Version 2: four hash slots per feature, bigrams at half weight (measured on SQuAD: recall@20
// 0.67 -> 0.90 at dim 4096, see docs/bench/retrieval.md).
constexpr uint32_t kTokenizerVersion = 2;
// Every feature is added to this many (slot, sign) pairs. One slot lets a single collision with a
// frequent passage term outweigh a real match; several make collision noise small and symmetric.
constexpr int kSlotsPerFeature = 4;
// Bigrams are rare, so their IDF is high; at full weight they drown the unigram matches that
// paraphrased questions rely on.
constexpr float kBigramWeight = 0.5f;
constexpr char kMagic[8] = {'C', 'E', 'P', 'E', 'L', 'E', 'X', '\0'};
constexpr uint32_t kFileVersion = 1;

// Base letters of U+0100..U+017F (Latin Extended-A); the ligatures at U+0132/3 and U+0152/3 are
// handled separately.
constexpr std::string_view kLatinExtA =
    "aaaaaaccccccccddddeeeeeeeeeegggggggghhhhiiiiiiiiiiiijjkkkllllllllllnnnnnnnnnoooooo"
    "oorrrrrrssssssssttttttuuuuuuuuuuuuwwyyyzzzzzzs";
static_assert(kLatinExtA.size() == 0x80);

const std::unordered_set<std::string_view>& stop_words() {
  static const std::unordered_set<std::string_view> words = {
      "a",     "about", "after", "all",    "also",  "am",     "an",    "and",   "any",    "are",
      "as",    "at",    "be",    "been",   "being", "but",    "by",    "can",   "could",  "did",
      "do",    "does",  "doing", "for",    "from",  "had",    "has",   "have",  "having", "he",
      "her",   "here",  "hers",  "him",    "his",   "how",    "i",     "if",    "in",     "into",
      "is",    "it",    "its",   "itself", "may",   "me",     "might", "my",    "of",     "on",
      "onto",  "or",    "our",   "ours",   "she",   "should", "so",    "some",  "such",   "than",
      "that",  "the",   "their", "theirs", "them",  "then",   "there", "these", "they",   "this",
      "those", "to",    "too",   "us",     "was",   "we",     "were",  "what",  "when",   "where",
      "which", "while", "who",   "whom",   "whose", "why",    "will",  "with",  "would",  "you",
      "your",  "yours", "s",     "t",      "d",     "ll",     "re",    "ve",    "m",      "o"};
  return words;
}

bool is_cjk(char32_t c) {
  return (c >= 0x4E00 && c <= 0x9FFF) || (c >= 0x3400 && c <= 0x4DBF) ||
         (c >= 0x20000 && c <= 0x2A6DF) || (c >= 0x2A700 && c <= 0x2CEAF) ||
         (c >= 0xF900 && c <= 0xFAFF) || (c >= 0x2F800 && c <= 0x2FA1F);
}

bool is_separator(char32_t c) {
  if (c < 0x80)
    return !((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9'));
  return (c >= 0x80 && c <= 0xBF) || c == 0xD7 || c == 0xF7 || (c >= 0x2000 && c <= 0x2BFF) ||
         (c >= 0x3000 && c <= 0x303F) || (c >= 0xFE30 && c <= 0xFE4F) ||
         (c >= 0xFF00 && c <= 0xFF0F) || (c >= 0xFF1A && c <= 0xFF20) ||
         (c >= 0xFF3B && c <= 0xFF40) || (c >= 0xFF5B && c <= 0xFF65) || c == 0xFFFD;
}

// Lower-cases and strips accents from Latin letters; appends the folded form.
void append_folded(std::string* w, char32_t c) {
  if (c < 0x80) {
    w->push_back(static_cast<char>(c >= 'A' && c <= 'Z' ? c + 32 : c));
    return;
  }
  if (c >= 0xC0 && c <= 0xFF) {
    static constexpr std::string_view kLatin1 =
        "aaaaaaaceeeeiiiidnooooo_ouuuuyts"   // U+00C0..U+00DF (U+00D7 is a separator)
        "aaaaaaaceeeeiiiidnooooo_ouuuuyty";  // U+00E0..U+00FF
    if (c == 0xC6 || c == 0xE6) return void(w->append("ae"));
    if (c == 0xDE || c == 0xFE) return void(w->append("th"));
    if (c == 0xDF) return void(w->append("ss"));
    w->push_back(kLatin1[c - 0xC0]);
    return;
  }
  if (c >= 0x100 && c <= 0x17F) {
    if (c == 0x132 || c == 0x133) return void(w->append("ij"));
    if (c == 0x152 || c == 0x153) return void(w->append("oe"));
    w->push_back(kLatinExtA[c - 0x100]);
    return;
  }
  if ((c >= 0x391 && c <= 0x3A9) || (c >= 0x410 && c <= 0x42F))
    c += 0x20;  // Greek, Cyrillic
  else if (c >= 0x400 && c <= 0x40F)
    c += 0x50;
  utf8_append(w, c);
}

// Harman's "S" stemmer: folds the commonest English plurals onto their singular.
void stem(std::string* w) {
  const size_t n = w->size();
  if (n <= 3 || static_cast<unsigned char>(w->back()) >= 0x80) return;
  auto ends = [&](std::string_view suf) {
    return n >= suf.size() && std::string_view(*w).substr(n - suf.size()) == suf;
  };
  if (ends("ies") && !ends("eies") && !ends("aies")) {
    w->resize(n - 3);
    w->push_back('y');
  } else if (ends("es") && !ends("aes") && !ends("ees") && !ends("oes")) {
    w->resize(n - 1);
  } else if (ends("s") && !ends("us") && !ends("ss")) {
    w->resize(n - 1);
  }
}

void finish_word(std::string* w, std::vector<std::string>* out) {
  if (w->empty()) return;
  const bool single_letter = w->size() == 1 && (*w)[0] >= 'a' && (*w)[0] <= 'z';
  if (!single_letter && !stop_words().count(*w)) {
    stem(w);
    out->push_back(std::move(*w));
  }
  w->clear();
}

// Distinct feature hashes of unigrams and bigrams (with repeats, for term frequency).
void term_hashes(std::string_view title, std::string_view text, std::vector<uint64_t>* out) {
  out->clear();
  for (std::string_view part : {title, text}) {
    const auto words = lexical_words(part);
    uint64_t prev = 0;
    for (size_t i = 0; i < words.size(); ++i) {
      const uint64_t h = hash64(words[i], 0x756e69) & ~1ULL;
      out->push_back(h);
      // Bigrams are ordered pairs of adjacent content words; the mix keeps them apart from
      // unigrams.
      if (i > 0) out->push_back(mix64(prev * 0x9e3779b97f4a7c15ULL + h + 0x6269) | 1ULL);
      prev = h;
    }
  }
}

}  // namespace

std::vector<std::string> lexical_words(std::string_view text) {
  std::vector<std::string> out;
  std::string w;
  size_t pos = 0;
  while (pos < text.size()) {
    const char32_t c = utf8_next(text, &pos);
    if (is_separator(c)) {
      finish_word(&w, &out);
    } else if (is_cjk(c)) {
      // Ideographs carry a word's meaning each; CJK text has no spaces to split on.
      finish_word(&w, &out);
      utf8_append(&w, c);
      out.push_back(std::move(w));
      w.clear();
    } else {
      append_folded(&w, c);
    }
  }
  finish_word(&w, &out);
  return out;
}

LexicalEmbedder::LexicalEmbedder(int dim) : dim_(dim ? dim : kDefaultDim) {
  CEPE_CHECK(dim_ >= 16 && dim_ <= (1 << 20),
             "lexical dimension must be in [16, 1048576] (got " << dim_ << ")");
  df_.assign(kDfBuckets, 0);
}

void LexicalEmbedder::fit_add(std::string_view title, std::string_view text) {
  CEPE_CHECK(!fitted_, "internal: lexical embedder fitted twice");
  std::vector<uint64_t> terms;
  term_hashes(title, text, &terms);
  std::sort(terms.begin(), terms.end());
  terms.erase(std::unique(terms.begin(), terms.end()), terms.end());
  for (uint64_t h : terms) {
    uint32_t& d = df_[h & (kDfBuckets - 1)];
    if (d != UINT32_MAX) ++d;
  }
  ++docs_;
}

void LexicalEmbedder::compute_idf() {
  idf_.resize(kDfBuckets);
  const double n = static_cast<double>(docs_);
  // BM25's IDF: positive even for terms in most documents, largest for the rarest.
  for (uint32_t b = 0; b < kDfBuckets; ++b) {
    const double df = df_[b];
    idf_[b] = static_cast<float>(std::log(1.0 + (n - df + 0.5) / (df + 0.5)));
  }
  fitted_ = true;
}

void LexicalEmbedder::fit_finish() {
  CEPE_CHECK(docs_ > 0, "cannot fit the lexical embedder on an empty corpus");
  compute_idf();
}

std::string LexicalEmbedder::fingerprint() const {
  Hasher h(0x4c4558);
  h.update_u64(kTokenizerVersion);
  h.update_u64(static_cast<uint64_t>(dim_));
  h.update_u64(kDfBuckets);
  h.update_u64(docs_);
  h.update(df_.data(), df_.size() * sizeof(uint32_t));
  return "lexical-" + hex64(h.digest());
}

std::map<std::string, std::string> LexicalEmbedder::describe() const {
  return {{"dim", std::to_string(dim_)},
          {"fitted_documents", std::to_string(docs_)},
          {"tokenizer_version", std::to_string(kTokenizerVersion)},
          {"slots_per_feature", std::to_string(kSlotsPerFeature)},
          {"bigram_weight", std::to_string(kBigramWeight)},
          {"features", "tf-idf word unigrams + bigrams, signed feature hashing, L2-normalised"}};
}

void LexicalEmbedder::save(const std::filesystem::path& index_dir) const {
  CEPE_CHECK(fitted_, "internal: saving an unfitted lexical embedder");
  std::string buf;
  auto put = [&](const void* p, size_t n) { buf.append(static_cast<const char*>(p), n); };
  put(kMagic, 8);
  const uint32_t head[4] = {kFileVersion, static_cast<uint32_t>(dim_), kDfBuckets,
                            kTokenizerVersion};
  put(head, sizeof head);
  put(&docs_, 8);
  uint64_t nnz = 0;
  for (uint32_t d : df_) nnz += d != 0;
  put(&nnz, 8);
  // Sparse: most buckets are empty for corpora of ordinary size.
  for (uint32_t b = 0; b < kDfBuckets; ++b) {
    if (df_[b] == 0) continue;
    const uint32_t pair[2] = {b, df_[b]};
    put(pair, sizeof pair);
  }
  const uint64_t sum = hash64(buf, 0x494446);
  put(&sum, 8);
  write_file_atomic(index_dir / kFileName, buf);
}

std::unique_ptr<LexicalEmbedder> LexicalEmbedder::load(const std::filesystem::path& index_dir) {
  const auto path = index_dir / kFileName;
  const std::string name = path.string();
  MappedFile f(path);
  const char* p = f.data();
  const size_t size = f.size();
  constexpr size_t kHead = 8 + 16 + 8 + 8;
  CEPE_CHECK(size >= kHead + 8, name << ": truncated lexical IDF table (" << size << " bytes)");
  CEPE_CHECK(std::memcmp(p, kMagic, 8) == 0, name << ": not a lexical IDF table (bad magic)");
  uint32_t head[4];
  std::memcpy(head, p + 8, sizeof head);
  CEPE_CHECK(head[0] == kFileVersion, name << ": lexical IDF table version " << head[0]
                                           << " is not supported (expected " << kFileVersion
                                           << ")");
  CEPE_CHECK(head[2] == kDfBuckets,
             name << ": IDF table has " << head[2] << " buckets, expected " << kDfBuckets);
  CEPE_CHECK(head[3] == kTokenizerVersion, name << ": built with lexical tokenizer version "
                                                << head[3] << ", this build has "
                                                << kTokenizerVersion << "; rebuild the index");
  uint64_t docs, nnz;
  std::memcpy(&docs, p + 24, 8);
  std::memcpy(&nnz, p + 32, 8);
  CEPE_CHECK(nnz <= kDfBuckets && size == kHead + nnz * 8 + 8,
             name << ": truncated or corrupt lexical IDF table (" << size << " bytes for " << nnz
                  << " entries)");
  uint64_t sum;
  std::memcpy(&sum, p + size - 8, 8);
  CEPE_CHECK(sum == hash64(std::string_view(p, size - 8), 0x494446),
             name << ": lexical IDF table checksum mismatch (the file is corrupt)");
  auto e = std::make_unique<LexicalEmbedder>(static_cast<int>(head[1]));
  e->docs_ = docs;
  for (uint64_t i = 0; i < nnz; ++i) {
    uint32_t pair[2];
    std::memcpy(pair, p + kHead + 8 * i, 8);
    CEPE_CHECK(pair[0] < kDfBuckets,
               name << ": corrupt lexical IDF table (bucket " << pair[0] << ")");
    e->df_[pair[0]] = pair[1];
  }
  e->compute_idf();
  return e;
}

void LexicalEmbedder::embed_one(std::string_view title, std::string_view text, float* out) const {
  CEPE_CHECK(fitted_, "internal: lexical embedder used before fitting");
  std::memset(out, 0, sizeof(float) * dim_);
  thread_local std::vector<uint64_t> terms;
  term_hashes(title, text, &terms);
  std::sort(terms.begin(), terms.end());
  double norm = 0;
  for (size_t i = 0; i < terms.size();) {
    size_t j = i;
    while (j < terms.size() && terms[j] == terms[i]) ++j;
    const uint64_t h = terms[i];
    // Sub-linear term frequency: a word said five times is not five times as relevant.
    float w = (1.0f + std::log(static_cast<float>(j - i))) * idf_[h & (kDfBuckets - 1)];
    if (h & 1) w *= kBigramWeight;  // bigram hashes are odd, unigram hashes even
    uint64_t g = h;
    for (int s = 0; s < kSlotsPerFeature; ++s) {
      const size_t slot = (g >> 32) % static_cast<uint64_t>(dim_);
      out[slot] += (g >> 31) & 1 ? -w : w;
      g = mix64(g + 0x51ed27);
    }
    i = j;
  }
  for (int d = 0; d < dim_; ++d) norm += static_cast<double>(out[d]) * out[d];
  if (norm > 0) {
    const float inv = static_cast<float>(1.0 / std::sqrt(norm));
    for (int d = 0; d < dim_; ++d) out[d] *= inv;
  }
}

void LexicalEmbedder::embed_passages(const std::vector<PassageView>& passages, float* out) const {
  for (size_t i = 0; i < passages.size(); ++i)
    embed_one(passages[i].title, passages[i].text, out + i * static_cast<size_t>(dim_));
}

void LexicalEmbedder::embed_queries(const std::vector<std::string>& queries, float* out) const {
  for (size_t i = 0; i < queries.size(); ++i)
    embed_one({}, queries[i], out + i * static_cast<size_t>(dim_));
}

}  // namespace cepe::retriever
