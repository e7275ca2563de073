// Question files for batch QA.
//
// JSON lines (one object per line; a `.json` file may instead hold one JSON array of objects, as
// CEPE's load_data accepts):
//   {"id": "q1" | 7, "question": "...", "answers": ["..."] | "answer": "..." | ["..."],
//    "ctxs": [{"id": ..., "title": "...", "text": "...", "score": 1.5 | "1.5"}],
//    "passage_id": "..."}
// - `question` is required, a non-empty string.
// - gold answers come from `answers`, or from `answer` when `answers` is absent; either may be a
//   string, a list of strings, or a list of lists of strings (flattened, as CEPE does).
// - `id` (string or integer) defaults to the line number (the element number in a JSON array).
// - `ctxs` are pre-retrieved passages (then the pipeline does no retrieval); `text` is required,
//   `title` and `id` are optional, `score` may be a number or a numeric string (Contriever's
//   output files store scores as strings).
// - `passage_id` names the gold passage (the ../shared squad-train questions carry it).
// - other keys are ignored.
// TSV (DPR's qas files): `question TAB answers`, the answers a JSON list of strings or a Python
// list literal such as ['Wilhelm Conrad Röntgen']; a first line `question TAB answers` is a header.
// Blank lines are skipped everywhere. Every bad line is reported as "FILE:LINE: what".
#pragma once

#include <cstddef>
#include <filesystem>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "qa/passage.h"

namespace cepe::qa {

/// Layout of a question file.
enum class QuestionFormat {
  kAuto,   ///< choose by the file extension
  kJsonl,  ///< one JSON object per line (.jsonl)
  kJson,   ///< a JSON array of objects, or JSON lines when the file does not start with '[' (.json)
  kTsv,    ///< question TAB answers-list (.tsv, .csv)
};

/// One question with its gold answers and, optionally, pre-retrieved passages.
struct Question {
  std::string id;                            ///< id from the file, or the line number
  bool numeric_id = false;                   ///< the id was an integer (written back as one)
  std::string question;                      ///< the question text, as given
  std::vector<std::string> answers;          ///< gold answers (empty when the file has none)
  std::optional<std::vector<Passage>> ctxs;  ///< pre-retrieved passages, when the file gives them
  std::string gold_passage_id;               ///< the gold passage's id (`passage_id`), or ""
  size_t line = 0;                           ///< 1-based line of the question in the file
};

/// How to read a question file.
struct QuestionFileOptions {
  QuestionFormat format = QuestionFormat::kAuto;  ///< kAuto: by extension
  bool skip_invalid = false;    ///< collect bad lines in QuestionSet::errors instead of throwing
  bool require_answers = true;  ///< a question without gold answers is a bad line
};

/// The loaded questions and the bad lines that were skipped.
struct QuestionSet {
  std::vector<Question> questions;  ///< valid questions in file order
  std::vector<std::string> errors;  ///< "FILE:LINE: what" for each skipped line (skip_invalid)
  QuestionFormat format = QuestionFormat::kAuto;  ///< the format actually read
};

/// Parses a --format value: auto, jsonl, json or tsv (csv is accepted as tsv).
QuestionFormat parse_question_format(std::string_view name);

/// Name of a format as parse_question_format accepts it.
const char* question_format_name(QuestionFormat format);

/// Format implied by the extension (.jsonl, .json, .tsv, .csv); throws naming an unknown one.
QuestionFormat format_for_extension(const std::filesystem::path& path);

/// Loads a question file. Throws cepe::Error on the first bad line unless skip_invalid, and in any
/// case when the file cannot be read or holds no valid question.
QuestionSet load_questions(const std::filesystem::path& path,
                           const QuestionFileOptions& options = {});

}  // namespace cepe::qa
