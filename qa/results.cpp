#include "qa/results.h"

#include <fcntl.h>
#include <unistd.h>
#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <iomanip>
#include <sstream>
#include <unordered_map>

#include <rapidjson/prettywriter.h>

#include "common/error.h"
#include "common/fileio.h"
#include "common/json.h"
#include "common/strings.h"
#include "common/utf8.h"

namespace cepe::qa {

namespace {

using rapidjson::Value;

void write_all(int fd, const std::string& data, const std::string& path) {
  size_t done = 0;
  while (done < data.size()) {
    const ssize_t n = ::write(fd, data.data() + done, data.size() - done);
    if (n < 0) {
      if (errno == EINTR) continue;
      CEPE_THROW("cannot write " << path << ": " << std::strerror(errno));
    }
    done += static_cast<size_t>(n);
  }
}

const Value& require(const Value& obj, const char* key, const std::string& where) {
  auto it = obj.FindMember(key);
  if (it == obj.MemberEnd()) CEPE_THROW(where << ": missing \"" << key << "\"");
  return it->value;
}

std::string require_string(const Value& obj, const char* key, const std::string& where) {
  const Value& v = require(obj, key, where);
  if (!v.IsString()) CEPE_THROW(where << ": \"" << key << "\" must be a string");
  return json_string(v);
}

std::vector<std::string> require_strings(const Value& obj, const char* key,
                                         const std::string& where) {
  const Value& v = require(obj, key, where);
  if (!v.IsArray()) CEPE_THROW(where << ": \"" << key << "\" must be a list of strings");
  std::vector<std::string> out;
  for (rapidjson::SizeType i = 0; i < v.Size(); ++i) {
    if (!v[i].IsString()) CEPE_THROW(where << ": \"" << key << "\"[" << i << "] must be a string");
    out.push_back(json_string(v[i]));
  }
  return out;
}

int64_t require_count(const Value& obj, const char* key, const std::string& where) {
  const Value& v = require(obj, key, where);
  if (!v.IsInt64() || v.GetInt64() < 0) {
    CEPE_THROW(where << ": \"" << key << "\" must be a non-negative integer");
  }
  return v.GetInt64();
}

// em and substring are 0/1 (CEPE averages ints), f1 a fraction.
std::optional<double> optional_score(const Value& obj, const char* key, bool binary,
                                     const std::string& where) {
  const Value& v = require(obj, key, where);
  if (v.IsNull()) return std::nullopt;
  if (!v.IsNumber()) CEPE_THROW(where << ": \"" << key << "\" must be a number or null");
  const double d = v.GetDouble();
  if (binary ? (d != 0.0 && d != 1.0) : !(d >= 0.0 && d <= 1.0)) {
    CEPE_THROW(where << ": \"" << key << "\" is out of range: " << d);
  }
  return d;
}

std::string fixed(double v, int digits) {
  std::ostringstream os;
  os << std::fixed << std::setprecision(digits) << v;
  return os.str();
}

// The invariants record_from_json enforces, checked on the way out so a bad record fails the run
// that writes it rather than the --resume that reads it back.
void check_record(const QaRecord& r) {
  CEPE_CHECK(!r.id.empty(), "result record without an id");
  CEPE_CHECK(r.scores.has_value() == !r.gold.empty(),
             "result record \"" << r.id
                                << "\": scores must be set exactly when there are gold "
                                   "answers (call score_record)");
  CEPE_CHECK(!r.first_hit_rank || *r.first_hit_rank <= r.passage_ids.size(),
             "result record \"" << r.id << "\": hit rank past the passages used");
  CEPE_CHECK(r.prompt_tokens >= 0 && r.generated_tokens >= 0,
             "result record \"" << r.id << "\": negative token count");
  CEPE_CHECK(!r.answer_logprob || *r.answer_logprob <= 0.0,
             "result record \"" << r.id << "\": answer_logprob " << *r.answer_logprob
                                << " is not a log-probability");
}

}  // namespace

QaRecord make_record(const Question& q) {
  QaRecord r;
  r.id = q.id;
  r.numeric_id = q.numeric_id;
  r.question = q.question;
  r.gold = q.answers;
  return r;
}

void score_record(QaRecord* record, const std::vector<std::string>& passage_texts, F1Rule rule) {
  record->scores.reset();
  record->first_hit_rank.reset();
  if (record->gold.empty()) return;
  record->scores = score_answer(record->answer, record->gold, rule);
  if (passage_texts.empty()) return;
  const std::optional<size_t> hit = AnswerMatcher(record->gold).first_match(passage_texts);
  record->first_hit_rank = hit ? *hit + 1 : 0;
}

std::string record_to_json(const QaRecord& r) {
  check_record(r);
  rapidjson::StringBuffer buf;
  rapidjson::Writer<rapidjson::StringBuffer> w(buf);
  w.StartObject();
  w.Key("id");
  if (r.numeric_id) {
    // An id read back as an integer always fits; anything else is written as text.
    char* end = nullptr;
    errno = 0;
    const long long v = std::strtoll(r.id.c_str(), &end, 10);
    if (!r.id.empty() && *end == '\0' && errno == 0) {
      w.Int64(v);
    } else {
      write_json_string(w, r.id);
    }
  } else {
    write_json_string(w, r.id);
  }
  w.Key("question");
  write_json_string(w, r.question);
  w.Key("answer");
  write_json_string(w, r.answer);
  w.Key("gold");
  w.StartArray();
  for (const std::string& g : r.gold) write_json_string(w, g);
  w.EndArray();
  w.Key("em");
  if (r.scores) {
    w.Int(r.scores->exact_match ? 1 : 0);
    w.Key("f1");
    w.Double(r.scores->f1);
    w.Key("substring");
    w.Int(r.scores->substring ? 1 : 0);
  } else {
    w.Null();
    w.Key("f1");
    w.Null();
    w.Key("substring");
    w.Null();
  }
  w.Key("passages");
  w.StartArray();
  for (const std::string& id : r.passage_ids) write_json_string(w, id);
  w.EndArray();
  w.Key("retrieval_hit");
  if (r.first_hit_rank) {
    w.Bool(*r.first_hit_rank > 0);
  } else {
    w.Null();
  }
  w.Key("hit_rank");
  if (r.first_hit_rank && *r.first_hit_rank > 0) {
    w.Uint64(*r.first_hit_rank);
  } else {
    w.Null();
  }
  w.Key("prompt_tokens");
  w.Int64(r.prompt_tokens);
  w.Key("generated_tokens");
  w.Int64(r.generated_tokens);
  if (r.answer_logprob) {
    w.Key("answer_logprob");
    w.Double(*r.answer_logprob);
  }
  w.EndObject();
  return std::string(buf.GetString(), buf.GetSize());
}

QaRecord record_from_json(std::string_view line, const std::string& where) {
  if (auto at = find_invalid_utf8(line)) {
    CEPE_THROW(where << ": invalid UTF-8 at column " << *at + 1);
  }
  rapidjson::Document doc;
  std::string error;
  if (!parse_json(line, &doc, &error)) CEPE_THROW(where << ": " << error);
  if (!doc.IsObject()) CEPE_THROW(where << ": expected a JSON object");

  QaRecord r;
  const Value& id = require(doc, "id", where);
  if (id.IsString()) {
    r.id = json_string(id);
  } else if (id.IsInt64()) {
    r.id = std::to_string(id.GetInt64());
    r.numeric_id = true;
  } else {
    CEPE_THROW(where << ": \"id\" must be a string or an integer");
  }
  if (r.id.empty()) CEPE_THROW(where << ": \"id\" is empty");
  r.question = require_string(doc, "question", where);
  r.answer = require_string(doc, "answer", where);
  r.gold = require_strings(doc, "gold", where);

  const std::optional<double> em = optional_score(doc, "em", true, where);
  const std::optional<double> f1 = optional_score(doc, "f1", false, where);
  const std::optional<double> sub = optional_score(doc, "substring", true, where);
  if (em.has_value() != f1.has_value() || em.has_value() != sub.has_value()) {
    CEPE_THROW(where << ": \"em\", \"f1\" and \"substring\" must be all numbers or all null");
  }
  if (em.has_value() == r.gold.empty()) {
    CEPE_THROW(where << ": scores must be present exactly when there are gold answers");
  }
  if (em) r.scores = AnswerScores{*em == 1.0, *f1, *sub == 1.0};

  r.passage_ids = require_strings(doc, "passages", where);
  const Value& hit = require(doc, "retrieval_hit", where);
  const Value& rank = require(doc, "hit_rank", where);
  if (hit.IsNull()) {
    if (!rank.IsNull()) CEPE_THROW(where << ": \"hit_rank\" without \"retrieval_hit\"");
  } else if (!hit.IsBool()) {
    CEPE_THROW(where << ": \"retrieval_hit\" must be true, false or null");
  } else if (!hit.GetBool()) {
    if (!rank.IsNull()) CEPE_THROW(where << ": \"hit_rank\" must be null when there is no hit");
    r.first_hit_rank = 0;
  } else {
    if (!rank.IsUint64() || rank.GetUint64() < 1 || rank.GetUint64() > r.passage_ids.size()) {
      CEPE_THROW(where << ": \"hit_rank\" must be a rank between 1 and the number of passages");
    }
    r.first_hit_rank = rank.GetUint64();
  }
  r.prompt_tokens = require_count(doc, "prompt_tokens", where);
  r.generated_tokens = require_count(doc, "generated_tokens", where);
  if (auto it = doc.FindMember("answer_logprob"); it != doc.MemberEnd() && !it->value.IsNull()) {
    if (!it->value.IsNumber() || !(it->value.GetDouble() <= 0.0)) {
      CEPE_THROW(where << ": \"answer_logprob\" must be a number <= 0 (a log-probability) or null");
    }
    r.answer_logprob = it->value.GetDouble();
  }
  return r;
}

ResultWriter::ResultWriter(std::filesystem::path path, bool append) : path_(std::move(path)) {
  const int flags = O_WRONLY | O_CREAT | O_CLOEXEC | (append ? O_APPEND : O_TRUNC);
  fd_ = ::open(path_.c_str(), flags, 0644);
  if (fd_ < 0) CEPE_THROW("cannot open output " << path_.string() << ": " << std::strerror(errno));
}

ResultWriter::~ResultWriter() {
  if (fd_ >= 0) ::close(fd_);
}

void ResultWriter::write(const QaRecord& record) {
  // Built in full first so that the line goes out in a single write and an interruption can only
  // tear the very last line.
  std::string line = record_to_json(record);
  line.push_back('\n');
  std::lock_guard<std::mutex> lock(mutex_);
  write_all(fd_, line, path_.string());
  ++lines_;
}

void ResultWriter::sync() {
  std::lock_guard<std::mutex> lock(mutex_);
  if (::fsync(fd_) != 0)
    CEPE_THROW("cannot sync " << path_.string() << ": " << std::strerror(errno));
}

size_t ResultWriter::lines_written() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return lines_;
}

