// `cepe index build`: corpus -> passage store + BM25 database and/or embeddings in FAISS, in a
// temporary directory that is renamed into place only when complete.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "index/corpus.h"
#include "index/manifest.h"
#include "retriever/bm25.h"
#include "retriever/vector_index.h"

namespace cepe::index {

/// What to build.
struct BuildOptions {
  std::vector<std::filesystem::path> inputs;  ///< corpus files and directories
  std::filesystem::path out;                  ///< index directory to create
  std::string retriever = "bm25";             ///< "bm25", "dense" or "hybrid"
  retriever::Bm25Config bm25;                 ///< BM25 settings (bm25 and hybrid)
  std::string embedder;                       ///< embedder spec (dense and hybrid: "bert:DIR")
  std::string faiss = "Flat";                 ///< FAISS factory string
  CorpusOptions corpus;                       ///< ingestion settings
  int64_t train_size = 0;                     ///< training sample for IVF/PQ (0: automatic)
  int batch = 0;                     ///< passages per embedding batch (0: embedder's choice)
  bool overwrite = false;            ///< replace an existing index at `out`
  retriever::SearchParams defaults;  ///< nprobe/efSearch stored as the index defaults
  uint64_t seed = 20240601;          ///< training sample seed
};

/// Receives progress; the CLI draws a bar on a terminal and logs lines otherwise.
class BuildProgress {
 public:
  virtual ~BuildProgress() = default;
  /// A phase starts; `total` units of `unit` (0 when unknown).
  virtual void start(const std::string& /*phase*/, uint64_t /*total*/,
                     const std::string& /*unit*/) {}
  /// `done` units of the current phase are complete.
  virtual void update(uint64_t /*done*/) {}
  /// The current phase ended.
  virtual void finish() {}
  /// A one-line message worth showing.
  virtual void note(const std::string& /*line*/) {}
};

/// Outcome of a build.
struct BuildResult {
  IndexManifest manifest;      ///< what was written
  CorpusStats corpus;          ///< ingestion statistics
  std::string skip_summary;    ///< one line about skipped records (empty when none)
  double ingest_seconds = 0;   ///< reading, validating, storing, term indexing
  double train_seconds = 0;    ///< embedding the sample and training
  double embed_seconds = 0;    ///< embedding and adding every passage
  double bm25_seconds = 0;     ///< committing and compacting the BM25 database
  uint64_t passages = 0;       ///< passages stored
  uint64_t replaced = 0;       ///< old passages replaced by new versions (add with replace)
  uint64_t trained_on = 0;     ///< FAISS training sample size (0: none)
  double total_seconds = 0;    ///< wall time
  uint64_t bytes_on_disk = 0;  ///< size of the finished directory
};

/// Builds the index; throws cepe::Error (leaving no index at `out`) on any failure.
BuildResult build_index(const BuildOptions& options, BuildProgress* progress = nullptr);

/// What to add to an existing index.
struct AddOptions {
  std::filesystem::path index;                ///< the index directory, replaced when done
  std::vector<std::filesystem::path> inputs;  ///< corpus files and directories to add
  CorpusOptions corpus;                       ///< ingestion settings
  int batch = 0;  ///< passages per embedding batch (0: embedder's choice)
  /// Replace passages whose id the index holds: their old versions leave (as remove_from_index
  /// would take them out) and the new records join at the end, instead of being duplicates.
  bool replace = false;
};

/// Appends the passages of `inputs` to an index: the old passages keep their rows and the new ones
/// follow, in input order, as a build of everything would number them. Only the new passages are
/// embedded and added to FAISS (an IVF or PQ index keeps the centroids and codebooks it was
/// trained on); the BM25 database is rewritten over every passage, since a compacted Xapian
/// database cannot grow. An id the index already holds is a duplicate (an error, or skipped with
/// skip_invalid). The updated index is assembled beside the old one and swapped in atomically, its
/// `encoder_states/` stores hard-linked along: they serve the old passages by id, and the new ones
/// are encoded live until `cepe index encode` runs again. With `replace`, the result is the index
/// of the old passages less the replaced ones, then the input. Throws cepe::Error, leaving the
/// index as it was, on any failure.
BuildResult add_to_index(const AddOptions& options, BuildProgress* progress = nullptr);

/// What to remove from an existing index.
struct RemoveOptions {
  std::filesystem::path index;          ///< the index directory, replaced when done
  std::vector<std::string> ids;         ///< passage ids to remove
  std::vector<std::string> id_origins;  ///< where each id came from ("FILE:LINE" or ""), for errors
  bool ignore_missing = false;          ///< skip ids the index does not hold instead of failing
};

/// Outcome of a removal.
struct RemoveResult {
  IndexManifest manifest;      ///< what was written
  uint64_t removed = 0;        ///< passages removed
  uint64_t missing = 0;        ///< ids not in the index (ignore_missing)
  double total_seconds = 0;    ///< wall time
  uint64_t bytes_on_disk = 0;  ///< size of the finished directory
};

/// Removes passages by id: the others keep their order and are renumbered 0, 1, ... as a build of
/// the remaining passages would number them. Nothing is embedded: the FAISS index drops the
/// removed vectors (keeping its trained centroids and codebooks; an HNSW graph is rebuilt from
/// its exact vectors), the passage store and the BM25 database are rewritten without them. An id
/// the index does not hold is an error naming its origin (or skipped with ignore_missing);
/// removing every passage is an error. Assembled beside the index and swapped in atomically,
/// encoder-state stores hard-linked along (they serve the remaining passages by id; `cepe index
/// encode` rewrites them for the new passage list, copying their rows). Throws cepe::Error,
/// leaving the index as it was, on any failure.
RemoveResult remove_from_index(const RemoveOptions& options, BuildProgress* progress = nullptr);

/// An exclusive claim on writing one index directory (build, add, encode), held until
/// destroyed: a lock file `.NAME.lock` beside the directory, flock(2)ed, so that it is released
/// when the process dies however it dies.
class IndexWriteLock {
 public:
  /// Takes the lock for `index_dir`; throws naming the directory when another process holds it.
  explicit IndexWriteLock(const std::filesystem::path& index_dir);
  /// Releases the lock (the empty lock file stays: removing it would race with a new taker).
  ~IndexWriteLock();
  /// Not copyable.
  IndexWriteLock(const IndexWriteLock&) = delete;
  /// Not assignable.
  IndexWriteLock& operator=(const IndexWriteLock&) = delete;

 private:
  int fd_ = -1;
};

/// True for the temporary directories builds write into (never loadable as an index).
bool is_partial_build_dir(const std::filesystem::path& dir);

/// Total size of the regular files under `dir`.
uint64_t directory_bytes(const std::filesystem::path& dir);

}  // namespace cepe::index
