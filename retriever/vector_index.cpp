#include "retriever/vector_index.h"

#include <faiss/IndexFlat.h>
#include <faiss/IndexFlatCodes.h>
#include <faiss/IndexHNSW.h>
#include <faiss/IndexIVF.h>
#include <faiss/IndexIVFPQ.h>
#include <faiss/IndexPQ.h>
#include <faiss/IndexPreTransform.h>
#include <faiss/IndexRefine.h>
#include <faiss/VectorTransform.h>
#include <faiss/impl/FaissException.h>
#include <faiss/impl/IDSelector.h>
#include <faiss/index_factory.h>
#include <faiss/index_io.h>
#include <faiss/invlists/OnDiskInvertedLists.h>
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <mutex>
#include <sstream>
#include <typeinfo>
#include <vector>

#include "common/error.h"
#include "common/fileio.h"

namespace cepe::retriever {

namespace {

// Unwraps the structure FAISS builds from a factory string down to the index that holds vectors.
const faiss::Index* inner(const faiss::Index* idx) {
  if (auto* pt = dynamic_cast<const faiss::IndexPreTransform*>(idx)) return inner(pt->index);
  if (auto* rf = dynamic_cast<const faiss::IndexRefine*>(idx)) return inner(rf->base_index);
  return idx;
}

const faiss::IndexIVF* find_ivf(const faiss::Index* idx) {
  return dynamic_cast<const faiss::IndexIVF*>(inner(idx));
}

const faiss::IndexHNSW* find_hnsw(const faiss::Index* idx) {
  const faiss::Index* in = inner(idx);
  if (auto* h = dynamic_cast<const faiss::IndexHNSW*>(in)) return h;
  if (auto* ivf = dynamic_cast<const faiss::IndexIVF*>(in))
    return dynamic_cast<const faiss::IndexHNSW*>(ivf->quantizer);
  return nullptr;
}

bool contains_refine(const faiss::Index* idx) {
  if (auto* pt = dynamic_cast<const faiss::IndexPreTransform*>(idx))
    return contains_refine(pt->index);
  return dynamic_cast<const faiss::IndexRefine*>(idx) != nullptr;
}

// Per-call parameter objects mirror the index structure; `keep` owns them for the call.
faiss::SearchParameters* make_params(const faiss::Index* idx, const SearchParams& p,
                                     std::vector<std::unique_ptr<faiss::SearchParameters>>* keep) {
  if (auto* pt = dynamic_cast<const faiss::IndexPreTransform*>(idx)) {
    auto sp = std::make_unique<faiss::SearchParametersPreTransform>();
    sp->index_params = make_params(pt->index, p, keep);
    keep->push_back(std::move(sp));
    return keep->back().get();
  }
  if (auto* ivf = dynamic_cast<const faiss::IndexIVF*>(idx)) {
    auto sp = std::make_unique<faiss::SearchParametersIVF>();
    sp->nprobe = p.nprobe > 0 ? static_cast<size_t>(p.nprobe) : ivf->nprobe;
    sp->max_codes = ivf->max_codes;
    sp->quantizer_params = make_params(ivf->quantizer, p, keep);
    keep->push_back(std::move(sp));
    return keep->back().get();
  }
  if (auto* hnsw = dynamic_cast<const faiss::IndexHNSW*>(idx)) {
    auto sp = std::make_unique<faiss::SearchParametersHNSW>();
    sp->efSearch = p.ef_search > 0 ? p.ef_search : hnsw->hnsw.efSearch;
    keep->push_back(std::move(sp));
    return keep->back().get();
  }
  return nullptr;
}

std::string faiss_message(const std::exception& e) {
  std::string m = e.what();
  // FAISS messages carry a multi-line C++ location; the first line is the useful part.
  if (auto nl = m.find('\n'); nl != std::string::npos) m = m.substr(0, nl);
  // "Error in <signature> at ./faiss/x.cpp:123: what went wrong": keep what went wrong.
  if (m.rfind("Error in ", 0) == 0) {
    if (auto at = m.find(".cpp:"); at != std::string::npos) {
      if (auto colon = m.find(": ", at); colon != std::string::npos) m = m.substr(colon + 2);
    }
  }
  return m;
}

// Structural checks of a FAISS index read from disk, before any search touches it. FAISS trusts
// its own files: one wrong neighbour id in an HNSW graph or one list size in an IVF file makes a
// search read out of bounds. The manifest checksums catch corruption first; these catch what a
// checksum cannot (a file written by a buggy or hostile tool with a valid checksum), cheaply:
// O(graph edges + ids), never reading the vector codes themselves.
// A structural check that fails names the file and what is wrong, and says what to do.
#define CHECK_STRUCTURE(cond, msg) \
  CEPE_CHECK(cond, msg << " (the file is corrupt; rebuild the index)")

void check_structure(const faiss::Index* idx, const std::string& where);

void check_codes(const faiss::IndexFlatCodes* fc, const std::string& where) {
  CHECK_STRUCTURE(fc->codes.size() == static_cast<size_t>(fc->ntotal) * fc->code_size,
                  where << ": " << fc->codes.size() << " code bytes for " << fc->ntotal
                        << " vectors of " << fc->code_size << " bytes");
}

// A product quantizer's codebook and code size fit an index of dimension d with code_size-byte
// codes (IndexPQ and IndexIVFPQ alike).
void check_pq(const faiss::ProductQuantizer& pq, size_t code_size, int d,
              const std::string& where) {
  CHECK_STRUCTURE(pq.code_size == code_size && pq.M * pq.dsub == static_cast<size_t>(d) &&
                      pq.ksub == (size_t{1} << pq.nbits) &&
                      pq.centroids.size() == pq.M * pq.ksub * pq.dsub,
                  where << ": product quantizer (M " << pq.M << ", " << pq.nbits << " bits, code "
                        << pq.code_size << " bytes) does not fit the index");
}

void check_hnsw(const faiss::IndexHNSW* h, const std::string& where) {
  const faiss::HNSW& g = h->hnsw;
  const size_t n = static_cast<size_t>(h->ntotal);
  CHECK_STRUCTURE(h->storage != nullptr, where << ": HNSW index without vector storage");
  CHECK_STRUCTURE(h->storage->ntotal == h->ntotal && h->storage->d == h->d,
                  where << ": HNSW storage holds " << h->storage->ntotal << " vectors of dimension "
                        << h->storage->d << ", the graph " << h->ntotal << " of " << h->d);
  check_structure(h->storage, where + " (HNSW storage)");
  CHECK_STRUCTURE(g.levels.size() == n && g.offsets.size() == n + 1,
                  where << ": HNSW graph has " << g.levels.size() << " levels and "
                        << g.offsets.size() << " offsets for " << n << " vectors");
  CHECK_STRUCTURE(!g.cum_nneighbor_per_level.empty() && g.cum_nneighbor_per_level[0] == 0,
                  where << ": HNSW neighbour counts per level are malformed");
  const int levels = static_cast<int>(g.cum_nneighbor_per_level.size()) - 1;
  CHECK_STRUCTURE(g.max_level >= -1 && g.max_level < levels,
                  where << ": HNSW max level " << g.max_level << " outside 0.." << levels - 1);
  CHECK_STRUCTURE(
      n == 0 ? g.entry_point == -1 : g.entry_point >= 0 && static_cast<size_t>(g.entry_point) < n,
      where << ": HNSW entry point " << g.entry_point << " outside 0.." << n);
  for (int l = 0; l < levels; ++l)
    CHECK_STRUCTURE(g.cum_nneighbor_per_level[l + 1] >= g.cum_nneighbor_per_level[l],
                    where << ": HNSW neighbour counts per level decrease at level " << l);
  CHECK_STRUCTURE(g.offsets.empty() || g.offsets[0] == 0,
                  where << ": HNSW offsets do not start at 0");
  for (size_t i = 0; i < n; ++i) {
    const int lv = g.levels[i];
    CHECK_STRUCTURE(lv >= 1 && lv <= levels && lv - 1 <= g.max_level,
                    where << ": HNSW vector " << i << " has level " << lv << " (max "
                          << g.max_level + 1 << ")");
    // Each vector owns cum_nneighbor_per_level[level] slots; search walks exactly that range.
    CHECK_STRUCTURE(
        g.offsets[i + 1] >= g.offsets[i] &&
            g.offsets[i + 1] - g.offsets[i] == static_cast<size_t>(g.cum_nneighbor_per_level[lv]),
        where << ": HNSW neighbour range of vector " << i << " is malformed");
  }
  CHECK_STRUCTURE(g.offsets.back() == g.neighbors.size(),
                  where << ": HNSW offsets end at " << g.offsets.back()
                        << ", the neighbour table holds " << g.neighbors.size());
  for (size_t e = 0; e < g.neighbors.size(); ++e) {
    const faiss::HNSW::storage_idx_t v = g.neighbors[e];
    CHECK_STRUCTURE(
        v >= -1 && v < static_cast<faiss::HNSW::storage_idx_t>(n),
        where << ": HNSW neighbour id " << v << " (entry " << e << ") outside 0.." << n - 1);
  }
}

void check_ivf(const faiss::IndexIVF* ivf, const std::string& where) {
  CHECK_STRUCTURE(ivf->quantizer != nullptr && ivf->invlists != nullptr,
                  where << ": IVF index without quantizer or inverted lists");
  CHECK_STRUCTURE(ivf->quantizer->d == ivf->d &&
                      ivf->quantizer->ntotal == static_cast<faiss::Index::idx_t>(ivf->nlist),
                  where << ": IVF quantizer holds " << ivf->quantizer->ntotal
                        << " centroids of dimension " << ivf->quantizer->d << ", the index wants "
                        << ivf->nlist << " of " << ivf->d);
  check_structure(ivf->quantizer, where + " (IVF quantizer)");
  const faiss::InvertedLists* il = ivf->invlists;
  CHECK_STRUCTURE(il->nlist == ivf->nlist && il->code_size == ivf->code_size,
                  where << ": inverted lists have " << il->nlist << " lists of " << il->code_size
                        << "-byte codes, the index " << ivf->nlist << " of " << ivf->code_size);
  if (auto* pq = dynamic_cast<const faiss::IndexIVFPQ*>(ivf))
    check_pq(pq->pq, ivf->code_size, ivf->d, where);
  size_t total = 0;
  const auto* od = dynamic_cast<const faiss::OnDiskInvertedLists*>(il);
  for (size_t l = 0; l < il->nlist; ++l) {
    const size_t size = il->list_size(l);
    CHECK_STRUCTURE(
        size <= static_cast<size_t>(ivf->ntotal),
        where << ": inverted list " << l << " claims " << size << " entries of " << ivf->ntotal);
    if (od != nullptr) {
      // A mapped list is [capacity codes][capacity ids] at its offset inside the mapping.
      const auto& li = od->lists[l];
      const size_t per = il->code_size + sizeof(faiss::Index::idx_t);
      CHECK_STRUCTURE(li.size <= li.capacity &&
                          li.capacity <= od->totsize / std::max<size_t>(per, 1) &&
                          li.offset <= od->totsize - li.capacity * per,
                      where << ": inverted list " << l << " lies outside its file");
    }
    total += size;
    faiss::InvertedLists::ScopedIds ids(il, l);
    for (size_t j = 0; j < size; ++j)
      CHECK_STRUCTURE(ids[j] >= 0 && ids[j] < ivf->ntotal,
                      where << ": inverted list " << l << " holds id " << ids[j] << " outside 0.."
                            << ivf->ntotal - 1);
  }
  CHECK_STRUCTURE(
      total == static_cast<size_t>(ivf->ntotal),
      where << ": inverted lists hold " << total << " entries, the index " << ivf->ntotal);
}

void check_structure(const faiss::Index* idx, const std::string& where) {
  CHECK_STRUCTURE(idx->d > 0 && idx->ntotal >= 0,
                  where << ": dimension " << idx->d << ", " << idx->ntotal << " vectors");
  if (auto* pt = dynamic_cast<const faiss::IndexPreTransform*>(idx)) {
    int d = pt->d;
    for (const faiss::VectorTransform* t : pt->chain) {
      CHECK_STRUCTURE(t != nullptr && t->d_in == d,
                      where << ": transform chain breaks at dimension " << d);
      if (auto* lt = dynamic_cast<const faiss::LinearTransform*>(t))
        CHECK_STRUCTURE(lt->A.size() == static_cast<size_t>(lt->d_in) * lt->d_out &&
                            (lt->b.empty() || lt->b.size() == static_cast<size_t>(lt->d_out)),
                        where << ": linear transform " << lt->d_in << " -> " << lt->d_out
                              << " has a matrix of " << lt->A.size() << " values");
      d = t->d_out;
    }
    CHECK_STRUCTURE(pt->index != nullptr && pt->index->d == d && pt->index->ntotal == pt->ntotal,
                    where << ": transformed index does not match its transforms");
    check_structure(pt->index, where);
  } else if (auto* rf = dynamic_cast<const faiss::IndexRefine*>(idx)) {
    CHECK_STRUCTURE(rf->base_index != nullptr && rf->refine_index != nullptr &&
                        rf->base_index->ntotal == rf->ntotal &&
                        rf->refine_index->ntotal == rf->ntotal && rf->base_index->d == rf->d &&
                        rf->refine_index->d == rf->d,
                    where << ": refine index parts disagree on their vectors");
    check_structure(rf->base_index, where + " (base)");
    check_structure(rf->refine_index, where + " (refine)");
  } else if (auto* h = dynamic_cast<const faiss::IndexHNSW*>(idx)) {
    check_hnsw(h, where);
  } else if (auto* ivf = dynamic_cast<const faiss::IndexIVF*>(idx)) {
    check_ivf(ivf, where);
  } else if (auto* pq = dynamic_cast<const faiss::IndexPQ*>(idx)) {
    check_pq(pq->pq, pq->code_size, pq->d, where);
    check_codes(pq, where);
  } else if (auto* fc = dynamic_cast<const faiss::IndexFlatCodes*>(idx)) {
    if (dynamic_cast<const faiss::IndexFlat*>(idx))
      CHECK_STRUCTURE(
          fc->code_size == sizeof(float) * idx->d,
          where << ": flat index with " << fc->code_size << "-byte rows for dimension " << idx->d);
    check_codes(fc, where);
  }
  // Other types are not made by `cepe index build`; the manifest checksum is their only guard.
}

#undef CHECK_STRUCTURE

// Serialises searches on structures that cannot take per-call parameters (IndexRefine in FAISS
// 1.7), whose knobs must then be set on the shared object.
std::mutex g_refine_mutex;
std::atomic<uint64_t> g_tmp_counter{0};

// FAISS maps an inverted list as [capacity codes][capacity ids] at its offset in the file, and
// neither the offsets (they follow the header) nor the code bytes are padded to 8: the 64-bit ids
// are then misaligned, and every read of them, ours or FAISS's, is undefined behaviour. Only
// arithmetic here, no reads: the structure is validated after this.
bool mapped_ids_aligned(const faiss::Index* idx) {
  const faiss::IndexIVF* ivf = find_ivf(idx);
  const auto* od = ivf ? dynamic_cast<const faiss::OnDiskInvertedLists*>(ivf->invlists) : nullptr;
  if (od == nullptr) return true;
  for (const auto& li : od->lists) {
    const uintptr_t ids =
        reinterpret_cast<uintptr_t>(od->ptr) + li.offset + li.capacity * od->code_size;
    if (li.capacity > 0 && ids % alignof(faiss::Index::idx_t) != 0) return false;
  }
  return true;
}

// The rows remove_rows drops: new_row[id] < 0.
struct DroppedRows : faiss::IDSelector {
  explicit DroppedRows(const std::vector<int64_t>& new_row) : new_row(new_row) {}
  bool is_member(faiss::Index::idx_t id) const override {
    return id >= 0 && static_cast<size_t>(id) < new_row.size() && new_row[id] < 0;
  }
  const std::vector<int64_t>& new_row;
};

// Removes the dropped rows from `idx` in place. Structures with implicit ids (the codes in row
// order) compact, which renumbers the kept rows as wanted; IVF lists store ids, which are
// rewritten through new_row.
void remove_in_place(faiss::Index* idx, const std::vector<int64_t>& new_row) {
  const DroppedRows dropped(new_row);
  if (auto* pt = dynamic_cast<faiss::IndexPreTransform*>(idx)) {
    remove_in_place(pt->index, new_row);
    pt->ntotal = pt->index->ntotal;
  } else if (auto* rf = dynamic_cast<faiss::IndexRefine*>(idx)) {
    remove_in_place(rf->base_index, new_row);
    remove_in_place(rf->refine_index, new_row);
    rf->ntotal = rf->base_index->ntotal;
  } else if (auto* ivf = dynamic_cast<faiss::IndexIVF*>(idx)) {
    CEPE_CHECK(ivf->direct_map.type == faiss::DirectMap::NoMap,
               "internal: the IVF index has a direct map");
    ivf->remove_ids(dropped);
    faiss::InvertedLists* lists = ivf->invlists;
    std::vector<faiss::Index::idx_t> ids;
    std::vector<uint8_t> codes;
    for (size_t l = 0; l < lists->nlist; ++l) {
      const size_t n = lists->list_size(l);
      if (n == 0) continue;
      ids.resize(n);
      {
        faiss::InvertedLists::ScopedIds old(lists, l);
        for (size_t i = 0; i < n; ++i) ids[i] = new_row.at(static_cast<size_t>(old[i]));
        faiss::InvertedLists::ScopedCodes c(lists, l);
        codes.assign(c.get(), c.get() + n * lists->code_size);
      }
      lists->update_entries(l, 0, n, ids.data(), codes.data());
    }
  } else if (dynamic_cast<faiss::IndexFlatCodes*>(idx) != nullptr) {
    idx->remove_ids(dropped);
  } else {
    // HNSW graphs (below a transform; a top-level one is rebuilt instead) and other structures.
    CEPE_THROW("FAISS has no removal for this structure");
  }
}

}  // namespace

VectorIndex::VectorIndex(faiss::Index* index) : index_(index) {}
VectorIndex::~VectorIndex() = default;

std::unique_ptr<VectorIndex> VectorIndex::create(const std::string& factory, int dim) {
  CEPE_CHECK(!factory.empty(), "empty FAISS factory string");
  faiss::Index* idx = nullptr;
  try {
    idx = faiss::index_factory(dim, factory.c_str(), faiss::METRIC_INNER_PRODUCT);
  } catch (const std::exception& e) {
    CEPE_THROW("FAISS factory string '" << factory << "' rejected for dimension " << dim << ": "
                                        << faiss_message(e));
  }
  CEPE_CHECK(idx, "FAISS factory string '" << factory << "' produced no index");
  // ",RFlat" re-ranks the base index's candidates with the exact vectors; with FAISS's default
  // of k candidates it could only re-order them, so it looks at kRefineFactor x k of them (the
  // factor is saved with the index).
  faiss::Index* outer = idx;
  if (auto* pt = dynamic_cast<faiss::IndexPreTransform*>(outer)) outer = pt->index;
  if (auto* rf = dynamic_cast<faiss::IndexRefine*>(outer)) rf->k_factor = kRefineFactor;
  std::unique_ptr<VectorIndex> v(new VectorIndex(idx));
  v->defaults_.nprobe = find_ivf(idx) ? static_cast<int>(find_ivf(idx)->nprobe) : 0;
  v->defaults_.ef_search = find_hnsw(idx) ? find_hnsw(idx)->hnsw.efSearch : 0;
  return v;
}

std::unique_ptr<VectorIndex> VectorIndex::load(const std::filesystem::path& file, bool mmap) {
  CEPE_CHECK(std::filesystem::exists(file), "FAISS index " << file.string() << " is missing");
  faiss::Index* idx = nullptr;
  bool mapped = false;
  try {
    // Only IVF inverted lists can be mapped; asking for it elsewhere is harmless but we only
    // claim "mapped" when FAISS actually produced mapped lists.
    idx = faiss::read_index(file.c_str(), mmap ? faiss::IO_FLAG_MMAP : 0);
    if (mmap && !mapped_ids_aligned(idx)) {
      // Read into memory instead: the lists then live in aligned vectors.
      delete idx;
      idx = nullptr;
      idx = faiss::read_index(file.c_str(), 0);
    }
  } catch (const std::exception& e) {
    CEPE_THROW("cannot read FAISS index " << file.string() << ": " << faiss_message(e)
                                          << " (the file is corrupt; rebuild the index)");
  }
  std::unique_ptr<VectorIndex> v(new VectorIndex(idx));
  check_structure(idx, "FAISS index " + file.string());
  if (auto* ivf = const_cast<faiss::IndexIVF*>(find_ivf(idx))) {
    if (auto* od = dynamic_cast<faiss::OnDiskInvertedLists*>(ivf->invlists)) {
      // FAISS's prefetcher starts threads and takes a global lock on every search; the page cache
      // does the same job without serialising concurrent queries.
      od->prefetch_nthread = 0;
      mapped = true;
    }
  }
  v->mapped_ = mapped;
  v->defaults_.nprobe = find_ivf(idx) ? static_cast<int>(find_ivf(idx)->nprobe) : 0;
  v->defaults_.ef_search = find_hnsw(idx) ? find_hnsw(idx)->hnsw.efSearch : 0;
  return v;
}

bool VectorIndex::needs_training() const {
  return !index_->is_trained;
}

int64_t VectorIndex::suggested_training_size() const {
  if (index_->is_trained) return 0;
  // FAISS's k-means warns below 39 points per centroid; 64 leaves a margin.
  int64_t want = 10000;
  if (auto* ivf = find_ivf(index_.get())) want = std::max<int64_t>(want, 64 * ivf->nlist);
  const faiss::Index* in = inner(index_.get());
  if (auto* pq = dynamic_cast<const faiss::IndexIVFPQ*>(in))
    want = std::max<int64_t>(want, 64 * pq->pq.ksub);
  if (auto* pq = dynamic_cast<const faiss::IndexPQ*>(in))
    want = std::max<int64_t>(want, 64 * pq->pq.ksub);
  return std::min<int64_t>(want, 1000000);
}

void VectorIndex::train(int64_t n, const float* x) {
  try {
    index_->train(n, x);
  } catch (const std::exception& e) {
    CEPE_THROW("FAISS training on " << n << " vectors failed: " << faiss_message(e));
  }
}

void VectorIndex::add(int64_t n, const float* x) {
  CEPE_CHECK(index_->is_trained, "internal: adding to an untrained FAISS index");
  try {
    index_->add(n, x);
  } catch (const std::exception& e) {
    CEPE_THROW("adding " << n << " vectors to the FAISS index failed: " << faiss_message(e));
  }
}

void VectorIndex::remove_rows(const std::vector<bool>& keep, const std::string& factory) {
  CEPE_CHECK(keep.size() == static_cast<size_t>(index_->ntotal),
             "internal: " << keep.size() << " rows to keep or drop, the FAISS index holds "
                          << index_->ntotal);
  std::vector<int64_t> new_row(keep.size(), -1);
  int64_t kept = 0;
  for (size_t r = 0; r < keep.size(); ++r)
    if (keep[r]) new_row[r] = kept++;
  if (auto* h = dynamic_cast<faiss::IndexHNSW*>(index_.get())) {
    // FAISS's HNSW graph has no deletion: the kept vectors, exact in Flat storage, go into a new
    // graph with the same settings.
    CEPE_CHECK(dynamic_cast<const faiss::IndexFlat*>(h->storage) != nullptr,
               "cannot remove vectors from " << describe()
                                             << ": an HNSW graph over compressed storage cannot "
                                                "be rebuilt exactly; rebuild the index");
    const int d = dim();
    std::vector<float> vectors(static_cast<size_t>(kept) * d);
    for (size_t r = 0; r < keep.size(); ++r)
      if (keep[r])
        h->storage->reconstruct(static_cast<faiss::Index::idx_t>(r),
                                vectors.data() + new_row[r] * d);
    std::unique_ptr<VectorIndex> fresh = create(factory, d);
    auto* fh = dynamic_cast<faiss::IndexHNSW*>(fresh->index_.get());
    CEPE_CHECK(fh != nullptr, "FAISS factory string '" << factory
                                                       << "' (the manifest's) is not "
                                                          "the HNSW index the file holds");
    fh->hnsw.efConstruction = h->hnsw.efConstruction;
    fh->hnsw.efSearch = h->hnsw.efSearch;
    fresh->add(kept, vectors.data());
    index_ = std::move(fresh->index_);
    defaults_.ef_search = fh->hnsw.efSearch;
    return;
  }
  try {
    remove_in_place(index_.get(), new_row);
  } catch (const Error& e) {
    CEPE_THROW("cannot remove vectors from " << describe() << ": " << e.message()
                                             << "; rebuild the index");
  } catch (const std::exception& e) {
    CEPE_THROW("cannot remove vectors from " << describe() << ": " << faiss_message(e)
                                             << "; rebuild the index");
  }
  CEPE_CHECK(index_->ntotal == kept, "internal: FAISS holds " << index_->ntotal
                                                              << " vectors after removing, " << kept
                                                              << " rows were kept");
}

void VectorIndex::save(const std::filesystem::path& file) const {
  std::filesystem::path tmp = file;
  tmp += ".tmp-" + std::to_string(::getpid()) + "-" + std::to_string(g_tmp_counter++);
  try {
    faiss::write_index(index_.get(), tmp.c_str());
  } catch (const std::exception& e) {
    std::error_code ec;
    std::filesystem::remove(tmp, ec);
    CEPE_THROW("cannot write FAISS index " << file.string() << ": " << faiss_message(e));
  }
  int fd = ::open(tmp.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd >= 0) {
    ::fsync(fd);
    ::close(fd);
  }
  std::error_code ec;
  std::filesystem::rename(tmp, file, ec);
  CEPE_CHECK(!ec,
             "cannot rename " << tmp.string() << " to " << file.string() << ": " << ec.message());
  fsync_directory(file.parent_path());
}

void VectorIndex::set_defaults(const SearchParams& p) {
  if (auto* ivf = const_cast<faiss::IndexIVF*>(find_ivf(index_.get())); ivf && p.nprobe > 0) {
    ivf->nprobe = static_cast<size_t>(p.nprobe);
    defaults_.nprobe = p.nprobe;
  }
  if (auto* h = const_cast<faiss::IndexHNSW*>(find_hnsw(index_.get())); h && p.ef_search > 0) {
    h->hnsw.efSearch = p.ef_search;
    defaults_.ef_search = p.ef_search;
  }
}

void VectorIndex::search(int64_t n, const float* queries, int k, const SearchParams& params,
                         float* scores, int64_t* rows) const {
  CEPE_CHECK(k > 0, "k must be positive (got " << k << ")");
  CEPE_CHECK(params.nprobe == 0 || has_ivf(),
             "nprobe applies only to IVF indexes (this one is " << describe() << ")");
  CEPE_CHECK(params.ef_search == 0 || has_hnsw(),
             "efSearch applies only to HNSW indexes (this one is " << describe() << ")");
  const bool custom = params.nprobe > 0 || params.ef_search > 0;
  try {
    if (contains_refine(index_.get())) {
      std::lock_guard<std::mutex> lock(g_refine_mutex);
      auto* self = const_cast<VectorIndex*>(this);
      const SearchParams saved = defaults_;
      if (custom) self->set_defaults(params);
      index_->search(n, queries, k, scores, rows);
      if (custom) self->set_defaults(saved);
      return;
    }
    std::vector<std::unique_ptr<faiss::SearchParameters>> keep;
    const faiss::SearchParameters* sp = custom ? make_params(index_.get(), params, &keep) : nullptr;
    index_->search(n, queries, k, scores, rows, sp);
  } catch (const std::exception& e) {
    CEPE_THROW("FAISS search failed: " << faiss_message(e));
  }
}

int64_t VectorIndex::size() const {
  return index_->ntotal;
}
int VectorIndex::dim() const {
  return index_->d;
}
int64_t VectorIndex::nlist() const {
  const faiss::IndexIVF* ivf = find_ivf(index_.get());
  return ivf ? static_cast<int64_t>(ivf->nlist) : 0;
}
bool VectorIndex::has_ivf() const {
  return find_ivf(index_.get()) != nullptr;
}
bool VectorIndex::has_hnsw() const {
  return find_hnsw(index_.get()) != nullptr;
}

std::string VectorIndex::describe() const {
  std::ostringstream os;
  const faiss::Index* idx = index_.get();
  if (auto* pt = dynamic_cast<const faiss::IndexPreTransform*>(idx)) {
    os << "PreTransform(" << pt->chain.size() << " transform" << (pt->chain.size() == 1 ? "" : "s")
       << ") + ";
    idx = pt->index;
  }
  if (dynamic_cast<const faiss::IndexRefine*>(idx)) os << "Refine + ";
  const faiss::Index* in = inner(index_.get());
  if (auto* ivfpq = dynamic_cast<const faiss::IndexIVFPQ*>(in)) {
    os << "IVF-PQ nlist=" << ivfpq->nlist << " m=" << ivfpq->pq.M << " nbits=" << ivfpq->pq.nbits
       << " nprobe=" << defaults_.nprobe;
  } else if (auto* ivf = dynamic_cast<const faiss::IndexIVF*>(in)) {
    os << "IVF nlist=" << ivf->nlist << " code_size=" << ivf->code_size
       << " nprobe=" << defaults_.nprobe;
  } else if (auto* h = dynamic_cast<const faiss::IndexHNSW*>(in)) {
    os << "HNSW M=" << h->hnsw.nb_neighbors(1) << " efSearch=" << defaults_.ef_search;
  } else if (auto* pq = dynamic_cast<const faiss::IndexPQ*>(in)) {
    os << "PQ m=" << pq->pq.M << " nbits=" << pq->pq.nbits;
  } else if (dynamic_cast<const faiss::IndexFlat*>(in)) {
    os << "Flat (exact inner product)";
  } else {
    os << "exhaustive (" << typeid(*in).name() << ")";
  }
  if (mapped_) os << ", inverted lists memory-mapped";
  return os.str();
}

}  // namespace cepe::retriever
