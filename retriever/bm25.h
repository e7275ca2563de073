// BM25 with Xapian: a writer that turns passages into a single-file Xapian database (document =
// passage row) and a searcher over one database or several shards (local files or xapian-tcpsrv
// remotes, searched as one database with global term statistics).
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

namespace Xapian {
class Database;
class WritableDatabase;
}  // namespace Xapian

namespace cepe::retriever {

/// How text becomes terms and how terms are weighted.
struct Bm25Config {
  double k1 = 0.9;                    ///< BM25 term-frequency saturation (Anserini's default)
  double b = 0.4;                     ///< BM25 length normalisation (Anserini's default)
  std::string stemmer = "english";    ///< Xapian stemmer language, or "none"
  std::string stopwords = "english";  ///< "english" (built-in list), "none", or a file of words
};

/// Checks k1/b and that the stemmer and stop words load; throws naming the bad setting.
void check_bm25_config(const Bm25Config& config);

/// Builds a BM25 database; the single file appears at its final path only after finish().
class Bm25Writer {
 public:
  /// Starts a database that finish() writes to `file` (scratch space next to it).
  Bm25Writer(const std::filesystem::path& file, const Bm25Config& config);
  ~Bm25Writer();
  Bm25Writer(const Bm25Writer&) = delete;
  Bm25Writer& operator=(const Bm25Writer&) = delete;
  /// Indexes one passage as document `row` (rows must be added in order 0, 1, 2, ...).
  void add(uint64_t row, std::string_view title, std::string_view text);
  /// Commits, compacts into one file at the final path, removes the scratch directory.
  void finish();

 private:
  struct State;
  std::unique_ptr<State> state_;
};

/// Splits a BM25 database into `shards` single-file databases `out_dir/shard-<i>.xapian`, passage
/// row r going to shard r % shards: searched together (Bm25Searcher over all of them, local or
/// behind xapian-tcpsrv) they number documents as the original does, so results are identical.
std::vector<std::filesystem::path> split_bm25(const std::filesystem::path& file, int shards,
                                              const std::filesystem::path& out_dir);

/// Searches BM25 databases. Thread-safe: each concurrent search uses its own Xapian handle.
class Bm25Searcher {
 public:
  /// Opens one database file, or several shards: each entry a database path or
  /// "tcp:HOST:PORT" for a xapian-tcpsrv remote. Throws naming the shard that fails to open.
  Bm25Searcher(const std::vector<std::string>& shards, const Bm25Config& config);
  ~Bm25Searcher();
  /// Top-k rows and BM25 scores for one query (fewer when fewer documents match).
  void search(const std::string& query, int k, std::vector<int64_t>* rows,
              std::vector<float>* scores) const;
  /// Documents in all shards together.
  uint64_t size() const { return size_; }
  /// The configuration.
  const Bm25Config& config() const { return config_; }
  /// The query terms (stemmed, stop words removed) with their counts, for display and tests.
  std::map<std::string, int> query_terms(const std::string& query) const;

 private:
  std::unique_ptr<Xapian::Database> acquire() const;
  void release(std::unique_ptr<Xapian::Database> db) const;
  std::unique_ptr<Xapian::Database> open_all() const;
  struct Analyzer;
  std::vector<std::string> shards_;
  Bm25Config config_;
  std::shared_ptr<const Analyzer> analyzer_;
  uint64_t size_ = 0;
  mutable std::mutex mu_;
  mutable std::vector<std::unique_ptr<Xapian::Database>> pool_;
};

}  // namespace cepe::retriever