ResumeState load_for_resume(const std::filesystem::path& path) {
  ResumeState state;
  std::error_code ec;
  if (!std::filesystem::exists(path, ec)) return state;
  state.existed = true;
  const std::string content = read_whole_file(path, "the answers file (--resume)");

  const size_t last_newline = content.rfind('\n');
  const size_t complete = last_newline == std::string::npos ? 0 : last_newline + 1;
  std::unordered_map<std::string, size_t> seen;
  size_t line_no = 0;
  for (size_t start = 0; start < complete;) {
    const size_t end = content.find('\n', start);
    std::string_view line(content.data() + start, end - start);
    start = end + 1;
    ++line_no;
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    if (trim_ascii(line).empty()) continue;
    const std::string where = path.string() + ":" + std::to_string(line_no);
    QaRecord r = record_from_json(line, where);
    auto [it, inserted] = seen.emplace(r.id, line_no);
    if (!inserted) {
      CEPE_THROW(where << ": duplicate id \"" << r.id << "\" (first on line " << it->second << ")");
    }
    state.done_ids.insert(r.id);
    state.records.push_back(std::move(r));
    state.record_lines.push_back(line_no);
  }
  // Only cut after everything before the tear checked out, so a bad file is left as it was.
  if (complete < content.size()) {
    state.torn_bytes = content.size() - complete;
    std::filesystem::resize_file(path, complete, ec);
    if (ec)
      CEPE_THROW("cannot cut the torn last line of " << path.string() << ": " << ec.message());
  }
  return state;
}

