// The output side of batch QA: one JSON line per answered question, --resume over a partial
// output, and the run summary.
//
// A result line (keys in this order):
//   {"id": "q1" | 7, "question": "...", "answer": "...", "gold": ["..."],
//    "em": 1 | 0 | null, "f1": 0.667 | null, "substring": 1 | 0 | null,
//    "passages": ["id", ...], "retrieval_hit": true | false | null, "hit_rank": 3 | null,
//    "prompt_tokens": 812, "generated_tokens": 5}
// em/f1/substring are null for a question without gold answers; retrieval_hit is null when there
// is no gold answer or no passage, and hit_rank is the 1-based rank of the first passage holding a
// gold answer. Each line is written with one write(2) as soon as it is known, so an interrupted
// run leaves whole lines plus at most one torn last line, which --resume cuts off.
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_set>
#include <vector>

#include "qa/question_file.h"
#include "qa/scoring.h"

namespace cepe::qa {

/// One answered question, as written to and read back from the output file.
struct QaRecord {
  std::string id;                        ///< the question's id
  bool numeric_id = false;               ///< write the id as a JSON integer
  std::string question;                  ///< the question text
  std::string answer;                    ///< the model's answer (already stripped by the caller)
  std::vector<std::string> gold;         ///< gold answers (may be empty)
  std::optional<AnswerScores> scores;    ///< EM/F1/substring; nullopt without gold answers
  std::vector<std::string> passage_ids;  ///< ids of the passages the answer was conditioned on
  /// Retrieval outcome: nullopt when not applicable (no gold or no passage), 0 when no passage
  /// holds a gold answer, else the 1-based rank of the first passage that does.
  std::optional<size_t> first_hit_rank;
  int64_t prompt_tokens = 0;     ///< tokens fed to the model (decoder and encoder)
  int64_t generated_tokens = 0;  ///< tokens generated for the answer
  /// Log-probability of the generated tokens under the model (their sum), the answer's
  /// confidence; nullopt when not recorded (written only when set).
  std::optional<double> answer_logprob;
};

/// A record for `q` with its id, question and gold answers filled in.
QaRecord make_record(const Question& q);

/// Fills scores (when there are gold answers) and first_hit_rank (when there are also passages)
/// from record->answer, record->gold and the texts of the passages used, in rank order.
void score_record(QaRecord* record, const std::vector<std::string>& passage_texts,
                  F1Rule rule = F1Rule::kCepe);

/// The record as one JSON line, without the trailing newline.
std::string record_to_json(const QaRecord& record);

/// Parses one output line; throws cepe::Error "WHERE: what" on a malformed or inconsistent record.
QaRecord record_from_json(std::string_view line, const std::string& where);

/// Appends result lines to the output file, one write(2) per line, from any thread.
class ResultWriter {
 public:
  /// Opens `path`, truncating it unless `append` (used by --resume).
  ResultWriter(std::filesystem::path path, bool append);
  ~ResultWriter();
  ResultWriter(const ResultWriter&) = delete;
  ResultWriter& operator=(const ResultWriter&) = delete;

  /// Writes one record as a line; throws on an I/O error.
  void write(const QaRecord& record);
  /// Flushes the file to disk (fsync); the kernel already has every written line.
  void sync();
  /// Lines written by this writer.
  size_t lines_written() const;
  /// The output path.
  const std::filesystem::path& path() const { return path_; }

 private:
  std::filesystem::path path_;
  int fd_ = -1;
  mutable std::mutex mutex_;
  size_t lines_ = 0;
};

/// What an existing output holds, for --resume.
struct ResumeState {
  bool existed = false;                      ///< the output file was there
  std::vector<QaRecord> records;             ///< complete, valid records in file order
  std::vector<size_t> record_lines;          ///< 1-based line of each record
  std::unordered_set<std::string> done_ids;  ///< ids of those records
  size_t torn_bytes = 0;                     ///< bytes of a torn last line that were cut off
};

/// Reads an output for --resume: a missing file is an empty state; a last line without its newline
/// is cut off the file (its question is answered again); any other bad line or a repeated id throws
/// cepe::Error "FILE:LINE: what".
ResumeState load_for_resume(const std::filesystem::path& path);

/// Checks that every resumed record belongs to `questions` (same id, same question text), so that
/// resuming with another question file fails instead of mixing results; throws "FILE:LINE: what".
void check_resume_matches(const ResumeState& state, const std::vector<Question>& questions,
                          const std::filesystem::path& path);

/// Throughput of the current run (resumed records are not re-timed).
struct RunStats {
  double elapsed_s = 0.0;        ///< wall time of this run
  size_t questions = 0;          ///< questions answered in this run
  int64_t generated_tokens = 0;  ///< tokens generated in this run
};

/// Recall at one cut-off.
struct RecallAt {
  size_t k = 0;         ///< number of top passages considered
  double recall = 0.0;  ///< fraction of evaluated questions with a gold answer in them
};

/// Accuracy over the most confident answers (selective QA): the `questions` scored records
/// with the highest answer_logprob.
struct CoverageAt {
  double coverage = 0.0;     ///< fraction of the scored records answered
  size_t questions = 0;      ///< how many that is (rounded up, at least one)
  double exact_match = 0.0;  ///< mean EM over them
  double f1 = 0.0;           ///< mean F1 over them
};

/// Aggregate metrics over all records (resumed ones included) plus this run's throughput.
struct QaSummary {
  size_t questions = 0;            ///< records
  size_t scored = 0;               ///< records with gold answers (the EM/F1 denominator)
  double exact_match = 0.0;        ///< mean EM over scored records (fraction)
  double f1 = 0.0;                 ///< mean F1 over scored records (fraction)
  double substring = 0.0;          ///< mean substring match over scored records (fraction)
  size_t retrieval_evaluated = 0;  ///< records with gold answers and passages
  size_t max_k = 0;                ///< largest number of passages any record used
  std::vector<RecallAt>
      recall;  ///< recall@k for k in 1, 5, 10, 20, 50, 100... below max_k, and max_k
  /// EM and F1 at 10, 25, 50, 75 and 100 % coverage, most confident first; empty unless every
  /// scored record has an answer_logprob.
  std::vector<CoverageAt> selective;
  /// Area under the EM-coverage curve: the mean, over k = 1..scored, of the EM of the k most
  /// confident answers (1 when confidence ranks every right answer first; EM when it is blind).
  double selective_em_auc = 0.0;
  RunStats run;                  ///< this run's counts
  double questions_per_s = 0.0;  ///< run.questions / run.elapsed_s
  double tokens_per_s = 0.0;     ///< run.generated_tokens / run.elapsed_s
};

/// Computes the summary.
QaSummary summarize(const std::vector<QaRecord>& records, const RunStats& run);

/// The summary as a JSON document (metrics as fractions; null where nothing was scored).
std::string summary_to_json(const QaSummary& summary);

/// `<out>.summary.json` beside the output file.
std::filesystem::path summary_path_for(const std::filesystem::path& output);

/// Writes the summary JSON atomically: a temporary file in the same directory, fsync, rename.
void write_summary(const std::filesystem::path& path, const QaSummary& summary);

/// A printable table of the summary (percentages), one metric per line.
std::string format_summary(const QaSummary& summary);

}  // namespace cepe::qa
