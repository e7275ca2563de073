// Answer normalisation, EM, F1 and substring match on hand-checked cases, and a cross-check
// against an independent Python implementation of the official scoring (tests/reference).
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdlib>
#include <fstream>
#include <random>
#include <sstream>

#include "common/error.h"
#include "qa/scoring.h"
#include "tests/test_util.h"

namespace {

using cepe::qa::AnswerMatcher;
using cepe::qa::exact_match;
using cepe::qa::F1Rule;
using cepe::qa::normalize_answer;
using cepe::qa::score_answer;
using cepe::qa::substring_match;
using cepe::qa::token_f1;

TEST(QaNormalize, LowerCasesAndDropsArticlesAndPunctuation) {
  EXPECT_EQ(normalize_answer("The Eiffel Tower!"), "eiffel tower");
  EXPECT_EQ(normalize_answer("  A  an THE  "), "");
  EXPECT_EQ(normalize_answer("an apple a day"), "apple day");
  EXPECT_EQ(normalize_answer("Theatre and Anthem"), "theatre and anthem");
  // Punctuation goes before articles, so hyphenated and underscored articles merge into words.
  EXPECT_EQ(normalize_answer("the-end"), "theend");
  EXPECT_EQ(normalize_answer("The_Beatles"), "thebeatles");
  EXPECT_EQ(normalize_answer("U.S.A."), "usa");
  EXPECT_EQ(normalize_answer("Mr. O'Neil"), "mr oneil");
  EXPECT_EQ(normalize_answer("a\tb\n\nc\r d"), "b c d");
  EXPECT_EQ(normalize_answer(""), "");
}

TEST(QaNormalize, PunctuationOnlyAnswersBecomeEmpty) {
  EXPECT_EQ(normalize_answer("..."), "");
  EXPECT_EQ(normalize_answer("?!"), "");
  EXPECT_EQ(normalize_answer("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~"), "");
  EXPECT_TRUE(exact_match("...", "!!"));
  EXPECT_FALSE(exact_match("...", "a b"));
  EXPECT_EQ(token_f1("...", "!!"), 0.0);  // SQuAD v1.1: no common token, so 0 even for "" == ""
  EXPECT_TRUE(substring_match("anything at all", "..."));  // "" is in every string
}

TEST(QaNormalize, Numbers) {
  EXPECT_EQ(normalize_answer("1,000"), "1000");
  EXPECT_EQ(normalize_answer("3.14"), "314");
  EXPECT_EQ(normalize_answer("$5"), "5");
  EXPECT_EQ(normalize_answer("50%"), "50");
  EXPECT_EQ(normalize_answer("1 000"), "1 000");
  EXPECT_TRUE(exact_match("69,197", "69197"));
  EXPECT_FALSE(exact_match("1988", "1989"));
  // Non-ASCII digits and dashes are not string.punctuation: they stay.
  EXPECT_EQ(normalize_answer("1914\u20131918"), "1914\u20131918");
  EXPECT_EQ(normalize_answer("\u0663"), "\u0663");
}

TEST(QaNormalize, Unicode) {
  EXPECT_EQ(normalize_answer("Zürich"), "zürich");
  EXPECT_EQ(normalize_answer("ZÜRICH"), "zürich");
  EXPECT_TRUE(exact_match("ZÜRICH", "zürich"));
  EXPECT_EQ(normalize_answer("Café"), "café");
  EXPECT_FALSE(exact_match("café", "cafe"));
  // No Unicode normalisation: precomposed and decomposed é differ, as in the Python scorer.
  EXPECT_FALSE(exact_match("caf\u00e9", "cafe\u0301"));
  EXPECT_TRUE(exact_match("António Guterres", "ANTÓNIO GUTERRES"));
  EXPECT_EQ(normalize_answer("İstanbul"), "i\u0307stanbul");  // str.lower() of U+0130
  EXPECT_EQ(normalize_answer("ΟΔΟΣ"), "οδος");                // final sigma
  EXPECT_EQ(normalize_answer("Σ"), "σ");
  EXPECT_EQ(normalize_answer("Straße"), "straße");
  EXPECT_FALSE(exact_match("STRASSE", "Straße"));
  EXPECT_EQ(normalize_answer("\u212A"), "k");  // Kelvin sign lowers to ASCII k
  // Non-ASCII punctuation is not removed; non-breaking and ideographic spaces split words.
  EXPECT_EQ(normalize_answer("«Paris»"), "«paris»");
  EXPECT_EQ(normalize_answer("\u201cHello\u201d"), "\u201chello\u201d");
  EXPECT_EQ(normalize_answer("New\u00a0York\u3000City"), "new york city");
  // Article boundaries follow Unicode \w: é is a word character, an en dash is not.
  EXPECT_EQ(normalize_answer("a\u00e9"), "a\u00e9");
  EXPECT_EQ(normalize_answer("a\u2013b"), "\u2013b");
  EXPECT_EQ(normalize_answer("日本 the 東京"), "日本 東京");
}

TEST(QaNormalize, InvalidUtf8IsKeptByteForByte) {
  EXPECT_EQ(normalize_answer("CAF\xC9!"), "caf\xC9");
  EXPECT_EQ(normalize_answer("\xFF the \xFE"), "\xFF \xFE");
  // A raw byte is not a word character, so the article next to it is a whole word.
  EXPECT_EQ(normalize_answer("the\xE9"), "\xE9");
  // Raw bytes that happen to spell a character after normalisation still differ from it.
  EXPECT_FALSE(exact_match("\xE2.\x82\xAC", "\u20ac"));
  EXPECT_EQ(normalize_answer("\xE2.\x82\xAC"), "\xE2\x82\xAC");
}

TEST(QaF1, PartialOverlaps) {
  // "cat sat on mat" vs "cat on mat": 3 common, p = 3/4, r = 1.
  EXPECT_NEAR(token_f1("the cat sat on the mat", "a cat on a mat"), 6.0 / 7.0, 1e-15);
  // Multiplicity: one "paris" in the gold matches only one of three.
  EXPECT_NEAR(token_f1("paris paris paris", "Paris"), 0.5, 1e-15);
  EXPECT_NEAR(token_f1("paris paris", "paris paris"), 1.0, 1e-15);
  EXPECT_NEAR(token_f1("new york city", "York, New"), 0.8, 1e-15);
  EXPECT_NEAR(token_f1("Barack Obama", "Obama"), 2.0 / 3.0, 1e-15);
  // p = 2/5, r = 2/3: f1 = 2 * (2/5)(2/3) / (2/5 + 2/3) = 1/2.
  EXPECT_NEAR(token_f1("one two three four five", "two four six"), 0.5, 1e-15);
  EXPECT_EQ(token_f1("London", "Paris"), 0.0);
  EXPECT_EQ(token_f1("", "Paris"), 0.0);
}

TEST(QaF1, CepeYesNoRule) {
  EXPECT_EQ(token_f1("yes", "yes indeed", F1Rule::kCepe), 0.0);
  EXPECT_NEAR(token_f1("yes", "yes indeed", F1Rule::kSquad), 2.0 / 3.0, 1e-15);
  EXPECT_EQ(token_f1("no way", "No", F1Rule::kCepe), 0.0);
  EXPECT_NEAR(token_f1("no way", "No", F1Rule::kSquad), 2.0 / 3.0, 1e-15);
  EXPECT_EQ(token_f1("Yes.", "yes", F1Rule::kCepe), 1.0);
  EXPECT_EQ(token_f1("noanswer", "noanswer", F1Rule::kCepe), 1.0);
}

TEST(QaScore, MaxOverSeveralGolds) {
  auto s = score_answer("Paris, France", {"London", "paris", "France"});
  EXPECT_FALSE(s.exact_match);
  EXPECT_NEAR(s.f1, 2.0 / 3.0, 1e-15);
  EXPECT_TRUE(s.substring);

  s = score_answer("Paris", {"London", "the Paris"});
  EXPECT_TRUE(s.exact_match);
  EXPECT_EQ(s.f1, 1.0);
  EXPECT_TRUE(s.substring);

  s = score_answer("It was in 1988.", {"1989", "1988"});
  EXPECT_FALSE(s.exact_match);
  EXPECT_NEAR(s.f1, 0.4, 1e-15);  // "it was in 1988" vs "1988": p = 1/4, r = 1
  EXPECT_TRUE(s.substring);

  s = score_answer("Salzburg", {"Salzburg, Austria", "Austria"});
  EXPECT_FALSE(s.exact_match);
  EXPECT_NEAR(s.f1, 2.0 / 3.0, 1e-15);
  EXPECT_FALSE(s.substring);  // gold in prediction, not the other way round

  EXPECT_THROW(score_answer("x", {}), cepe::Error);
}

TEST(QaScore, SubstringIsCharacterLevel) {
  EXPECT_TRUE(substring_match("the starting line", "art"));
  EXPECT_TRUE(substring_match("Paris, France", "paris"));
  EXPECT_FALSE(substring_match("Paris", "Paris, France"));
}

TEST(QaMatcher, FindsGoldInPassages) {
  AnswerMatcher m({"the Eiffel Tower", "..."});  // "..." normalises to "" and is dropped
  EXPECT_FALSE(m.empty());
  EXPECT_FALSE(m.matches("Nothing to see here."));
  EXPECT_TRUE(m.matches("Gustave Eiffel built the eiffel  tower."));
  EXPECT_EQ(m.first_match({"abc", "def", "the EIFFEL-tower"}), std::nullopt);  // "eiffeltower"
  EXPECT_EQ(m.first_match({"abc", "An Eiffel tower", "Eiffel Tower"}), 1u);
  AnswerMatcher none({"...", " the "});
  EXPECT_TRUE(none.empty());
  EXPECT_FALSE(none.matches("anything"));
}

// ---- cross-check against tests/reference/squad_eval.py ----

std::string to_hex(std::string_view s) {
  static const char* digits = "0123456789abcdef";
  std::string out;
  for (unsigned char c : s) {
    out.push_back(digits[c >> 4]);
    out.push_back(digits[c & 15]);
  }
  return out;
}

std::string from_hex(std::string_view h) {
  std::string out;
  for (size_t i = 0; i + 1 < h.size(); i += 2) {
    out.push_back(static_cast<char>(std::stoi(std::string(h.substr(i, 2)), nullptr, 16)));
  }
  return out;
}

struct Case {
  std::string prediction;
  std::vector<std::string> golds;
};

// Pieces chosen to hit every branch of the normaliser: articles in all cases and glued to
// punctuation, ASCII punctuation, numbers, yes/no, Unicode case mappings (final sigma, U+0130,
// Kelvin, titlecase digraphs), non-ASCII spaces and punctuation, combining marks, CJK, emoji,
// and bytes that are not UTF-8. All are assigned in old Unicode versions, so any python3 agrees.
std::vector<Case> generated_cases() {
  const std::vector<std::string> pieces = {"the",
                                           "The",
                                           "THE",
                                           "a",
                                           "A",
                                           "an",
                                           "An",
                                           "cat",
                                           "Cat",
                                           "sat",
                                           "on",
                                           "mat",
                                           "Paris",
                                           "paris",
                                           "France",
                                           "new",
                                           "York",
                                           "yes",
                                           "Yes",
                                           "no",
                                           "noanswer",
                                           "1,000",
                                           "1000",
                                           "3.14",
                                           "$5",
                                           "50%",
                                           "U.S.A.",
                                           "o'neil",
                                           "the-end",
                                           "the_end",
                                           "an-apple",
                                           "(the)",
                                           "\"a\"",
                                           "...",
                                           "!!",
                                           "-",
                                           "_",
                                           "Zürich",
                                           "ZÜRICH",
                                           "café",
                                           "cafe\u0301",
                                           "İstanbul",
                                           "ΟΔΟΣ",
                                           "Σ",
                                           "ΣΑΣ.",
                                           "aΣ",
                                           "Straße",
                                           "\u212A",
                                           "\u01C4",
                                           "\u01C5",
                                           "\u2167",
                                           "\u2460",
                                           "\u0663",
                                           "\uFB01",
                                           "\u00AD",
                                           "\u2013",
                                           "\u2014",
                                           "«",
                                           "»",
                                           "\u201c",
                                           "\u201d",
                                           "\u2019s",
                                           "日本",
                                           "東京",
                                           "\U0001F600",
                                           "\u00e9the",
                                           "the\u00e9",
                                           "\xE9",
                                           "\xC0\xAF",
                                           "\xED\xA0\x80",
                                           "\xE2\x82",
                                           "\xFF",
                                           "Ant\u00f3nio",
                                           "GUTERRES"};
  const std::vector<std::string> separators = {" ",  " ", " ",      "",       "  ",     "\t",  "\n",
                                               ", ", ".", "\u00a0", "\u3000", "\u2009", "\x1c"};
  std::mt19937 rng(20240601);
  auto pick = [&](const std::vector<std::string>& v) { return v[rng() % v.size()]; };
  auto phrase = [&](size_t max_pieces) {
    std::string s;
    const size_t n = rng() % (max_pieces + 1);
    for (size_t i = 0; i < n; ++i) {
      if (i > 0) s += pick(separators);
      s += pick(pieces);
    }
    return s;
  };
  std::vector<Case> cases;
  for (int i = 0; i < 200; ++i) {
    Case c;
    c.prediction = phrase(6);
    const size_t n_gold = 1 + rng() % 3;
    for (size_t g = 0; g < n_gold; ++g) {
      switch (rng() % 4) {
        case 0:  // unrelated
          c.golds.push_back(phrase(4));
          break;
        case 1: {  // the prediction re-cased and re-punctuated: often an exact match
          std::string s = c.prediction;
          for (char& ch : s) {
            if (ch >= 'a' && ch <= 'z' && rng() % 2) ch = static_cast<char>(ch - 32);
          }
          c.golds.push_back("The " + s + (rng() % 2 ? "." : ""));
          break;
        }
        default: {  // a slice of the prediction plus noise: partial overlaps
          const std::string& p = c.prediction;
          const size_t a = p.empty() ? 0 : rng() % p.size();
          const size_t b = a + (p.empty() ? 0 : rng() % (p.size() - a + 1));
          c.golds.push_back(p.substr(a, b - a) + (rng() % 2 ? " " + pick(pieces) : ""));
        }
      }
    }
    cases.push_back(std::move(c));
  }
  // The hand-checked cases above go through the reference too.
  cases.push_back({"the cat sat on the mat", {"a cat on a mat"}});
  cases.push_back({"yes", {"yes indeed"}});
  cases.push_back({"...", {"!!"}});
  cases.push_back({"Paris, France", {"London", "paris", "France"}});
  cases.push_back({"one two three four five", {"two four six"}});
  return cases;
}

TEST(QaScoringReference, AgreesWithPythonSquadEval) {
  const std::filesystem::path python = "/usr/bin/python3";
  if (!std::filesystem::exists(python)) {
    GTEST_SKIP() << "/usr/bin/python3 not found: skipping the cross-check against "
                    "tests/reference/squad_eval.py";
  }
  const std::filesystem::path script =
      cepe::test::source_dir() / "tests" / "reference" / "squad_eval.py";
  ASSERT_TRUE(std::filesystem::exists(script)) << script;

  const std::vector<Case> cases = generated_cases();
  const std::filesystem::path dir = cepe::test::temp_dir("qa-scoring-ref");
  const std::filesystem::path in = dir / "cases.tsv", out = dir / "reference.tsv";
  {
    std::ofstream f(in, std::ios::binary);
    for (const Case& c : cases) {
      f << to_hex(c.prediction);
      for (const std::string& g : c.golds) f << "\t" << to_hex(g);
      f << "\n";
    }
  }
  std::string log;
  const int rc = cepe::test::run_command("( " + python.string() + " " + script.string() + " " +
                                             in.string() + " > " + out.string() + " )",
                                         &log);
  ASSERT_EQ(rc, 0) << log;

  std::istringstream ref(cepe::test::read_file(out));
  std::string line;
  size_t n = 0, exact = 0, partial = 0, substring = 0, yes_no_differs = 0;
  while (std::getline(ref, line)) {
    ASSERT_LT(n, cases.size());
    const Case& c = cases[n];
    std::vector<std::string> f;  // split by hand: getline() drops a trailing empty field
    for (size_t start = 0;;) {
      const size_t tab = line.find('\t', start);
      f.push_back(line.substr(start, tab == std::string::npos ? std::string::npos : tab - start));
      if (tab == std::string::npos) break;
      start = tab + 1;
    }
    ASSERT_EQ(f.size(), 6u) << line;
    const std::string where = "case " + std::to_string(n) + ": prediction hex " +
                              to_hex(c.prediction) + ", first gold hex " + to_hex(c.golds[0]);

    EXPECT_EQ(normalize_answer(c.prediction), from_hex(f[0])) << where;
    EXPECT_EQ(normalize_answer(c.golds[0]), from_hex(f[5])) << where;
    const auto squad = score_answer(c.prediction, c.golds, F1Rule::kSquad);
    const auto cepe = score_answer(c.prediction, c.golds, F1Rule::kCepe);
    EXPECT_EQ(squad.exact_match, f[1] == "1") << where;
    EXPECT_EQ(squad.f1, std::strtod(f[2].c_str(), nullptr)) << where << " (" << f[2] << ")";
    EXPECT_EQ(cepe.f1, std::strtod(f[3].c_str(), nullptr)) << where << " (" << f[3] << ")";
    EXPECT_EQ(squad.substring, f[4] == "1") << where;
    EXPECT_EQ(cepe.exact_match, squad.exact_match);
    EXPECT_EQ(cepe.substring, squad.substring);

    exact += squad.exact_match;
    partial += squad.f1 > 0 && squad.f1 < 1;
    substring += squad.substring && !squad.exact_match;
    yes_no_differs += squad.f1 != cepe.f1;
    ++n;
  }
  EXPECT_EQ(n, cases.size());
  // The generator must keep exercising every outcome, or the agreement proves little.
  EXPECT_GE(exact, 20u);
  EXPECT_GE(partial, 20u);
  EXPECT_GE(substring, 10u);
  EXPECT_GE(yes_no_differs, 1u);
}

}  // namespace