void check_resume_matches(const ResumeState& state, const std::vector<Question>& questions,
                          const std::filesystem::path& path) {
  std::unordered_map<std::string_view, const Question*> by_id;
  for (const Question& q : questions) by_id.emplace(q.id, &q);
  for (size_t i = 0; i < state.records.size(); ++i) {
    const QaRecord& r = state.records[i];
    const std::string where = path.string() + ":" + std::to_string(state.record_lines[i]);
    auto it = by_id.find(r.id);
    if (it == by_id.end()) {
      CEPE_THROW(where << ": id \"" << r.id << "\" is not in the question file");
    }
    if (it->second->question != r.question) {
      CEPE_THROW(where << ": id \"" << r.id << "\" has another question in the question file");
    }
  }
}

QaSummary summarize(const std::vector<QaRecord>& records, const RunStats& run) {
  QaSummary s;
  s.questions = records.size();
  s.run = run;
  double em = 0, f1 = 0, sub = 0;
  std::vector<size_t> ranks;
  for (const QaRecord& r : records) {
    if (r.scores) {
      ++s.scored;
      em += r.scores->exact_match ? 1.0 : 0.0;
      f1 += r.scores->f1;
      sub += r.scores->substring ? 1.0 : 0.0;
    }
    if (r.first_hit_rank) {
      ++s.retrieval_evaluated;
      ranks.push_back(*r.first_hit_rank);
      s.max_k = std::max(s.max_k, r.passage_ids.size());
    }
  }
  if (s.scored > 0) {
    const double n = static_cast<double>(s.scored);
    s.exact_match = em / n;
    s.f1 = f1 / n;
    s.substring = sub / n;
  }
  if (s.retrieval_evaluated > 0) {
    std::vector<size_t> cutoffs;
    for (size_t k : {1, 5, 10, 20, 50, 100, 200, 500, 1000}) {
      if (k < s.max_k) cutoffs.push_back(k);
    }
    cutoffs.push_back(s.max_k);
    for (size_t k : cutoffs) {
      size_t hits = 0;
      for (size_t rank : ranks) hits += (rank >= 1 && rank <= k) ? 1 : 0;
      s.recall.push_back({k, static_cast<double>(hits) / static_cast<double>(ranks.size())});
    }
  }
  // Selective QA: the scored answers from the most confident down (ties keep file order).
  std::vector<const QaRecord*> ranked;
  for (const QaRecord& r : records)
    if (r.scores) ranked.push_back(&r);
  const bool confident = !ranked.empty() && std::all_of(ranked.begin(), ranked.end(), [](auto* r) {
    return r->answer_logprob.has_value();
  });
  if (confident) {
    std::stable_sort(ranked.begin(), ranked.end(), [](const QaRecord* a, const QaRecord* b) {
      return *a->answer_logprob > *b->answer_logprob;
    });
    std::vector<double> em_prefix(ranked.size() + 1, 0.0), f1_prefix(ranked.size() + 1, 0.0);
    for (size_t i = 0; i < ranked.size(); ++i) {
      em_prefix[i + 1] = em_prefix[i] + (ranked[i]->scores->exact_match ? 1.0 : 0.0);
      f1_prefix[i + 1] = f1_prefix[i] + ranked[i]->scores->f1;
    }
    const double n = static_cast<double>(ranked.size());
    for (double coverage : {0.1, 0.25, 0.5, 0.75, 1.0}) {
      // The smallest count that reaches the coverage (at least one answer).
      const size_t k = std::max<size_t>(1, static_cast<size_t>(std::ceil(coverage * n - 1e-9)));
      s.selective.push_back({coverage, k, em_prefix[k] / static_cast<double>(k),
                             f1_prefix[k] / static_cast<double>(k)});
    }
    double auc = 0;
    for (size_t k = 1; k <= ranked.size(); ++k) auc += em_prefix[k] / static_cast<double>(k);
    s.selective_em_auc = auc / n;
  }
  if (run.elapsed_s > 0) {
    s.questions_per_s = static_cast<double>(run.questions) / run.elapsed_s;
    s.tokens_per_s = static_cast<double>(run.generated_tokens) / run.elapsed_s;
  }
  return s;
}

