// Corpus ingestion: JSONL ({id, title, text}), DPR-style TSV (id, text, title with a header line)
// and directories of .txt/.md files split into passages of about N words at sentence boundaries.
// Every rejected record is reported as "file:line: reason"; strict mode stops at the first one,
// skip mode counts them and goes on.
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

namespace cepe::index {

/// One passage read from the corpus.
struct Passage {
  std::string id;     ///< unique id (JSONL/TSV id, or "relative/path#n" for text files)
  std::string title;  ///< title (may be empty)
  std::string text;   ///< passage text
};

/// How the corpus is read.
struct CorpusOptions {
  bool skip_invalid = false;  ///< count and skip bad records instead of stopping at the first
  int passage_words = 100;    ///< target passage length for .txt/.md files
  int overlap_words = 0;  ///< at most this many words of whole sentences repeated between passages
  size_t max_examples = 10;  ///< skipped records quoted in full in the stats
};

/// What ingestion saw.
struct CorpusStats {
  uint64_t files = 0;                                 ///< input files read
  uint64_t passages = 0;                              ///< passages accepted
  uint64_t skipped = 0;                               ///< records skipped (skip mode only)
  std::map<std::string, uint64_t> skipped_by_reason;  ///< counts per reason
  std::vector<std::string> examples;  ///< the first skipped records, "file:line: reason"
  uint64_t ignored_files = 0;         ///< files in input directories that are not .txt/.md
};

/// Kind of an input file.
enum class CorpusFormat { Jsonl, Tsv, Text, Markdown };

/// One input file and how to read it.
struct CorpusFile {
  std::filesystem::path path;  ///< the file
  std::string display;         ///< the name used in ids and messages
  CorpusFormat format;         ///< its format
  uint64_t bytes = 0;          ///< its size
};

/// Expands inputs (files and directories) into files with their formats; throws naming an input
/// that is missing or of an unsupported kind.
std::vector<CorpusFile> resolve_corpus_inputs(const std::vector<std::filesystem::path>& inputs,
                                              CorpusStats* stats);

/// Reads passages from files, validating as it goes.
class CorpusReader {
 public:
  /// Prepares to read `inputs` (files or directories).
  CorpusReader(const std::vector<std::filesystem::path>& inputs, CorpusOptions options);

  /// Calls `sink` for every accepted passage, in input order; `progress` (optional) receives the
  /// bytes read so far. Throws cepe::Error naming file and line on the first bad record unless
  /// skip_invalid is set.
  void read(const std::function<void(const Passage&)>& sink,
            const std::function<void(uint64_t)>& progress = {});

  /// Treats `id` as taken by row `row` of the index being added to (cepe index add): a record
  /// with that id is a duplicate, reported as already in the index. Call before read().
  void add_existing_id(std::string_view id, uint64_t row);

  /// Total bytes of all input files.
  uint64_t total_bytes() const;
  /// Statistics so far.
  const CorpusStats& stats() const { return stats_; }
  /// One-line summary of what was skipped (empty when nothing was).
  std::string skip_summary() const;

 private:
  // Location::file of an id taken by the index being added to (line: its row).
  static constexpr uint32_t kExistingIndex = 0xFFFFFFFF;
  struct Location {
    uint32_t file;
    uint32_t check;  // a second hash: together with the key, 96 bits against false duplicates
    uint64_t line;
  };
  void read_jsonl(size_t file_index);
  void read_tsv(size_t file_index);
  void read_text(size_t file_index);
  // Validates and emits one record; returns false when it was skipped.
  bool accept(size_t file_index, uint64_t line, Passage&& p);
  void reject(size_t file_index, uint64_t line, const std::string& reason,
              const std::string& detail);

  std::vector<CorpusFile> files_;
  CorpusOptions options_;
  CorpusStats stats_;
  std::unordered_map<uint64_t, Location> seen_ids_;
  std::function<void(const Passage&)> sink_;
  std::function<void(uint64_t)> progress_;
  uint64_t bytes_before_ = 0;  // bytes of the files already read
};

/// Splits text into passages of about `words` words at sentence boundaries, repeating at most
/// `overlap` words of whole trailing sentences. Returns each passage with the 1-based line of the
/// text on which it starts.
std::vector<std::pair<std::string, uint64_t>> split_passages(const std::string& text, int words,
                                                             int overlap, uint64_t first_line = 1);

}  // namespace cepe::index
