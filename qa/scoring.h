// Answer scoring as in the official SQuAD v1.1 / DrQA / CEPE evaluation code: answer
// normalisation, exact match, token F1, substring match, and the answer-in-passage test behind
// retrieval recall.
//
// Normalisation reproduces Python's
//   white_space_fix(remove_articles(remove_punc(lower(s))))
// on the UTF-8 text, code point by code point:
//  - lower: str.lower() in full (Unicode tables generated from Python, see gen_unicode_tables.py),
//    including U+0130 -> "i\u0307" and the final-sigma rule; no Unicode normalisation (CEPE defines
//    an NFD helper but its metrics never call it, so "café" precomposed != decomposed);
//  - remove_punc: only the 32 ASCII characters of string.punctuation; other punctuation stays;
//  - remove_articles: a, an, the as whole words, word characters being those of re's Unicode `\w`;
//  - white_space_fix: split on str.isspace() characters, join with one space.
// Bytes that are not valid UTF-8 are kept verbatim and behave like Python's surrogateescape
// characters: neither word, space, nor cased, and never lower-cased.
#pragma once

#include <cstddef>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace cepe::qa {

/// Which token-F1 definition to use.
enum class F1Rule {
  kCepe,   ///< CEPE's f1_score: SQuAD F1, but 0 when either side normalises to yes/no/noanswer and
           ///< the two differ (the HotpotQA rule CEPE's utils.py carries)
  kSquad,  ///< the official SQuAD v1.1 f1_score
};

/// Per-question scores, each the maximum over the gold answers.
struct AnswerScores {
  bool exact_match = false;  ///< normalised prediction equals a normalised gold answer
  double f1 = 0.0;           ///< best token F1 against any gold answer
  bool substring = false;    ///< a normalised gold answer occurs in the normalised prediction
};

/// SQuAD/DrQA/CEPE normalize_answer with Python semantics (see the file comment).
std::string normalize_answer(std::string_view text);

/// Exact match of the normalised strings.
bool exact_match(std::string_view prediction, std::string_view gold);

/// Token F1 of the normalised strings: common tokens counted with multiplicity; 0 without overlap.
double token_f1(std::string_view prediction, std::string_view gold, F1Rule rule = F1Rule::kCepe);

/// True when the normalised gold occurs in the normalised prediction; as in CEPE, a gold answer
/// that normalises to "" occurs in every prediction.
bool substring_match(std::string_view prediction, std::string_view gold);

/// EM, F1 and substring match, each maximised over `golds`; throws cepe::Error when `golds` is
/// empty (the Python max() would fail too).
AnswerScores score_answer(std::string_view prediction, const std::vector<std::string>& golds,
                          F1Rule rule = F1Rule::kCepe);

/// Tests passages for a gold answer: some normalised gold occurs in a passage's normalised text.
/// Golds that normalise to "" are dropped, since they would make every passage a hit.
class AnswerMatcher {
 public:
  /// Normalises the gold answers once.
  explicit AnswerMatcher(const std::vector<std::string>& golds);
  /// True when no gold answer survives normalisation (nothing can ever match).
  bool empty() const { return golds_.empty(); }
  /// True when some gold answer occurs in the normalised `text`.
  bool matches(std::string_view text) const;
  /// 0-based index of the first passage text containing a gold answer, or nullopt.
  std::optional<size_t> first_match(const std::vector<std::string>& texts) const;

 private:
  std::vector<std::u32string> golds_;  // normalised, as code points
};

}  // namespace cepe::qa