std::string summary_to_json(const QaSummary& s) {
  rapidjson::StringBuffer buf;
  rapidjson::PrettyWriter<rapidjson::StringBuffer> w(buf);
  w.SetIndent(' ', 2);
  auto metric = [&](const char* key, double v) {
    w.Key(key);
    if (s.scored > 0) {
      w.Double(v);
    } else {
      w.Null();
    }
  };
  w.StartObject();
  w.Key("questions");
  w.Uint64(s.questions);
  w.Key("scored");
  w.Uint64(s.scored);
  metric("exact_match", s.exact_match);
  metric("f1", s.f1);
  metric("substring_exact_match", s.substring);
  w.Key("retrieval");
  if (s.retrieval_evaluated > 0) {
    w.StartObject();
    w.Key("evaluated");
    w.Uint64(s.retrieval_evaluated);
    w.Key("k");
    w.Uint64(s.max_k);
    w.Key("recall");
    w.StartObject();
    for (const RecallAt& r : s.recall) {
      const std::string k = std::to_string(r.k);
      w.Key(k.c_str(), static_cast<rapidjson::SizeType>(k.size()));
      w.Double(r.recall);
    }
    w.EndObject();
    w.EndObject();
  } else {
    w.Null();
  }
  w.Key("selective");
  if (!s.selective.empty()) {
    w.StartObject();
    w.Key("confidence");
    w.String("answer_logprob");
    w.Key("coverage");
    w.StartArray();
    for (const CoverageAt& c : s.selective) {
      w.StartObject();
      w.Key("coverage");
      w.Double(c.coverage);
      w.Key("questions");
      w.Uint64(c.questions);
      w.Key("exact_match");
      w.Double(c.exact_match);
      w.Key("f1");
      w.Double(c.f1);
      w.EndObject();
    }
    w.EndArray();
    w.Key("exact_match_auc");
    w.Double(s.selective_em_auc);
    w.EndObject();
  } else {
    w.Null();
  }
  w.Key("run");
  w.StartObject();
  w.Key("questions");
  w.Uint64(s.run.questions);
  w.Key("elapsed_s");
  w.Double(s.run.elapsed_s);
  w.Key("questions_per_s");
  w.Double(s.questions_per_s);
  w.Key("generated_tokens");
  w.Int64(s.run.generated_tokens);
  w.Key("tokens_per_s");
  w.Double(s.tokens_per_s);
  w.EndObject();
  w.EndObject();
  return std::string(buf.GetString(), buf.GetSize()) + "\n";
}

