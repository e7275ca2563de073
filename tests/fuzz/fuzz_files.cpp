// Text files users hand to `cepe qa` (question files) and `cepe index build` (corpus files). Both
// readers must name the file and line of a bad record, and what they accept must be usable as is:
// valid UTF-8 (it goes into JSON answers and passage stores) and, for questions, non-empty. The
// first byte picks the reader, the format and the options.
#include "common/utf8.h"
#include "index/corpus.h"
#include "qa/question_file.h"
#include "tests/fuzz/fuzz_util.h"

using namespace cepe;

namespace {

void check_text(std::string_view what, std::string_view s) {
  if (!utf8_valid(s)) fuzz::fail(std::string(what) + " is not valid UTF-8");
}

void read_questions(const std::filesystem::path& path, uint8_t choice) {
  qa::QuestionFileOptions options;
  options.format = choice & 1 ? qa::QuestionFormat::kAuto : qa::QuestionFormat::kJson;
  options.skip_invalid = choice & 2;
  options.require_answers = choice & 4;
  const qa::QuestionSet set = qa::load_questions(path, options);
  if (set.questions.empty()) fuzz::fail("a question file with no question loaded");
  for (const auto& q : set.questions) {
    if (q.question.empty()) fuzz::fail("an empty question was accepted");
    check_text("a question", q.question);
    check_text("a question id", q.id);
    if (options.require_answers && q.answers.empty()) fuzz::fail("a question without answers");
    for (const auto& a : q.answers) check_text("an answer", a);
    if (q.ctxs)
      for (const auto& p : *q.ctxs) {
        check_text("a ctxs title", p.title);
        check_text("a ctxs text", p.text);
      }
  }
  for (const auto& e : set.errors)
    if (e.empty() || e.find('\n') != std::string::npos) fuzz::fail("a skipped line's message");
}

void read_corpus(const std::filesystem::path& path, uint8_t choice) {
  index::CorpusOptions options;
  options.skip_invalid = choice & 1;
  options.passage_words = 1 + (choice >> 1) % 40;
  options.overlap_words = (choice >> 4) % 8;
  index::CorpusReader reader({path}, options);
  reader.read([](const index::Passage& p) {
    if (p.id.empty() || p.text.empty()) fuzz::fail("a passage without id or text was accepted");
    check_text("a passage id", p.id);
    check_text("a passage title", p.title);
    check_text("a passage text", p.text);
  });
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const uint8_t choice = data[0];
  const std::string_view bytes = fuzz::as_text(data + 1, size - 1);
  static const char* const kQuestionNames[] = {"questions.jsonl", "questions.json", "questions.tsv",
                                               "questions.csv"};
  static const char* const kCorpusNames[] = {"corpus.jsonl", "corpus.tsv", "corpus.txt",
                                             "corpus.md"};
  if (choice & 0x80) {
    const auto path = fuzz::write_input(bytes, kCorpusNames[(choice >> 5) & 3]);
    fuzz::expect_clean([&] { read_corpus(path, choice); });
  } else {
    const auto path = fuzz::write_input(bytes, kQuestionNames[(choice >> 5) & 3]);
    fuzz::expect_clean([&] { read_questions(path, choice); });
  }
  return 0;
}
