// Result lines, --resume over a torn output, and the summary's arithmetic.
#include <gtest/gtest.h>

#include <fstream>
#include <functional>

#include <rapidjson/document.h>

#include "common/error.h"
#include "qa/results.h"
#include "tests/test_util.h"

namespace {

using cepe::qa::QaRecord;
using cepe::qa::QaSummary;
using cepe::qa::ResumeState;

std::filesystem::path temp_path(const std::string& name) {
  static const std::filesystem::path dir = cepe::test::temp_dir("qa-results");
  return dir / name;
}

// A record answered and scored the way the pipeline does it.
QaRecord answered(const std::string& id, const std::string& answer,
                  const std::vector<std::string>& gold, const std::vector<std::string>& passages) {
  cepe::qa::Question q;
  q.id = id;
  q.question = "question ";  // appended piecewise: GCC 12 misfires -Wrestrict on "lit" + str
  q.question += id;
  q.question += "?";
  q.answers = gold;
  QaRecord r = cepe::qa::make_record(q);
  r.answer = answer;
  for (size_t i = 0; i < passages.size(); ++i) r.passage_ids.push_back('p' + std::to_string(i));
  cepe::qa::score_record(&r, passages);
  r.prompt_tokens = 100;
  r.generated_tokens = 4;
  return r;
}

std::string error_of(const std::function<void()>& fn) {
  try {
    fn();
  } catch (const cepe::Error& e) {
    return e.message();
  }
  return "";
}

TEST(QaResults, RecordJsonRoundTrip) {
  QaRecord r = answered("q\"1\n", "The \"Paris\"!\t", {"Zürich", "the Paris"},
                        {"London is big", "Paris is in France", "paris again"});
  ASSERT_TRUE(r.scores.has_value());
  EXPECT_TRUE(r.scores->exact_match);
  EXPECT_EQ(r.first_hit_rank, 2u);
  const std::string line = cepe::qa::record_to_json(r);
  EXPECT_EQ(line.find('\n'), std::string::npos);
  EXPECT_EQ(line,
            "{\"id\":\"q\\\"1\\n\",\"question\":\"question q\\\"1\\n?\",\"answer\":\"The "
            "\\\"Paris\\\"!\\t\",\"gold\":[\"Zürich\",\"the Paris\"],\"em\":1,\"f1\":1.0,"
            "\"substring\":1,\"passages\":[\"p0\",\"p1\",\"p2\"],\"retrieval_hit\":true,"
            "\"hit_rank\":2,\"prompt_tokens\":100,\"generated_tokens\":4}");
  const QaRecord back = cepe::qa::record_from_json(line, "here");
  EXPECT_EQ(back.id, r.id);
  EXPECT_EQ(back.question, r.question);
  EXPECT_EQ(back.answer, r.answer);
  EXPECT_EQ(back.gold, r.gold);
  EXPECT_EQ(back.passage_ids, r.passage_ids);
  EXPECT_EQ(back.first_hit_rank, r.first_hit_rank);
  ASSERT_TRUE(back.scores.has_value());
  EXPECT_EQ(back.scores->f1, 1.0);

  // Numeric ids stay numbers; no gold means null scores; no passages means no retrieval verdict.
  QaRecord n = answered("17", "x", {}, {"a"});
  n.numeric_id = true;
  EXPECT_FALSE(n.scores.has_value());
  EXPECT_FALSE(n.first_hit_rank.has_value());
  const std::string nl = cepe::qa::record_to_json(n);
  EXPECT_NE(nl.find("{\"id\":17,"), std::string::npos) << nl;
  EXPECT_NE(nl.find("\"em\":null,\"f1\":null,\"substring\":null"), std::string::npos) << nl;
  EXPECT_NE(nl.find("\"retrieval_hit\":null,\"hit_rank\":null"), std::string::npos) << nl;
  const QaRecord nb = cepe::qa::record_from_json(nl, "here");
  EXPECT_EQ(nb.id, "17");
  EXPECT_TRUE(nb.numeric_id);

  QaRecord miss = answered("m", "x", {"gold"}, {"nothing", "here"});
  EXPECT_EQ(miss.first_hit_rank, 0u);
  const std::string ml = cepe::qa::record_to_json(miss);
  EXPECT_NE(ml.find("\"retrieval_hit\":false,\"hit_rank\":null"), std::string::npos) << ml;
  EXPECT_EQ(cepe::qa::record_from_json(ml, "here").first_hit_rank, 0u);

  // The answer's log-probability is written only when recorded, and read back exactly.
  miss.answer_logprob = -1.375;
  const std::string ll = cepe::qa::record_to_json(miss);
  EXPECT_NE(ll.find(",\"generated_tokens\":4,\"answer_logprob\":-1.375}"), std::string::npos) << ll;
  EXPECT_EQ(cepe::qa::record_from_json(ll, "here").answer_logprob, -1.375);
  EXPECT_FALSE(cepe::qa::record_from_json(ml, "here").answer_logprob.has_value());
}

TEST(QaResults, MalformedLinesAreRejected) {
  const std::string good = cepe::qa::record_to_json(answered("a", "x", {"x"}, {"x y"}));
  auto with = [&](const std::string& from, const std::string& to) {
    std::string s = good;
    const size_t at = s.find(from);
    EXPECT_NE(at, std::string::npos) << from;
    return s.replace(at, from.size(), to);
  };
  const std::vector<std::pair<std::string, std::string>> cases = {
      {good.substr(0, 20),
       "W: invalid JSON: Missing a colon after a name of object member. (at column 21)"},
      {"[]", "W: expected a JSON object"},
      {with("\"id\":\"a\",", ""), "W: missing \"id\""},
      {with("\"id\":\"a\"", "\"id\":1.5"), "W: \"id\" must be a string or an integer"},
      {with("\"em\":1", "\"em\":0.5"), "W: \"em\" is out of range: 0.5"},
      {with("\"f1\":1.0", "\"f1\":null"),
       "W: \"em\", \"f1\" and \"substring\" must be all numbers or all null"},
      {with("\"gold\":[\"x\"]", "\"gold\":[]"),
       "W: scores must be present exactly when there are gold answers"},
      {with("\"hit_rank\":1", "\"hit_rank\":2"),
       "W: \"hit_rank\" must be a rank between 1 and the number of passages"},
      {with("\"retrieval_hit\":true", "\"retrieval_hit\":1"),
       "W: \"retrieval_hit\" must be true, false or null"},
      {with("\"generated_tokens\":4", "\"generated_tokens\":-4"),
       "W: \"generated_tokens\" must be a non-negative integer"},
      {with("\"answer\":\"x\"", "\"answer\":\"\xC3\""), "W: invalid UTF-8 at column 46"},
      {with("\"generated_tokens\":4", "\"generated_tokens\":4,\"answer_logprob\":0.5"),
       "W: \"answer_logprob\" must be a number <= 0 (a log-probability) or null"},
      {with("\"generated_tokens\":4", "\"generated_tokens\":4,\"answer_logprob\":\"-1\""),
       "W: \"answer_logprob\" must be a number <= 0 (a log-probability) or null"},
  };
  for (const auto& [line, message] : cases) {
    EXPECT_EQ(error_of([&] { cepe::qa::record_from_json(line, "W"); }), message) << line;
  }
  // The writer refuses what the reader would refuse.
  QaRecord unscored = answered("u", "x", {"x"}, {});
  unscored.scores.reset();
  EXPECT_THROW(cepe::qa::record_to_json(unscored), cepe::Error);
}

TEST(QaResults, ResumeCutsATornLastLine) {
  const auto out = temp_path("torn.jsonl");
  const QaRecord r1 = answered("q1", "Paris", {"Paris"}, {"Paris is nice"});
  const QaRecord r2 = answered("q2", "1988", {"1989"}, {});
  const QaRecord r3 = answered("q3", "blue", {"Blue"}, {"x", "the sky is BLUE."});
  const QaRecord r4 = answered("q4", "x", {"y"}, {});
  {
    cepe::qa::ResultWriter w(out, /*append=*/false);
    w.write(r1);
    w.write(r2);
    w.write(r3);
    EXPECT_EQ(w.lines_written(), 3u);
  }
  const std::string complete = cepe::test::read_file(out);
  // A run killed in the middle of the fourth line.
  const std::string fourth = cepe::qa::record_to_json(r4);
  { std::ofstream(out, std::ios::app | std::ios::binary) << fourth.substr(0, 25); }

  ResumeState state = cepe::qa::load_for_resume(out);
  EXPECT_TRUE(state.existed);
  EXPECT_EQ(state.torn_bytes, 25u);
  ASSERT_EQ(state.records.size(), 3u);
  EXPECT_EQ(state.record_lines, (std::vector<size_t>{1, 2, 3}));
  EXPECT_EQ(state.done_ids, (std::unordered_set<std::string>{"q1", "q2", "q3"}));
  EXPECT_EQ(state.records[2].first_hit_rank, 2u);
  EXPECT_EQ(cepe::test::read_file(out), complete);  // the torn bytes are gone

  {
    cepe::qa::ResultWriter w(out, /*append=*/true);
    w.write(r4);
    w.sync();
  }
  state = cepe::qa::load_for_resume(out);
  EXPECT_EQ(state.torn_bytes, 0u);
  ASSERT_EQ(state.records.size(), 4u);
  EXPECT_EQ(state.records[3].id, "q4");
  EXPECT_EQ(cepe::test::read_file(out), complete + fourth + "\n");

  // A torn line that is the whole file.
  const auto only_torn = temp_path("only-torn.jsonl");
  { std::ofstream(only_torn, std::ios::binary) << "{\"id\": "; }
  state = cepe::qa::load_for_resume(only_torn);
  EXPECT_TRUE(state.records.empty());
  EXPECT_EQ(state.torn_bytes, 7u);
  EXPECT_EQ(std::filesystem::file_size(only_torn), 0u);

  // No output yet: nothing done.
  state = cepe::qa::load_for_resume(temp_path("never-written.jsonl"));
  EXPECT_FALSE(state.existed);
  EXPECT_TRUE(state.records.empty());
}

TEST(QaResults, ResumeRejectsBadOutputs) {
  const std::string l1 = cepe::qa::record_to_json(answered("q1", "a", {"a"}, {}));
  const std::string l2 = cepe::qa::record_to_json(answered("q2", "b", {"b"}, {}));

  const auto bad = temp_path("bad-middle.jsonl");
  const std::string content = l1 + "\n{\"id\": \"q2\"\n" + l2 + "\n" + "{\"torn";
  { std::ofstream(bad, std::ios::binary) << content; }
  EXPECT_EQ(error_of([&] { cepe::qa::load_for_resume(bad); }),
            bad.string() +
                ":2: invalid JSON: Missing a comma or '}' after an object member. "
                "(at column 12)");
  EXPECT_EQ(cepe::test::read_file(bad), content);  // left untouched, torn tail included

  const auto dup = temp_path("dup.jsonl");
  { std::ofstream(dup, std::ios::binary) << l1 << "\n" << l2 << "\n" << l1 << "\n"; }
  EXPECT_EQ(error_of([&] { cepe::qa::load_for_resume(dup); }),
            dup.string() + ":3: duplicate id \"q1\" (first on line 1)");

  // Resuming against another question file.
  const auto out = temp_path("other-questions.jsonl");
  { std::ofstream(out, std::ios::binary) << l1 << "\n\n" << l2 << "\n"; }
  const ResumeState state = cepe::qa::load_for_resume(out);
  ASSERT_EQ(state.records.size(), 2u);
  cepe::qa::Question q1, q2;
  q1.id = "q1";
  q1.question = "question q1?";
  q2.id = "q2";
  q2.question = "question q2?";
  EXPECT_NO_THROW(cepe::qa::check_resume_matches(state, {q1, q2}, out));
  EXPECT_EQ(error_of([&] { cepe::qa::check_resume_matches(state, {q1}, out); }),
            out.string() + ":3: id \"q2\" is not in the question file");
  q2.question = "something else?";
  EXPECT_EQ(error_of([&] {
              cepe::qa::check_resume_matches(state, {q1, q2}, out);
            }),
            out.string() + ":3: id \"q2\" has another question in the question file");
}

// Five hand-made records:
//   r1: EM, F1 1, substring, gold in passage 1 of 3
//   r2: F1 0.5, substring, gold in passage 3 of 3
//   r3: wrong, gold in none of 3 passages
//   r4: no gold (not scored, no retrieval verdict)
//   r5: F1 0.25, no passages (closed book: no retrieval verdict)
std::vector<QaRecord> hand_made() {
  std::vector<QaRecord> v(5);
  for (size_t i = 0; i < v.size(); ++i) v[i].id = 'r' + std::to_string(i + 1);
  v[0].scores = cepe::qa::AnswerScores{true, 1.0, true};
  v[0].passage_ids = {"a", "b", "c"};
  v[0].first_hit_rank = 1;
  v[1].scores = cepe::qa::AnswerScores{false, 0.5, true};
  v[1].passage_ids = {"a", "b", "c"};
  v[1].first_hit_rank = 3;
  v[2].scores = cepe::qa::AnswerScores{false, 0.0, false};
  v[2].passage_ids = {"a", "b", "c"};
  v[2].first_hit_rank = 0;
  v[3].passage_ids = {"a", "b", "c"};
  v[4].scores = cepe::qa::AnswerScores{false, 0.25, false};
  return v;
}

TEST(QaSummary, HandMadeSet) {
  cepe::qa::RunStats run;
  run.elapsed_s = 2.0;
  run.questions = 4;
  run.generated_tokens = 30;
  const QaSummary s = cepe::qa::summarize(hand_made(), run);
  EXPECT_EQ(s.questions, 5u);
  EXPECT_EQ(s.scored, 4u);
  EXPECT_DOUBLE_EQ(s.exact_match, 0.25);
  EXPECT_DOUBLE_EQ(s.f1, (1.0 + 0.5 + 0.0 + 0.25) / 4);
  EXPECT_DOUBLE_EQ(s.substring, 0.5);
  EXPECT_EQ(s.retrieval_evaluated, 3u);
  EXPECT_EQ(s.max_k, 3u);
  ASSERT_EQ(s.recall.size(), 2u);
  EXPECT_EQ(s.recall[0].k, 1u);
  EXPECT_DOUBLE_EQ(s.recall[0].recall, 1.0 / 3);
  EXPECT_EQ(s.recall[1].k, 3u);
  EXPECT_DOUBLE_EQ(s.recall[1].recall, 2.0 / 3);
  EXPECT_DOUBLE_EQ(s.questions_per_s, 2.0);
  EXPECT_DOUBLE_EQ(s.tokens_per_s, 15.0);

  const std::string table = cepe::qa::format_summary(s);
  EXPECT_NE(table.find("Questions         5 (4 with gold)\n"), std::string::npos) << table;
  EXPECT_NE(table.find("Exact match       25.00\n"), std::string::npos) << table;
  EXPECT_NE(table.find("F1                43.75\n"), std::string::npos) << table;
  EXPECT_NE(table.find("Substring match   50.00\n"), std::string::npos) << table;
  EXPECT_NE(table.find("Recall@1          33.33\n"), std::string::npos) << table;
  EXPECT_NE(table.find("Recall@3          66.67\n"), std::string::npos) << table;
  EXPECT_NE(table.find("Questions/s       2.00 (4 this run in 2.0 s)\n"), std::string::npos)
      << table;
  EXPECT_NE(table.find("Tokens/s          15.0\n"), std::string::npos) << table;
}

// Selective QA: with every scored answer's log-probability, EM and F1 over the most confident
// fraction. Confidence order here: r5 (wrong), r1 (EM), r3 (wrong), r2 (wrong), r4 unscored.
TEST(QaSummary, ExactMatchByConfidence) {
  std::vector<QaRecord> v = hand_made();
  const double logprob[] = {-0.5, -3.0, -1.0, -0.1, -0.2};
  EXPECT_TRUE(cepe::qa::summarize(v, {}).selective.empty()) << "no confidence recorded";
  for (size_t i = 0; i < v.size(); ++i) v[i].answer_logprob = logprob[i];
  const QaSummary s = cepe::qa::summarize(v, {});
  ASSERT_EQ(s.selective.size(), 5u);
  // 4 scored: 10 % and 25 % are the one most confident (r5), 50 % two, 75 % three, 100 % four.
  const size_t count[] = {1, 1, 2, 3, 4};
  const double em[] = {0.0, 0.0, 0.5, 1.0 / 3, 0.25};
  const double f1[] = {0.25, 0.25, 1.25 / 2, 1.25 / 3, 1.75 / 4};
  for (size_t i = 0; i < 5; ++i) {
    EXPECT_EQ(s.selective[i].questions, count[i]) << i;
    EXPECT_DOUBLE_EQ(s.selective[i].exact_match, em[i]) << i;
    EXPECT_DOUBLE_EQ(s.selective[i].f1, f1[i]) << i;
  }
  EXPECT_DOUBLE_EQ(s.selective[4].exact_match, s.exact_match);
  EXPECT_DOUBLE_EQ(s.selective_em_auc, (0.0 + 0.5 + 1.0 / 3 + 0.25) / 4);
  EXPECT_NE(cepe::qa::format_summary(s).find(
                "EM by confidence  0.00 @ 10%, 0.00 @ 25%, 50.00 @ 50%, 33.33 @ 75%, 25.00 @ "
                "100% (AUC 27.08)\n"),
            std::string::npos)
      << cepe::qa::format_summary(s);
  rapidjson::Document doc;
  doc.Parse(cepe::qa::summary_to_json(s).c_str());
  ASSERT_FALSE(doc.HasParseError());
  EXPECT_STREQ(doc["selective"]["confidence"].GetString(), "answer_logprob");
  EXPECT_EQ(doc["selective"]["coverage"][2]["questions"].GetInt(), 2);
  // One scored record without it: no selective figures (the unscored r4 does not count).
  v[3].answer_logprob.reset();
  EXPECT_EQ(cepe::qa::summarize(v, {}).selective.size(), 5u);
  v[1].answer_logprob.reset();
  EXPECT_TRUE(cepe::qa::summarize(v, {}).selective.empty());
  EXPECT_TRUE(cepe::qa::summary_to_json(cepe::qa::summarize(v, {})).find("\"selective\": null") !=
              std::string::npos);
}

TEST(QaSummary, RecallCutoffsAndEmptySets) {
  std::vector<QaRecord> v(2);
  v[0].id = "a";
  v[0].scores = cepe::qa::AnswerScores{};
  v[0].passage_ids.assign(20, "p");
  v[0].first_hit_rank = 7;
  v[1].id = "b";
  v[1].scores = cepe::qa::AnswerScores{};
  v[1].passage_ids.assign(12, "p");
  v[1].first_hit_rank = 12;
  const QaSummary s = cepe::qa::summarize(v, {});
  std::vector<std::pair<size_t, double>> recall;
  for (const auto& r : s.recall) recall.emplace_back(r.k, r.recall);
  EXPECT_EQ(recall,
            (std::vector<std::pair<size_t, double>>{{1, 0.0}, {5, 0.0}, {10, 0.5}, {20, 1.0}}));
  EXPECT_EQ(s.questions_per_s, 0.0);  // no time measured

  const QaSummary none = cepe::qa::summarize({}, {});
  EXPECT_EQ(none.scored, 0u);
  rapidjson::Document doc;
  doc.Parse(cepe::qa::summary_to_json(none).c_str());
  ASSERT_FALSE(doc.HasParseError());
  EXPECT_TRUE(doc["exact_match"].IsNull());
  EXPECT_TRUE(doc["retrieval"].IsNull());
}

TEST(QaSummary, JsonWrittenAtomicallyBesideTheOutput) {
  const auto out = temp_path("answers.jsonl");
  const auto path = cepe::qa::summary_path_for(out);
  EXPECT_EQ(path.string(), out.string() + ".summary.json");
  cepe::qa::RunStats run;
  run.elapsed_s = 2.0;
  run.questions = 4;
  run.generated_tokens = 30;
  { std::ofstream(path) << "old contents"; }
  cepe::qa::write_summary(path, cepe::qa::summarize(hand_made(), run));
  for (const auto& entry : std::filesystem::directory_iterator(path.parent_path())) {
    EXPECT_EQ(entry.path().string().find(".tmp"), std::string::npos) << entry.path();
  }
  rapidjson::Document doc;
  const std::string text = cepe::test::read_file(path);
  doc.Parse(text.c_str());
  ASSERT_FALSE(doc.HasParseError()) << text;
  EXPECT_EQ(doc["questions"].GetUint(), 5u);
  EXPECT_EQ(doc["scored"].GetUint(), 4u);
  EXPECT_DOUBLE_EQ(doc["exact_match"].GetDouble(), 0.25);
  EXPECT_DOUBLE_EQ(doc["f1"].GetDouble(), 0.4375);
  EXPECT_DOUBLE_EQ(doc["substring_exact_match"].GetDouble(), 0.5);
  EXPECT_EQ(doc["retrieval"]["evaluated"].GetUint(), 3u);
  EXPECT_EQ(doc["retrieval"]["k"].GetUint(), 3u);
  EXPECT_DOUBLE_EQ(doc["retrieval"]["recall"]["1"].GetDouble(), 1.0 / 3);
  EXPECT_DOUBLE_EQ(doc["retrieval"]["recall"]["3"].GetDouble(), 2.0 / 3);
  EXPECT_EQ(doc["run"]["questions"].GetUint(), 4u);
  EXPECT_DOUBLE_EQ(doc["run"]["questions_per_s"].GetDouble(), 2.0);
  EXPECT_DOUBLE_EQ(doc["run"]["tokens_per_s"].GetDouble(), 15.0);

  EXPECT_THROW(
      cepe::qa::write_summary(temp_path("no/such/dir/s.json"), cepe::qa::summarize({}, {})),
      cepe::Error);
}

// The summary over a file read back equals the summary over the records that were written.
TEST(QaSummary, RecomputedFromTheOutputFile) {
  const auto out = temp_path("recompute.jsonl");
  std::vector<QaRecord> written = {
      answered("1", "Paris", {"Paris"}, {"x", "Paris"}),
      answered("2", "the cat sat", {"a cat"}, {"dog", "cat", "mouse"}),
      answered("3", "yes", {"no"}, {"maybe"}),
      answered("4", "Zürich", {"ZÜRICH", "Zurich"}, {}),
  };
  {
    cepe::qa::ResultWriter w(out, false);
    for (const QaRecord& r : written) w.write(r);
  }
  const QaSummary a = cepe::qa::summarize(written, {});
  const QaSummary b = cepe::qa::summarize(cepe::qa::load_for_resume(out).records, {});
  EXPECT_EQ(a.scored, 4u);
  EXPECT_DOUBLE_EQ(a.exact_match, 0.5);
  EXPECT_DOUBLE_EQ(a.f1, (1.0 + 2.0 / 3 + 0.0 + 1.0) / 4);  // "cat sat" vs "cat": p 1/2, r 1
  EXPECT_EQ(cepe::qa::summary_to_json(a), cepe::qa::summary_to_json(b));
}

}  // namespace