std::filesystem::path summary_path_for(const std::filesystem::path& output) {
  return std::filesystem::path(output.string() + ".summary.json");
}

void write_summary(const std::filesystem::path& path, const QaSummary& summary) {
  write_file_atomic(path, summary_to_json(summary));
}

std::string format_summary(const QaSummary& s) {
  std::ostringstream os;
  auto row = [&](const std::string& name, const std::string& value) {
    os << std::left << std::setw(18) << name << value << "\n";
  };
  row("Questions", std::to_string(s.questions) + " (" + std::to_string(s.scored) + " with gold)");
  if (s.scored > 0) {
    row("Exact match", fixed(100.0 * s.exact_match, 2));
    row("F1", fixed(100.0 * s.f1, 2));
    row("Substring match", fixed(100.0 * s.substring, 2));
  }
  for (const RecallAt& r : s.recall) {
    row("Recall@" + std::to_string(r.k), fixed(100.0 * r.recall, 2));
  }
  if (!s.selective.empty()) {
    std::string line;
    for (const CoverageAt& c : s.selective) {
      if (!line.empty()) line += ", ";
      line += fixed(100.0 * c.exact_match, 2) + " @ " + fixed(100.0 * c.coverage, 0) + "%";
    }
    row("EM by confidence", line + " (AUC " + fixed(100.0 * s.selective_em_auc, 2) + ")");
  }
  row("Questions/s", fixed(s.questions_per_s, 2) + " (" + std::to_string(s.run.questions) +
                         " this run in " + fixed(s.run.elapsed_s, 1) + " s)");
  row("Tokens/s", fixed(s.tokens_per_s, 1));
  return os.str();
}

}  // namespace cepe::qa
