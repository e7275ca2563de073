#include "qa/scoring.h"

#include <algorithm>

#include "common/error.h"
#include "common/unicode.h"
#include "common/utf8.h"

namespace cepe::qa {

namespace {

// Invalid UTF-8 bytes become code points past U+10FFFF so that they cannot collide with real
// characters and are re-emitted as the original byte.
constexpr char32_t kRawByteBase = 0x110000;

bool is_ascii_punct(char32_t c) {
  return (c >= 0x21 && c <= 0x2F) || (c >= 0x3A && c <= 0x40) || (c >= 0x5B && c <= 0x60) ||
         (c >= 0x7B && c <= 0x7E);
}

// Decodes like Python's decode('utf-8', 'surrogateescape'): any byte that does not start a valid,
// shortest-form sequence of a scalar value becomes a raw-byte code point of its own.
std::u32string decode_utf8(std::string_view s) {
  std::u32string out;
  out.reserve(s.size());
  for (size_t i = 0; i < s.size();) {
    const size_t start = i;
    char32_t cp;
    out.push_back(utf8_decode(s, &i, &cp) ? cp
                                          : kRawByteBase + static_cast<unsigned char>(s[start]));
  }
  return out;
}

void encode_utf8(const std::u32string& cps, std::string* out) {
  out->reserve(cps.size());
  for (char32_t c : cps) {
    if (c < kRawByteBase)
      utf8_append(out, c);
    else
      out->push_back(static_cast<char>(c - kRawByteBase));
  }
}

// The normalised answer as code points: comparisons happen here rather than on UTF-8 bytes so
// that raw bytes left over from invalid input can never pair up into a character.
std::u32string normalize_cps(std::string_view text) {
  const std::u32string cps = decode_utf8(text);

  // lower() then remove_punc(); lower-casing never produces ASCII punctuation, so one pass works.
  std::u32string low;
  low.reserve(cps.size() + 4);
  for (size_t i = 0; i < cps.size(); ++i) {
    const char32_t c = cps[i];
    if (c < 0x80) {
      if (is_ascii_punct(c)) continue;
      low.push_back(c >= 'A' && c <= 'Z' ? c + 32 : c);
    } else if (c == 0x130) {
      low.push_back(U'i');
      low.push_back(0x307);
    } else if (c == 0x3A3) {
      low.push_back(unicode::sigma_is_final(cps, i) ? 0x3C2 : 0x3C3);
    } else if (c < kRawByteBase) {
      low.push_back(unicode::simple_lower(c));
    } else {
      low.push_back(c);
    }
  }

  // remove_articles(): `\b(a|an|the)\b` matches exactly a maximal run of word characters that is
  // one of the three articles; each becomes a space.
  std::u32string no_articles;
  no_articles.reserve(low.size());
  for (size_t i = 0; i < low.size();) {
    if (!unicode::is_word(low[i])) {
      no_articles.push_back(low[i++]);
      continue;
    }
    size_t j = i;
    while (j < low.size() && unicode::is_word(low[j])) ++j;
    const std::u32string_view word(low.data() + i, j - i);
    if (word == U"a" || word == U"an" || word == U"the") {
      no_articles.push_back(U' ');
    } else {
      no_articles.append(word);
    }
    i = j;
  }

  // white_space_fix(): ' '.join(text.split()).
  std::u32string out;
  out.reserve(no_articles.size());
  for (size_t i = 0; i < no_articles.size();) {
    if (unicode::is_space(no_articles[i])) {
      ++i;
      continue;
    }
    if (!out.empty()) out.push_back(U' ');
    while (i < no_articles.size() && !unicode::is_space(no_articles[i])) out.push_back(no_articles[i++]);
  }
  return out;
}

std::vector<std::u32string_view> split_tokens(const std::u32string& s) {
  std::vector<std::u32string_view> tokens;
  size_t start = 0;
  while (start < s.size()) {
    size_t end = s.find(U' ', start);
    if (end == std::u32string::npos) end = s.size();
    tokens.emplace_back(s.data() + start, end - start);
    start = end + 1;
  }
  return tokens;
}

bool is_yes_no(const std::u32string& s) {
  return s == U"yes" || s == U"no" || s == U"noanswer";
}

double f1_normalized(const std::u32string& pred, const std::u32string& gold, F1Rule rule) {
  if (rule == F1Rule::kCepe && pred != gold && (is_yes_no(pred) || is_yes_no(gold))) return 0.0;
  std::vector<std::u32string_view> p = split_tokens(pred);
  std::vector<std::u32string_view> g = split_tokens(gold);
  std::sort(p.begin(), p.end());
  std::sort(g.begin(), g.end());
  // Walking two sorted lists counts each shared token min(count_p, count_g) times, which is what
  // the Counter intersection in the reference does.
  size_t same = 0;
  for (size_t i = 0, j = 0; i < p.size() && j < g.size();) {
    if (p[i] < g[j]) {
      ++i;
    } else if (g[j] < p[i]) {
      ++j;
    } else {
      ++same, ++i, ++j;
    }
  }
  if (same == 0) return 0.0;
  const double precision = static_cast<double>(same) / static_cast<double>(p.size());
  const double recall = static_cast<double>(same) / static_cast<double>(g.size());
  return (2 * precision * recall) / (precision + recall);
}

}  // namespace

std::string normalize_answer(std::string_view text) {
  std::string out;
  encode_utf8(normalize_cps(text), &out);
  return out;
}

bool exact_match(std::string_view prediction, std::string_view gold) {
  return normalize_cps(prediction) == normalize_cps(gold);
}

double token_f1(std::string_view prediction, std::string_view gold, F1Rule rule) {
  return f1_normalized(normalize_cps(prediction), normalize_cps(gold), rule);
}

bool substring_match(std::string_view prediction, std::string_view gold) {
  return normalize_cps(prediction).find(normalize_cps(gold)) != std::u32string::npos;
}

AnswerScores score_answer(std::string_view prediction, const std::vector<std::string>& golds,
                          F1Rule rule) {
  CEPE_CHECK(!golds.empty(), "cannot score an answer without gold answers");
  const std::u32string pred = normalize_cps(prediction);
  AnswerScores best;
  for (const std::string& g : golds) {
    const std::u32string gold = normalize_cps(g);
    best.exact_match = best.exact_match || pred == gold;
    best.f1 = std::max(best.f1, f1_normalized(pred, gold, rule));
    best.substring = best.substring || pred.find(gold) != std::u32string::npos;
  }
  return best;
}

AnswerMatcher::AnswerMatcher(const std::vector<std::string>& golds) {
  for (const std::string& g : golds) {
    std::u32string n = normalize_cps(g);
    if (!n.empty()) golds_.push_back(std::move(n));
  }
}

bool AnswerMatcher::matches(std::string_view text) const {
  if (golds_.empty()) return false;
  const std::u32string norm = normalize_cps(text);
  for (const std::u32string& g : golds_) {
    if (norm.find(g) != std::u32string::npos) return true;
  }
  return false;
}

std::optional<size_t> AnswerMatcher::first_match(const std::vector<std::string>& texts) const {
  for (size_t i = 0; i < texts.size(); ++i) {
    if (matches(texts[i])) return i;
  }
  return std::nullopt;
}

}  // namespace cepe::qa
