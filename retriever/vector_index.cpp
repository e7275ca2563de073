#include "retriever/vector_index.h"

#include <faiss/IndexFlat.h>
#include <faiss/IndexHNSW.h>
#include <faiss/IndexIVF.h>
#include <faiss/IndexIVFPQ.h>
#include <faiss/IndexPQ.h>
#include <faiss/IndexPreTransform.h>
#include <faiss/IndexRefine.h>
#include <faiss/impl/FaissException.h>
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

// Serialises searches on structures that cannot take per-call parameters (IndexRefine in FAISS
// 1.7), whose knobs must then be set on the shared object.
std::mutex g_refine_mutex;
std::atomic<uint64_t> g_tmp_counter{0};

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
  } catch (const std::exception& e) {
    CEPE_THROW("cannot read FAISS index " << file.string() << ": " << faiss_message(e));
  }
  std::unique_ptr<VectorIndex> v(new VectorIndex(idx));
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
