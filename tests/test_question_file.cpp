// Question files: JSON lines, JSON arrays and TSV; every kind of bad line with its FILE:LINE; the
// shared NQ-open and squad-train question files.
#include <gtest/gtest.h>

#include <fstream>

#include "common/error.h"
#include "qa/question_file.h"
#include "tests/test_util.h"

namespace {

using cepe::qa::load_questions;
using cepe::qa::Question;
using cepe::qa::QuestionFileOptions;
using cepe::qa::QuestionFormat;
using cepe::qa::QuestionSet;

std::filesystem::path write(const std::string& name, const std::string& content) {
  static const std::filesystem::path dir = cepe::test::temp_dir("qa-questions");
  const std::filesystem::path path = dir / name;
  std::ofstream(path, std::ios::binary) << content;
  return path;
}

// The message of the cepe::Error that loading throws ("" when it does not throw).
std::string load_error(const std::filesystem::path& path, QuestionFileOptions options = {}) {
  try {
    load_questions(path, options);
  } catch (const cepe::Error& e) {
    return e.message();
  }
  return "";
}

const char* kGood = R"({"question": "who wrote hamlet", "answers": ["Shakespeare"]})";

struct BadLineCase {
  std::string line;
  std::string what;
};

// Each bad line follows a good line and a blank line, so it is on line 3.
const std::vector<BadLineCase> kBadLines = {
    {R"({"question": "x", "answers": ["a"])",
     "invalid JSON: Missing a comma or '}' after an object member. (at column 35)"},
    {R"({"question": "x", "answers": ["a"]} {"question": "y"})",
     "invalid JSON: The document root must not be followed by other values. (at column 37)"},
    {R"(["question", "answers"])", "expected a JSON object"},
    {R"({"answers": ["a"]})", "missing \"question\""},
    {R"({"question": 7, "answers": ["a"]})", "\"question\" must be a string"},
    {R"({"question": null, "answers": ["a"]})", "\"question\" must be a string"},
    {R"({"question": "", "answers": ["a"]})", "empty question"},
    {R"({"question": " \t ", "answers": ["a"]})", "empty question"},
    {R"({"question": "x"})", "missing gold answers (\"answers\" or \"answer\")"},
    {R"({"question": "x", "answers": 5})", "\"answers\" must be a string or a list of strings"},
    {R"({"question": "x", "answer": {"value": "a"}})",
     "\"answer\" must be a string or a list of strings"},
    {R"({"question": "x", "answers": ["a", 1]})", "\"answers\"[1] must be a string"},
    {R"({"question": "x", "answers": [["a"], ["b", null]]})", "\"answers\"[1][1] must be a string"},
    {R"({"question": "x", "answers": []})", "\"answers\" is empty"},
    {R"({"question": "x", "answers": ["a"], "id": 1.5})", "\"id\" must be a string or an integer"},
    {R"({"question": "x", "answers": ["a"], "id": ""})", "\"id\" is empty"},
    {"{\"question\": \"caf\xE9\", \"answers\": [\"a\"]}", "invalid UTF-8 at column 18"},
    {R"({"question": "\ud800", "answers": ["a"]})",
     "invalid JSON: The surrogate pair in string is invalid. (at column 15)"},
    {R"({"question": "a\udc00", "answers": ["a"]})",
     "invalid JSON: the escape \\udc00 is the second half of a UTF-16 surrogate pair without its "
     "first (at column 16)"},
    {R"({"question": "x", "answers": ["a"], "ctxs": {"text": "t"}})",
     "\"ctxs\" must be a list of passages"},
    {R"({"question": "x", "answers": ["a"], "ctxs": ["t"]})", "\"ctxs\"[0] must be an object"},
    {R"({"question": "x", "answers": ["a"], "ctxs": [{"text": "t"}, {"title": "T"}]})",
     "\"ctxs\"[1] has no \"text\""},
    {R"({"question": "x", "answers": ["a"], "ctxs": [{"text": 3}]})",
     "\"ctxs\"[0].text must be a string"},
    {R"({"question": "x", "answers": ["a"], "ctxs": [{"text": "t", "title": 1}]})",
     "\"ctxs\"[0].title must be a string"},
    {R"({"question": "x", "answers": ["a"], "ctxs": [{"text": "t", "score": "high"}]})",
     "\"ctxs\"[0].score must be a number or a numeric string"},
    {R"({"question": "x", "answers": ["a"], "ctxs": [{"text": "t", "id": [1]}]})",
     "\"ctxs\"[0].id must be a string or an integer"},
    {R"({"question": "x", "answers": ["a"], "passage_id": {"id": 1}})",
     "\"passage_id\" must be a string or an integer"},
};

TEST(QuestionFile, EveryBadLineIsReportedWithFileAndLine) {
  for (size_t i = 0; i < kBadLines.size(); ++i) {
    const auto path = write("bad" + std::to_string(i) + ".jsonl",
                            std::string(kGood) + "\n\n" + kBadLines[i].line + "\n");
    EXPECT_EQ(load_error(path), path.string() + ":3: " + kBadLines[i].what) << kBadLines[i].line;
  }
}

TEST(QuestionFile, SkipInvalidCollectsEveryBadLine) {
  std::string content;
  std::vector<std::string> expected;
  size_t line = 0;
  for (const BadLineCase& c : kBadLines) {
    content += std::string(kGood).insert(1, "\"id\": \"g" + std::to_string(line) + "\", ") + "\n";
    content += c.line + "\n";
    line += 2;
    // Built by appending: `"literal" + std::string&&` trips GCC 12's -Wrestrict false positive.
    std::string where = ":";
    where += std::to_string(line);
    where += ": ";
    expected.push_back(where + c.what);
  }
  const auto path = write("many-bad.jsonl", content);
  QuestionFileOptions options;
  options.skip_invalid = true;
  const QuestionSet set = load_questions(path, options);
  EXPECT_EQ(set.questions.size(), kBadLines.size());
  ASSERT_EQ(set.errors.size(), expected.size());
  for (size_t i = 0; i < expected.size(); ++i) {
    EXPECT_EQ(set.errors[i], path.string() + expected[i]);
  }
  // Strict mode stops at the first one.
  EXPECT_EQ(load_error(path), path.string() + expected[0]);
}

TEST(QuestionFile, DuplicateIdsAreBadLines) {
  const auto path = write("dup.jsonl",
                          "{\"id\": \"q1\", \"question\": \"a\", \"answer\": \"x\"}\n"
                          "{\"id\": \"q2\", \"question\": \"b\", \"answer\": \"y\"}\n"
                          "{\"id\": \"q1\", \"question\": \"c\", \"answer\": \"z\"}\n"
                          // a default id is the line number: "4" clashes with an explicit 4
                          "{\"question\": \"d\", \"answer\": \"w\"}\n"
                          "{\"id\": 4, \"question\": \"e\", \"answer\": \"v\"}\n");
  EXPECT_EQ(load_error(path), path.string() + ":3: duplicate id \"q1\" (first on line 1)");
  QuestionFileOptions options;
  options.skip_invalid = true;
  const QuestionSet set = load_questions(path, options);
  ASSERT_EQ(set.questions.size(), 3u);
  ASSERT_EQ(set.errors.size(), 2u);
  EXPECT_EQ(set.errors[1], path.string() + ":5: duplicate id \"4\" (first on line 4)");
}

TEST(QuestionFile, ReadsEveryField) {
  const auto path =
      write("fields.jsonl",
            "\xEF\xBB\xBF{\"question\": \"where is the eiffel tower\", \"answer\": \"Paris\"}\r\n"
            "{\"id\": \"nq-7\", \"question\": \"q2\", \"answers\": [\"a\", \"b\"], \"extra\": 1}\n"
            "\n"
            "{\"id\": 42, \"question\": \"q3\", \"answer\": [[\"x\", \"y\"], \"z\"],"
            " \"passage_id\": \"p-9\"}\n"
            "{\"question\": \"q4\", \"answers\": [\"Zürich\"], \"ctxs\": ["
            "{\"id\": \"w1\", \"title\": \"T1\", \"text\": \"text one\", \"score\": \"1.5\"},"
            "{\"text\": \"text two\", \"score\": -2},"
            "{\"id\": 7, \"title\": null, \"text\": \"text three\", \"hasanswer\": true}]}\n"
            "{\"question\": \"q5\", \"answers\": [\"a\"], \"ctxs\": []}");  // no final newline
  const QuestionSet set = load_questions(path);
  EXPECT_EQ(set.format, QuestionFormat::kJsonl);
  ASSERT_EQ(set.questions.size(), 5u);
  const Question& q1 = set.questions[0];
  EXPECT_EQ(q1.id, "1");
  EXPECT_TRUE(q1.numeric_id);
  EXPECT_EQ(q1.question, "where is the eiffel tower");
  EXPECT_EQ(q1.answers, std::vector<std::string>{"Paris"});
  EXPECT_FALSE(q1.ctxs.has_value());
  EXPECT_EQ(q1.line, 1u);

  EXPECT_EQ(set.questions[1].id, "nq-7");
  EXPECT_FALSE(set.questions[1].numeric_id);
  EXPECT_EQ(set.questions[1].answers, (std::vector<std::string>{"a", "b"}));

  const Question& q3 = set.questions[2];
  EXPECT_EQ(q3.id, "42");
  EXPECT_TRUE(q3.numeric_id);
  EXPECT_EQ(q3.line, 4u);
  EXPECT_EQ(q3.answers, (std::vector<std::string>{"x", "y", "z"}));
  EXPECT_EQ(q3.gold_passage_id, "p-9");

  const Question& q4 = set.questions[3];
  EXPECT_EQ(q4.answers, std::vector<std::string>{"Zürich"});
  ASSERT_TRUE(q4.ctxs.has_value());
  ASSERT_EQ(q4.ctxs->size(), 3u);
  EXPECT_EQ((*q4.ctxs)[0].id, "w1");
  EXPECT_EQ((*q4.ctxs)[0].title, "T1");
  EXPECT_EQ((*q4.ctxs)[0].text, "text one");
  EXPECT_EQ((*q4.ctxs)[0].score, 1.5);
  EXPECT_EQ((*q4.ctxs)[1].id, "");
  EXPECT_EQ((*q4.ctxs)[1].score, -2.0);
  EXPECT_EQ((*q4.ctxs)[2].id, "7");
  EXPECT_EQ((*q4.ctxs)[2].title, "");
  EXPECT_FALSE((*q4.ctxs)[2].score.has_value());

  ASSERT_TRUE(set.questions[4].ctxs.has_value());
  EXPECT_TRUE(set.questions[4].ctxs->empty());
}

TEST(QuestionFile, AnswersCanBeOptional) {
  const auto path =
      write("no-gold.jsonl", "{\"question\": \"a\"}\n{\"question\": \"b\", \"answers\": []}\n");
  EXPECT_EQ(load_error(path),
            path.string() + ":1: missing gold answers (\"answers\" or \"answer\")");
  QuestionFileOptions options;
  options.require_answers = false;
  const QuestionSet set = load_questions(path, options);
  ASSERT_EQ(set.questions.size(), 2u);
  EXPECT_TRUE(set.questions[0].answers.empty());
}

TEST(QuestionFile, JsonArrayNamesTheElementLine) {
  const auto good =
      write("array.json",
            "[\n  {\"question\": \"a\", \"answer\": \"x\"},\n"
            "  {\"question\": \"b {[\\\"\", \"answer\": [\"y\"]}, {\"question\": \"c\","
            "\n   \"answer\": \"z\"}\n]\n");
  const QuestionSet set = load_questions(good);
  EXPECT_EQ(set.format, QuestionFormat::kJson);
  ASSERT_EQ(set.questions.size(), 3u);
  EXPECT_EQ(set.questions[1].question, "b {[\"");
  EXPECT_EQ(set.questions[2].id, "3");  // element number
  EXPECT_EQ(set.questions[2].line, 3u);

  const auto bad = write("bad-array.json",
                         "[\n  {\"question\": \"a\", \"answer\": \"x\"},\n\n"
                         "  {\"question\": \"\", \"answer\": \"y\"}\n]\n");
  EXPECT_EQ(load_error(bad), bad.string() + ":4: item 2: empty question");
  const auto broken =
      write("broken-array.json", "[\n  {\"question\": \"a\",\n  \"answer\" \"x\"}\n]");
  EXPECT_EQ(load_error(broken),
            broken.string() +
                ":3: invalid JSON: Missing a colon after a name of object member. "
                "(at column 12)");

  // Too deep: the line and column of the bracket past the limit (this had read "No error." at
  // line 1, as the depth check failed before the parser ran).
  const auto deep = write("deep-array.json", "[\n  " + std::string(64, '[') + std::string(65, ']'));
  EXPECT_EQ(load_error(deep),
            deep.string() + ":2: invalid JSON: nests deeper than 64 levels (at column 66)");

  // A .json file holding JSON lines is read as JSON lines.
  const auto lines = write("lines.json", std::string(kGood) + "\n" + kGood + "\n");
  const QuestionSet ls = load_questions(lines);
  EXPECT_EQ(ls.format, QuestionFormat::kJsonl);
  EXPECT_EQ(ls.questions.size(), 2u);
}

TEST(QuestionFile, Tsv) {
  const auto path =
      write("qas.tsv",
            "question\tanswers\n"
            "who got the first nobel prize in physics\t['Wilhelm Conrad Röntgen']\n"
            "who sings ain't nothing but a good time\t[\"Poison\", \"Bret Michaels\"]\n"
            "\n"
            "escapes\t['caf\\xe9', \"it's\", 'a\\'b', '\\u00fc\\\\']\r\n"
            "json escapes\t[\"caf\\u00e9\"]\n");
  const QuestionSet set = load_questions(path);
  EXPECT_EQ(set.format, QuestionFormat::kTsv);
  ASSERT_EQ(set.questions.size(), 4u);
  EXPECT_EQ(set.questions[0].id, "2");
  EXPECT_EQ(set.questions[0].question, "who got the first nobel prize in physics");
  EXPECT_EQ(set.questions[0].answers, std::vector<std::string>{"Wilhelm Conrad Röntgen"});
  EXPECT_EQ(set.questions[1].answers, (std::vector<std::string>{"Poison", "Bret Michaels"}));
  EXPECT_EQ(set.questions[2].answers, (std::vector<std::string>{"café", "it's", "a'b", "ü\\"}));
  EXPECT_EQ(set.questions[3].answers, std::vector<std::string>{"café"});

  // .csv is the DPR name for the same layout.
  const auto csv = write("qas.csv", "what is two plus two\t['4', 'four']\n");
  EXPECT_EQ(load_questions(csv).questions[0].answers, (std::vector<std::string>{"4", "four"}));
}

TEST(QuestionFile, TsvBadLines) {
  const std::vector<BadLineCase> cases = {
      {"a\t[\"x\"]\textra", "expected 2 tab-separated columns (question, answers), found 3"},
      {" \t[\"x\"]", "empty question"},
      {"who", "missing the answers column (question TAB answers)"},
      {"who\tParis", "the answers column must be a list such as [\"Paris\"]"},
      {"who\t{\"a\": 1}", "the answers column must be a list such as [\"Paris\"]"},
      {"who\t[\"x\", 3]", "\"answers\"[1] must be a string"},
      {"who\t['x' 'y']",
       "the answers column is neither a JSON list of strings nor a Python list literal (invalid "
       "JSON: Invalid value. (at column 2))"},
      {"who\t[]", "no gold answers"},
      {"caf\xE9\t[\"x\"]", "invalid UTF-8 at column 4"},
  };
  for (size_t i = 0; i < cases.size(); ++i) {
    const auto path =
        write("bad" + std::to_string(i) + ".tsv", "good\t[\"a\"]\n\n" + cases[i].line + "\n");
    EXPECT_EQ(load_error(path), path.string() + ":3: " + cases[i].what) << cases[i].line;
  }
}

TEST(QuestionFile, FormatSelection) {
  EXPECT_EQ(cepe::qa::format_for_extension("a/b.JSONL"), QuestionFormat::kJsonl);
  EXPECT_EQ(cepe::qa::format_for_extension("b.json"), QuestionFormat::kJson);
  EXPECT_EQ(cepe::qa::format_for_extension("b.tsv"), QuestionFormat::kTsv);
  EXPECT_EQ(cepe::qa::format_for_extension("b.csv"), QuestionFormat::kTsv);
  EXPECT_THROW(cepe::qa::format_for_extension("b.txt"), cepe::Error);
  EXPECT_EQ(cepe::qa::parse_question_format("TSV"), QuestionFormat::kTsv);
  EXPECT_EQ(cepe::qa::parse_question_format("csv"), QuestionFormat::kTsv);
  EXPECT_THROW(cepe::qa::parse_question_format("xml"), cepe::Error);

  const auto txt = write("questions.txt", std::string(kGood) + "\n");
  EXPECT_NE(load_error(txt).find("cannot tell the question file format from the extension '.txt'"),
            std::string::npos);
  QuestionFileOptions options;
  options.format = QuestionFormat::kJsonl;
  EXPECT_EQ(load_questions(txt, options).questions.size(), 1u);
  // The override wins over the extension.
  const auto tsv_named_jsonl = write("really-tsv.jsonl", "who\t[\"x\"]\n");
  options.format = QuestionFormat::kTsv;
  EXPECT_EQ(load_questions(tsv_named_jsonl, options).questions.size(), 1u);
}

TEST(QuestionFile, UnreadableOrEmptyFiles) {
  const auto missing = write("x.jsonl", "").parent_path() / "missing.jsonl";
  EXPECT_NE(load_error(missing).find("cannot open question file " + missing.string()),
            std::string::npos);
  const auto empty = write("empty.jsonl", "\n  \n");
  EXPECT_EQ(load_error(empty), empty.string() + ": no questions");
  const auto all_bad = write("all-bad.jsonl", "{}\n");
  QuestionFileOptions options;
  options.skip_invalid = true;
  EXPECT_EQ(load_error(all_bad, options),
            all_bad.string() + ": no valid questions (1 bad lines; the first: " + all_bad.string() +
                ":1: missing \"question\")");
}

TEST(QuestionFileShared, NqOpenEfficientQaDev) {
  CEPE_REQUIRE_SHARED("data/nq-open/NQ-open.efficientqa.dev.1.1.jsonl", path);
  const QuestionSet set = load_questions(path);
  ASSERT_EQ(set.questions.size(), 1800u);
  EXPECT_TRUE(set.errors.empty());
  const Question& first = set.questions.front();
  EXPECT_EQ(first.id, "1");  // no ids in the file: line numbers
  EXPECT_EQ(first.question, "the last time la dodgers won the world series");
  EXPECT_EQ(first.answers, std::vector<std::string>{"1988"});
  EXPECT_EQ(set.questions[2].answers, (std::vector<std::string>{"Salzburg, Austria", "Austria"}));
  EXPECT_EQ(set.questions[11].answers, std::vector<std::string>{"António Guterres"});
  for (const Question& q : set.questions) {
    EXPECT_FALSE(q.answers.empty()) << q.id;
    EXPECT_FALSE(q.ctxs.has_value()) << q.id;
  }
}

TEST(QuestionFileShared, SquadTrain) {
  CEPE_REQUIRE_SHARED("data/squad-train/questions.jsonl", path);
  const QuestionSet set = load_questions(path);
  ASSERT_EQ(set.questions.size(), 87599u);
  const Question& first = set.questions.front();
  EXPECT_EQ(first.id, "squad-train-2008_Sichuan_earthquake-0-q0");
  EXPECT_FALSE(first.numeric_id);
  EXPECT_EQ(first.question, "In what year did the earthquake in Sichuan occur?");
  EXPECT_EQ(first.answers, std::vector<std::string>{"2008"});
  EXPECT_EQ(first.gold_passage_id, "squad-train-2008_Sichuan_earthquake-0");
  for (const Question& q : set.questions) {
    ASSERT_FALSE(q.gold_passage_id.empty()) << q.id;
    ASSERT_EQ(q.answers.size(), 1u) << q.id;
  }
}

}  // namespace
