// WordPiece (BertTokenizer semantics) on hand-checked cases: every expected id below was worked
// out by hand from the vocabulary in this file and the algorithm (clean text, split CJK, lower-case
// + NFD + drop Mn, split punctuation, greedy longest match with "##", [UNK] for unmatched words and
// words over 100 characters).
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "common/error.h"
#include "retriever/wordpiece.h"
#include "test_util.h"

namespace fs = std::filesystem;
using cepe::retriever::WordPiece;
using cepe::retriever::WordPieceOptions;
using Ids = std::vector<int32_t>;

namespace {

const std::vector<std::string> kVocab = {
    "[PAD]", "[UNK]", "[CLS]", "[SEP]", "un",   "##aff", "##able", "cafe", "!",     ",",    "hello",
    "world", "中",    "国",    "'",     "don",  "t",     "a",      "##a",  "Hello", "Café", "οδος",
    ".",     "nino",  "i",     "ᄒ",    "##ᅡ", "##ᆫ",  "¿",      "$",    "σα",    "ﬁ"};
// ids:     0        1        2        3        4       5               6               7
//          8        9        10       11       12      13              14              15
//          16       17       18       19       20      21 (final ς)    22              23
//          24       25 U+1112 26 U+1161 27 U+11AB 28   29              30 (medial σ)   31

WordPiece lower() {
  return WordPiece(kVocab, WordPieceOptions{});
}

WordPiece cased() {
  WordPieceOptions o;
  o.lower_case = false;
  return WordPiece(kVocab, o);
}

// Ids without [CLS]/[SEP].
Ids ids(const WordPiece& wp, const std::string& text) {
  Ids all = wp.encode(text, 1 << 20);
  EXPECT_EQ(all.front(), 2);
  EXPECT_EQ(all.back(), 3);
  return Ids(all.begin() + 1, all.end() - 1);
}

TEST(WordPiece, GreedyLongestMatchWithContinuations) {
  const WordPiece wp = lower();
  EXPECT_EQ(ids(wp, "unaffable"), (Ids{4, 5, 6}));
  EXPECT_EQ(ids(wp, "un aff able"), (Ids{4, 1, 1}));  // "aff" alone is not a word start
  // "un" matches but the rest does not: the whole word is one [UNK], not "un" + [UNK].
  EXPECT_EQ(ids(wp, "unknownword"), (Ids{1}));
  EXPECT_EQ(wp.tokenize("unaffable hello"),
            (std::vector<std::string>{"un", "##aff", "##able", "hello"}));
}

TEST(WordPiece, LowerCaseAndAccents) {
  const WordPiece wp = lower();
  EXPECT_EQ(ids(wp, "Café!"), (Ids{7, 8}));
  EXPECT_EQ(ids(wp, "CAFÉ"), (Ids{7}));
  EXPECT_EQ(ids(wp, "Cafe\xCC\x81"), (Ids{7}));  // already decomposed: e + U+0301
  EXPECT_EQ(ids(wp, "NIÑO"), (Ids{23}));
  EXPECT_EQ(ids(wp, "HeLLo WORLD"), (Ids{10, 11}));
  EXPECT_EQ(ids(wp, "\xC4\xB0"), (Ids{24}));  // U+0130 lower-cases to i + U+0307, mark dropped
  // Hangul syllable U+D55C decomposes (NFD) into jamo U+1112 U+1161 U+11AB.
  EXPECT_EQ(ids(wp, "한"), (Ids{25, 26, 27}));
  // NFD is canonical only: the ligature U+FB01 stays itself (NFKD would give "fi").
  EXPECT_EQ(ids(wp, "ﬁ"), (Ids{31}));
  // Capital sigma: final form at the end of a word (also before '.', which is case-ignorable),
  // medial form otherwise.
  EXPECT_EQ(ids(wp, "ΟΔΟΣ"), (Ids{21}));
  EXPECT_EQ(ids(wp, "ΟΔΟΣ."), (Ids{21, 22}));
  EXPECT_EQ(ids(wp, "ΣΑ"), (Ids{30}));
}

TEST(WordPiece, CasedKeepsCaseAndAccents) {
  const WordPiece wp = cased();
  EXPECT_EQ(ids(wp, "Hello hello HELLO"), (Ids{19, 10, 1}));
  EXPECT_EQ(ids(wp, "Café"), (Ids{20}));
  EXPECT_EQ(ids(wp, "cafe café"), (Ids{7, 1}));
  WordPieceOptions o;
  o.lower_case = false;
  o.strip_accents = true;  // strip_accents applies on its own too
  EXPECT_EQ(ids(WordPiece(kVocab, o), "café Café"), (Ids{7, 1}));
}

TEST(WordPiece, Punctuation) {
  const WordPiece wp = lower();
  EXPECT_EQ(ids(wp, "hello,world!"), (Ids{10, 9, 11, 8}));
  EXPECT_EQ(ids(wp, "don't"), (Ids{15, 14, 16}));
  EXPECT_EQ(ids(wp, "¿hello"), (Ids{28, 10}));           // U+00BF is Po
  EXPECT_EQ(ids(wp, "hello$world"), (Ids{10, 29, 11}));  // ASCII symbols count as punctuation
  EXPECT_EQ(ids(wp, "hello€world"), (Ids{1}));           // U+20AC is Sc outside ASCII: no split
  EXPECT_EQ(wp.basic_tokenize("a...b"), (std::vector<std::string>{"a", ".", ".", ".", "b"}));
}

TEST(WordPiece, CjkAndWhitespaceAndControl) {
  const WordPiece wp = lower();
  EXPECT_EQ(ids(wp, "中国"), (Ids{12, 13}));
  EXPECT_EQ(ids(wp, "hello中国world"), (Ids{10, 12, 13, 11}));
  EXPECT_EQ(ids(wp, "中x国"), (Ids{12, 1, 13}));
  EXPECT_EQ(ids(wp, "\thello\n\nworld\r "), (Ids{10, 11}));
  EXPECT_EQ(ids(wp, "hello\xC2\xA0world"), (Ids{10, 11}));   // NBSP (Zs) is whitespace
  EXPECT_EQ(ids(wp, std::string("hel\0lo", 6)), (Ids{10}));  // NUL dropped
  EXPECT_EQ(ids(wp, "hel\x01lo"), (Ids{10}));                // control dropped
  EXPECT_EQ(ids(wp, "hello\xE2\x80\x8Bworld"), (Ids{1}));    // U+200B (Cf) dropped: one word
  EXPECT_EQ(ids(wp, "hel\xFFlo"), (Ids{10}));                // malformed byte -> U+FFFD -> dropped
  EXPECT_EQ(ids(wp, ""), (Ids{}));
  EXPECT_EQ(ids(wp, " \t\n"), (Ids{}));
}

TEST(WordPiece, LongWordsAreUnknown) {
  const WordPiece wp = lower();
  const Ids hundred = ids(wp, std::string(100, 'a'));
  ASSERT_EQ(hundred.size(), 100u);
  EXPECT_EQ(hundred[0], 17);
  for (size_t i = 1; i < hundred.size(); ++i) EXPECT_EQ(hundred[i], 18);
  EXPECT_EQ(ids(wp, std::string(101, 'a')), (Ids{1}));
  // Characters, not bytes: 100 two-byte characters are still within the limit.
  std::string accented;
  for (int i = 0; i < 100; ++i) accented += "\xC3\xA1";  // á -> a
  EXPECT_EQ(ids(wp, accented).size(), 100u);
}

TEST(WordPiece, EncodeTruncates) {
  const WordPiece wp = lower();
  EXPECT_EQ(wp.encode("hello world hello", 4), (Ids{2, 10, 11, 3}));
  EXPECT_EQ(wp.encode("unaffable", 3), (Ids{2, 4, 3}));
  EXPECT_EQ(wp.encode("hello", 2), (Ids{2, 3}));
  EXPECT_THROW(wp.encode("hello", 1), cepe::Error);
}

TEST(WordPiece, LoadReadsConfigAndReportsMissingFiles) {
  const fs::path dir = cepe::test::temp_dir("wordpiece");
  try {
    WordPiece::load(dir);
    FAIL() << "no vocab.txt accepted";
  } catch (const cepe::Error& e) {
    EXPECT_NE(std::string(e.what()).find((dir / "vocab.txt").string()), std::string::npos)
        << e.what();
  }
  {
    std::ofstream v(dir / "vocab.txt");
    for (const auto& t : kVocab) v << t << "\n";
    std::ofstream c(dir / "tokenizer_config.json");
    c << R"({"do_lower_case": false, "model_max_length": 64,
            "unk_token": {"content": "[UNK]", "lstrip": false}})";
  }
  const WordPiece wp = WordPiece::load(dir);
  EXPECT_FALSE(wp.options().lower_case);
  EXPECT_EQ(wp.options().model_max_length, 64);
  EXPECT_EQ(wp.size(), static_cast<int32_t>(kVocab.size()));
  EXPECT_EQ(wp.id("Café"), 20);
  {
    std::ofstream c(dir / "tokenizer_config.json");
    c << R"({"unk_token": "<unk>"})";
  }
  try {
    WordPiece::load(dir);
    FAIL() << "missing unk token accepted";
  } catch (const cepe::Error& e) {
    EXPECT_NE(std::string(e.what()).find("<unk>"), std::string::npos) << e.what();
  }
}

}  // namespace
