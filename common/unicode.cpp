#include "common/unicode.h"

#include <algorithm>
#include <cstdint>

#include "common/unicode_tables.h"

namespace cepe::unicode {
namespace {

bool in_ranges(char32_t c, const CodeRange* ranges, size_t count) {
  const CodeRange* end = ranges + count;
  const CodeRange* it =
      std::upper_bound(ranges, end, c, [](char32_t v, const CodeRange& r) { return v < r.first; });
  return it != ranges && c <= (it - 1)->last;
}

constexpr char32_t kCapitalSigma = 0x3A3;

}  // namespace

const char* version() {
  return kUnicodeVersion;
}

bool is_word(char32_t c) {
  if (c < 0x80)
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_';
  return in_ranges(c, kWordRanges, kWordRangeCount);
}

bool is_space(char32_t c) {
  return in_ranges(c, kSpaceRanges, kSpaceRangeCount);
}

bool is_cased(char32_t c) {
  return in_ranges(c, kCasedRanges, kCasedRangeCount);
}

bool is_case_ignorable(char32_t c) {
  return in_ranges(c, kCaseIgnorableRanges, kCaseIgnorableRangeCount);
}

bool is_other(char32_t c) {
  return in_ranges(c, kControlRanges, kControlRangeCount);
}

bool is_punctuation(char32_t c) {
  return in_ranges(c, kPunctuationRanges, kPunctuationRangeCount);
}

bool is_space_separator(char32_t c) {
  return in_ranges(c, kSpaceSeparatorRanges, kSpaceSeparatorRangeCount);
}

bool is_nonspacing_mark(char32_t c) {
  return in_ranges(c, kNonspacingMarkRanges, kNonspacingMarkRangeCount);
}

char32_t simple_lower(char32_t c) {
  const LowerRun* begin = kLowerRuns;
  const LowerRun* end = begin + kLowerRunCount;
  const LowerRun* it =
      std::upper_bound(begin, end, c, [](char32_t v, const LowerRun& r) { return v < r.first; });
  if (it == begin) return c;
  const LowerRun& run = *(it - 1);
  if (c > run.last || (c - run.first) % run.stride != 0) return c;
  return static_cast<char32_t>(static_cast<int64_t>(c) + run.delta);
}

bool sigma_is_final(const std::u32string& s, size_t i) {
  size_t j = i;
  while (j > 0 && is_case_ignorable(s[j - 1])) --j;
  if (j == 0 || !is_cased(s[j - 1])) return false;
  size_t k = i + 1;
  while (k < s.size() && is_case_ignorable(s[k])) ++k;
  return k == s.size() || !is_cased(s[k]);
}

std::u32string lower(const std::u32string& s) {
  std::u32string out;
  out.reserve(s.size() + 1);
  for (size_t i = 0; i < s.size(); ++i) {
    const char32_t c = s[i];
    if (c < 0x80) {
      out += c >= 'A' && c <= 'Z' ? c + 32 : c;
    } else if (c == 0x130) {
      out += U'i';
      out += char32_t{0x307};
    } else if (c == kCapitalSigma) {
      out += sigma_is_final(s, i) ? char32_t{0x3C2} : char32_t{0x3C3};
    } else {
      out += simple_lower(c);
    }
  }
  return out;
}

std::u32string strip_accents(const std::u32string& s) {
  std::u32string out;
  out.reserve(s.size());
  const StripEntry* end = kStripEntries + kStripEntryCount;
  for (char32_t c : s) {
    if (c >= 0xAC00 && c <= 0xD7A3) {  // Hangul syllable: algorithmic decomposition into jamo
      const char32_t v = c - 0xAC00;
      out += static_cast<char32_t>(0x1100 + v / (21 * 28));
      out += static_cast<char32_t>(0x1161 + (v % (21 * 28)) / 28);
      if (v % 28) out += static_cast<char32_t>(0x11A7 + v % 28);
      continue;
    }
    if (is_nonspacing_mark(c)) continue;
    const StripEntry* it = std::lower_bound(kStripEntries, end, c,
                                            [](const StripEntry& e, char32_t v) { return e.cp < v; });
    if (it != end && it->cp == c) {
      for (uint32_t o : it->out)
        if (o) out += static_cast<char32_t>(o);
    } else {
      out += c;
    }
  }
  return out;
}

}  // namespace cepe::unicode
