// manifest.json: what an index directory holds and how it was built. Written last and atomically,
// so a directory without it is an interrupted build, never an index.
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include "retriever/bm25.h"

namespace cepe::index {

/// Version of the index directory layout (2: retriever kinds, BM25, per-file checksums).
inline constexpr int kIndexFormatVersion = 2;

/// Size and checksum of one file of an index, recorded at build time and verified at open.
struct FileDigest {
  uint64_t bytes = 0;  ///< file size
  uint64_t hash = 0;   ///< Hasher digest of the whole file (seed kFileHashSeed)
};

/// Contents of an index directory's manifest.json.
struct IndexManifest {
  int format_version = kIndexFormatVersion;  ///< layout version
  std::string retriever = "dense";           ///< "bm25", "dense" or "hybrid"
  retriever::Bm25Config bm25;                ///< BM25 settings (bm25 and hybrid)
  std::map<std::string, FileDigest> files;   ///< every other file of the directory
  std::string embedder_spec;                 ///< spec that recreates the embedder
  std::string embedder_kind;         ///< "bert" (an index of the retired "lexical" is refused)
  std::string embedder_fingerprint;  ///< identifies the embedding function
  std::map<std::string, std::string> embedder_config;  ///< embedder settings, for display
  int dim = 0;                                         ///< vector dimension
  std::string faiss_factory;                           ///< FAISS factory string
  std::string faiss_description;                       ///< the built structure, for display
  int default_nprobe = 0;                              ///< stored IVF nprobe (0: not IVF)
  int default_ef_search = 0;                           ///< stored HNSW efSearch (0: not HNSW)
  uint64_t passages = 0;                               ///< passages (= vectors)
  uint64_t trained_on = 0;                             ///< training sample size (0: no training)
  std::vector<std::string> inputs;                     ///< corpus inputs as given
  uint64_t skipped = 0;                                ///< invalid records skipped
  uint64_t removed = 0;                  ///< passages removed since the build (cepe index remove)
  double build_seconds = 0;              ///< wall time of the build
  double embed_passages_per_second = 0;  ///< embedding + adding throughput
  std::string created;                   ///< UTC time, ISO 8601
  std::string cepe_version;              ///< version of the build that wrote it
};

/// File names inside an index directory.
inline constexpr const char* kManifestFile = "manifest.json";
/// The passage store.
inline constexpr const char* kPassagesFile = "passages.bin";
/// The FAISS index.
inline constexpr const char* kFaissFile = "faiss.index";
/// The BM25 (Xapian, single-file) database.
inline constexpr const char* kBm25File = "bm25.xapian";

/// True when the manifest's retriever kind has a dense (embedder + FAISS) side.
inline bool has_dense(const IndexManifest& m) {
  return m.retriever != "bm25";
}
/// True when the manifest's retriever kind has a BM25 side.
inline bool has_bm25(const IndexManifest& m) {
  return m.retriever != "dense";
}

/// Digest of a file, read in chunks (never mapped whole).
FileDigest digest_file(const std::filesystem::path& file);
/// Records the digest of every regular file in `dir` except the manifest.
std::map<std::string, FileDigest> digest_directory(const std::filesystem::path& dir);
/// Checks that `dir` holds exactly the files `m.files` lists with their sizes and checksums;
/// throws naming the first file that is missing, unexpected, truncated or corrupt.
void verify_files(const std::filesystem::path& dir, const IndexManifest& m);

/// Serialises to pretty JSON.
std::string manifest_to_json(const IndexManifest& m);
/// Parses manifest JSON; `origin` names the file in errors.
IndexManifest manifest_from_json(const std::string& json, const std::string& origin);
/// Reads `dir/manifest.json`; a missing manifest means "not an index (or an interrupted build)".
IndexManifest read_manifest(const std::filesystem::path& dir);
/// Writes `dir/manifest.json` atomically.
void write_manifest(const std::filesystem::path& dir, const IndexManifest& m);

}  // namespace cepe::index
