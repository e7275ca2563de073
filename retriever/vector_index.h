// A FAISS index over passage vectors, compared by inner product: built from any factory string,
// trained on a sample, filled in batches, searched with per-call parameters (so concurrent searches
// with different nprobe/efSearch do not race), and loaded memory-mapped where FAISS allows.
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

namespace faiss {
struct Index;
}

namespace cepe::retriever {

/// Query-time knobs; 0 keeps the value stored in the index.
struct SearchParams {
  int nprobe = 0;     ///< IVF lists visited
  int ef_search = 0;  ///< HNSW candidate list size
};

/// Owns one faiss::Index using METRIC_INNER_PRODUCT.
class VectorIndex {
 public:
  /// Candidates per requested result that a ",RFlat" index re-ranks with the exact vectors.
  static constexpr int kRefineFactor = 16;
  /// Creates an empty index from a factory string ("Flat", "HNSW32", "IVF256,PQ64",
  /// "OPQ64,IVF256,PQ64"
  /// ...); throws naming the string when FAISS rejects it.
  static std::unique_ptr<VectorIndex> create(const std::string& factory, int dim);
  /// Reads an index file; `mmap` maps IVF inverted lists instead of reading them where their ids
  /// are aligned in the file (other lists and index types are read into memory).
  static std::unique_ptr<VectorIndex> load(const std::filesystem::path& file, bool mmap);
  ~VectorIndex();
  VectorIndex(const VectorIndex&) = delete;
  VectorIndex& operator=(const VectorIndex&) = delete;

  /// True when train() must run before add().
  bool needs_training() const;
  /// Vectors a good training run wants (39 per centroid, as FAISS warns below), 0 when untrained.
  int64_t suggested_training_size() const;
  /// Trains on n vectors.
  void train(int64_t n, const float* x);
  /// Adds n vectors; their ids are their rows (ntotal before the call + i).
  void add(int64_t n, const float* x);
  /// Removes the vectors of the rows whose keep[row] is false; the kept rows are renumbered 0, 1,
  /// ... in order, as the passage store compacts them. Flat, PQ, SQ and IVF structures (with
  /// OPQ/PCA transforms and RFlat re-ranking) remove in place, their trained centroids and
  /// codebooks unchanged; an HNSW graph, which FAISS cannot remove from, is built again from its
  /// exact vectors (HNSW over Flat storage) with `factory`. Throws naming the structure otherwise.
  void remove_rows(const std::vector<bool>& keep, const std::string& factory);
  /// Writes the index to `file` atomically.
  void save(const std::filesystem::path& file) const;
  /// Sets the defaults used when SearchParams leave a knob at 0.
  void set_defaults(const SearchParams& p);
  /// Top-k inner products for n queries: scores and rows are n x k; missing results have row -1.
  void search(int64_t n, const float* queries, int k, const SearchParams& params, float* scores,
              int64_t* rows) const;

  /// Vectors in the index.
  int64_t size() const;
  /// Vector dimension.
  int dim() const;
  /// True when nprobe applies (an IVF index somewhere in the structure).
  bool has_ivf() const;
  /// True when efSearch applies (an HNSW index or HNSW coarse quantizer).
  bool has_hnsw() const;
  /// Number of IVF lists (0 when not IVF).
  int64_t nlist() const;
  /// nprobe/efSearch used when a search leaves them at 0 (0 where they do not apply).
  const SearchParams& defaults() const { return defaults_; }
  /// True when the inverted lists are memory-mapped.
  bool is_mapped() const { return mapped_; }
  /// One line describing the structure ("IndexIVFPQ nlist=256 m=64 nprobe=16").
  std::string describe() const;
  /// The FAISS object, for callers that need more.
  const faiss::Index& raw() const { return *index_; }

 private:
  explicit VectorIndex(faiss::Index* index);
  std::unique_ptr<faiss::Index> index_;
  SearchParams defaults_;
  bool mapped_ = false;
};

}  // namespace cepe::retriever
