#include "index/builder.h"

#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <sys/file.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <random>
#include <regex>
#include <string_view>
#include <unordered_map>

#include "common/error.h"
#include "common/fileio.h"
#include "index/passage_store.h"
#include "retriever/bm25.h"
#include "retriever/embedder.h"

namespace cepe::index {

namespace fs = std::filesystem;
using retriever::SearchParams;
using retriever::VectorIndex;

namespace {

using Clock = std::chrono::steady_clock;

// The version stamped into the manifests this code writes (the CMake project's version).
constexpr const char* kCepeVersion = "0.1.0";

double seconds_since(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}

// Test hook: CEPE_INDEX_BUILD_CRASH_AT=<point> kills the process with SIGKILL at that point, the
// same as a user's kill -9 or an OOM kill, so tests can check what an interrupted build leaves.
void crash_point(const char* point) {
  const char* at = std::getenv("CEPE_INDEX_BUILD_CRASH_AT");
  if (at && std::strcmp(at, point) == 0) ::kill(::getpid(), SIGKILL);
}

std::string utc_now() {
  std::time_t t = std::time(nullptr);
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

std::string partial_prefix(const fs::path& out) {
  return "." + out.filename().string() + ".partial-";
}

// Removes temporary directories left by killed builds of the same index (their pid is gone).
void remove_stale_partials(const fs::path& out, BuildProgress* progress) {
  const fs::path parent = out.parent_path().empty() ? fs::path(".") : out.parent_path();
  const std::string prefix = partial_prefix(out);
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(parent, ec)) {
    const std::string name = entry.path().filename().string();
    if (name.rfind(prefix, 0) != 0) continue;
    const std::string rest = name.substr(prefix.size());
    const long pid = std::strtol(rest.c_str(), nullptr, 10);
    if (pid <= 0 || (::kill(static_cast<pid_t>(pid), 0) != 0 && errno == ESRCH)) {
      fs::remove_all(entry.path(), ec);
      if (progress)
        progress->note("removed " + entry.path().string() + " left by an interrupted build");
    }
  }
}

// Replaces `out` by `tmp`: an atomic swap where the kernel allows it, so the old index stays
// loadable until the new one is in place.
void install(const fs::path& tmp, const fs::path& out, bool replace) {
  if (!replace) {
    CEPE_CHECK(::rename(tmp.c_str(), out.c_str()) == 0, "cannot rename " << tmp.string() << " to "
                                                                         << out.string() << ": "
                                                                         << std::strerror(errno));
    return;
  }
  if (::renameat2(AT_FDCWD, tmp.c_str(), AT_FDCWD, out.c_str(), RENAME_EXCHANGE) == 0) {
    std::error_code ec;
    fs::remove_all(tmp, ec);  // now the old index
    return;
  }
  fs::path old = out;
  old += ".old-" + std::to_string(::getpid());
  CEPE_CHECK(::rename(out.c_str(), old.c_str()) == 0,
             "cannot move the old index " << out.string() << " aside: " << std::strerror(errno));
  CEPE_CHECK(::rename(tmp.c_str(), out.c_str()) == 0, "cannot rename " << tmp.string() << " to "
                                                                       << out.string() << ": "
                                                                       << std::strerror(errno));
  std::error_code ec;
  fs::remove_all(old, ec);
}

// The temporary directory a build or an add writes into (`.NAME.partial-PID` beside the index),
// created empty; deleted unless the work completed (keep = true once it is installed).
struct TempDirGuard {
  fs::path dir;
  bool keep = false;
  TempDirGuard(const fs::path& parent, const fs::path& out)
      : dir(parent / (partial_prefix(out) + std::to_string(::getpid()))) {
    fs::remove_all(dir);
    fs::create_directory(dir);
  }
  TempDirGuard(const TempDirGuard&) = delete;
  TempDirGuard& operator=(const TempDirGuard&) = delete;
  ~TempDirGuard() {
    if (!keep) {
      std::error_code ec;
      fs::remove_all(dir, ec);
    }
  }
};

// The end of ingestion, for a build and an add alike: the passage store and the BM25 database
// written, the corpus statistics and timings recorded.
void finish_ingest(PassageStoreWriter& store, const CorpusReader& reader,
                   retriever::Bm25Writer* bm25, Clock::time_point t0, BuildProgress& pr,
                   BuildResult* result) {
  result->passages = store.count();
  store.finish();
  result->corpus = reader.stats();
  result->skip_summary = reader.skip_summary();
  if (!result->skip_summary.empty()) pr.note(result->skip_summary);
  result->ingest_seconds = seconds_since(t0);
  if (bm25) {
    const auto t = Clock::now();
    pr.note("writing the BM25 database");
    bm25->finish();
    result->bm25_seconds = seconds_since(t);
  }
}

// The encoder-state stores of `out` (outside the manifest: `cepe index encode` adds them later)
// into the updated index being assembled in `tmp`, as hard links, or copies across file systems.
void link_encoder_stores(const fs::path& out, const fs::path& tmp) {
  const fs::path states = out / "encoder_states";
  if (!fs::is_directory(states)) return;
  fs::create_directory(tmp / "encoder_states");
  for (const auto& e : fs::directory_iterator(states)) {
    if (!e.is_regular_file()) continue;
    const fs::path to = tmp / "encoder_states" / e.path().filename();
    std::error_code ec;
    fs::create_hard_link(e.path(), to, ec);
    if (ec) fs::copy_file(e.path(), to);
  }
  fsync_directory(tmp / "encoder_states");
}

// Every passage's row by id (views into the store, which must outlive the map).
std::unordered_map<std::string_view, uint64_t> rows_by_id(const PassageStore& store) {
  std::unordered_map<std::string_view, uint64_t> row_of;
  row_of.reserve(static_cast<size_t>(store.size()));
  for (uint64_t row = 0; row < store.size(); ++row) row_of.emplace(store.get(row).id, row);
  return row_of;
}

// The FAISS index of an index being updated, read into memory (mapped inverted lists cannot
// change) and checked against the manifest.
std::unique_ptr<VectorIndex> load_vectors_for_update(const fs::path& out, const IndexManifest& m) {
  std::unique_ptr<VectorIndex> vindex = VectorIndex::load(out / kFaissFile, /*mmap=*/false);
  CEPE_CHECK(vindex->size() == static_cast<int64_t>(m.passages),
             (out / kFaissFile).string() << " holds " << vindex->size() << " vectors for "
                                         << m.passages << " passages; rebuild the index");
  return vindex;
}

// An index directory opened to be changed in place (cepe index add, remove): locked first, so
// that the manifest and files read are the ones the change replaces, not those of a writer that
// finished in between; every file checked against the manifest before anything is built on it;
// the leftovers of interrupted changes removed. finish() swaps the changed copy in.
struct IndexUpdate {
  fs::path out;     ///< the index directory
  fs::path parent;  ///< where the changed copy is assembled
  IndexWriteLock lock;
  IndexManifest manifest;
  std::unique_ptr<PassageStore> old_store;

  IndexUpdate(const fs::path& index, BuildProgress& pr)
      : out(existing_index_dir(index)),
        parent(out.parent_path().empty() ? fs::path(".") : out.parent_path()),
        lock(out),
        manifest(read_manifest(out)) {
    verify_files(out, manifest);
    remove_stale_partials(out, &pr);
    old_store = std::make_unique<PassageStore>(out / kPassagesFile);
    CEPE_CHECK(old_store->size() == manifest.passages,
               (out / kPassagesFile).string()
                   << " holds " << old_store->size() << " passages, the manifest "
                   << manifest.passages << "; rebuild the index");
  }

  // Records `m` as the manifest of the copy in `tmp`, brings the encoder-state stores along and
  // swaps the copy in for the index.
  void finish(TempDirGuard& tmp, IndexManifest& m) {
    m.cepe_version = kCepeVersion;
    m.files = digest_directory(tmp.dir);
    write_manifest(tmp.dir, m);
    link_encoder_stores(out, tmp.dir);
    fsync_directory(tmp.dir);
    crash_point("manifest");
    install(tmp.dir, out, /*replace=*/true);
    tmp.keep = true;
    fsync_directory(parent);
  }

 private:
  static fs::path existing_index_dir(fs::path index) {
    CEPE_CHECK(!index.empty(), "no index directory given (--index)");
    if (index.filename().empty()) index = index.parent_path();
    CEPE_CHECK(fs::is_directory(index), "index directory " << index.string() << " does not exist");
    return index;
  }
};

// Copies the passages of `old_store` whose keep[row] is set, in order, into `store` and `bm25`
// (when there is one): the rows an add or a removal keeps, renumbered from 0.
void copy_kept_passages(const PassageStore& old_store, const std::vector<bool>& keep,
                        PassageStoreWriter& store, retriever::Bm25Writer* bm25, BuildProgress& pr) {
  pr.start("copy", old_store.size(), "passages");
  for (uint64_t row = 0; row < old_store.size(); ++row) {
    if (keep[row]) {
      const PassageView p = old_store.get(row);
      const uint64_t at = store.add(p.id, p.title, p.text);
      if (bm25) bm25->add(at, p.title, p.text);
    }
    if ((row & 4095) == 4095) pr.update(row + 1);
  }
  pr.update(old_store.size());
  pr.finish();
}

// Embeds the store's passages from row `first` on and adds them to `vindex` in batches of
// `batch`; returns the seconds it took.
double embed_and_add(const PassageStore& store, int64_t first, retriever::Embedder& embedder,
                     VectorIndex& vindex, int batch, BuildProgress& pr) {
  const auto t = Clock::now();
  const int64_t n = static_cast<int64_t>(store.size());
  std::vector<float> buf(static_cast<size_t>(batch) * embedder.dim());
  std::vector<index::PassageView> views;
  pr.start("embed", static_cast<uint64_t>(n - first), "passages");
  for (int64_t b = first; b < n; b += batch) {
    const int64_t cnt = std::min<int64_t>(batch, n - b);
    views.clear();
    for (int64_t r = b; r < b + cnt; ++r) views.push_back(store.get(static_cast<uint64_t>(r)));
    embedder.embed_passages(views, buf.data());
    vindex.add(cnt, buf.data());
    pr.update(static_cast<uint64_t>(b - first + cnt));
    if (b == first) crash_point("add");
  }
  pr.finish();
  return seconds_since(t);
}

// Steps 2 and 3 of a dense build: train FAISS on a sample, then embed and add every passage.
void build_dense(const BuildOptions& opt, const fs::path& tmp, retriever::Embedder& embedder_ref,
                 VectorIndex& vindex_ref, BuildProgress& pr, BuildResult* result_ptr) {
  retriever::Embedder* embedder = &embedder_ref;
  VectorIndex* vindex = &vindex_ref;
  BuildResult& result = *result_ptr;
  const int dim = embedder->dim();
  PassageStore store(tmp / kPassagesFile);
  const int64_t n = static_cast<int64_t>(store.size());
  const int batch = opt.batch > 0 ? opt.batch : embedder->preferred_batch();
  std::vector<index::PassageView> views;
  auto embed_rows = [&](const std::vector<int64_t>& rows, size_t begin, size_t count, float* dst) {
    views.clear();
    for (size_t i = begin; i < begin + count; ++i)
      views.push_back(store.get(rows.empty() ? i : rows[i]));
    embedder->embed_passages(views, dst);
  };

  // 2. Train on a uniform sample (IVF centroids, PQ codebooks, OPQ rotation).
  if (vindex->needs_training()) {
    const auto t = Clock::now();
    int64_t want = opt.train_size > 0 ? opt.train_size : vindex->suggested_training_size();
    want = std::min(want, n);
    std::vector<int64_t> rows(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) rows[i] = i;
    std::mt19937_64 rng(opt.seed);
    // Partial Fisher-Yates: the first `want` rows become a uniform sample.
    for (int64_t i = 0; i < want; ++i) {
      std::uniform_int_distribution<int64_t> pick(i, n - 1);
      std::swap(rows[i], rows[pick(rng)]);
    }
    rows.resize(static_cast<size_t>(want));
    std::sort(rows.begin(), rows.end());  // sequential reads of the store
    std::vector<float> sample(static_cast<size_t>(want) * dim);
    pr.start("train-embed", static_cast<uint64_t>(want), "passages");
    for (int64_t b = 0; b < want; b += batch) {
      const size_t cnt = static_cast<size_t>(std::min<int64_t>(batch, want - b));
      embed_rows(rows, static_cast<size_t>(b), cnt, sample.data() + static_cast<size_t>(b) * dim);
      pr.update(static_cast<uint64_t>(b) + cnt);
    }
    pr.finish();
    pr.note("training " + opt.faiss + " on " + std::to_string(want) + " vectors");
    crash_point("train");
    vindex->train(want, sample.data());
    result.trained_on = static_cast<uint64_t>(want);
    result.train_seconds = seconds_since(t);
  }
  {
    // FAISS's defaults (one IVF list, efSearch 16) are rarely what anyone wants.
    SearchParams d = opt.defaults;
    const int64_t nlist = vindex->nlist();
    if (nlist > 0 && d.nprobe == 0)
      d.nprobe = static_cast<int>(std::min<int64_t>(nlist, std::max<int64_t>(8, nlist / 16)));
    if (vindex->has_hnsw() && d.ef_search == 0) d.ef_search = 64;
    vindex->set_defaults(d);
  }

  // 3. Embed and add every passage, in batches.
  result.embed_seconds = embed_and_add(store, 0, *embedder, *vindex, batch, pr);
  CEPE_CHECK(vindex->size() == n,
             "internal: FAISS holds " << vindex->size() << " vectors for " << n << " passages");
  pr.note("writing the FAISS index");
  vindex->save(tmp / kFaissFile);
  crash_point("save");
}

}  // namespace

IndexWriteLock::IndexWriteLock(const fs::path& index_dir) {
  fs::path dir = index_dir;
  if (dir.filename().empty()) dir = dir.parent_path();
  const fs::path parent = dir.parent_path().empty() ? fs::path(".") : dir.parent_path();
  const fs::path file = parent / ("." + dir.filename().string() + ".lock");
  fd_ = ::open(file.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  CEPE_CHECK(fd_ >= 0,
             "cannot open the lock file " << file.string() << ": " << std::strerror(errno));
  if (::flock(fd_, LOCK_EX | LOCK_NB) != 0) {
    const int err = errno;
    ::close(fd_);
    fd_ = -1;
    CEPE_CHECK(err != EWOULDBLOCK, "another cepe process is writing the index "
                                       << dir.string() << " (build, add or encode; it holds "
                                       << file.string() << "): wait for it to finish");
    CEPE_THROW("cannot lock " << file.string() << ": " << std::strerror(err));
  }
}

IndexWriteLock::~IndexWriteLock() {
  if (fd_ >= 0) ::close(fd_);  // closing releases the flock
}

bool is_partial_build_dir(const fs::path& dir) {
  static const std::regex re(R"(^\..+\.partial-[0-9]+$)");
  fs::path p = dir;
  if (p.filename().empty()) p = p.parent_path();  // "dir/" has an empty filename
  return std::regex_match(p.filename().string(), re);
}

uint64_t directory_bytes(const fs::path& dir) {
  uint64_t n = 0;
  std::error_code ec;
  for (const auto& e : fs::recursive_directory_iterator(dir, ec))
    if (e.is_regular_file()) n += e.file_size();
  return n;
}

BuildResult build_index(const BuildOptions& opt, BuildProgress* progress) {
  BuildProgress silent;
  BuildProgress& pr = progress ? *progress : silent;
  const auto t0 = Clock::now();
  CEPE_CHECK(!opt.out.empty(), "no output directory given (--out)");
  fs::path out = opt.out;
  if (out.filename().empty()) out = out.parent_path();  // "dir/" -> "dir"
  bool replace = false;
  if (fs::exists(out)) {
    CEPE_CHECK(opt.overwrite, out.string() << " already exists (pass --overwrite to replace it)");
    CEPE_CHECK(fs::is_directory(out),
               "refusing to replace " << out.string() << ": not a directory");
    const bool is_index = fs::exists(out / kManifestFile);
    CEPE_CHECK(is_index || fs::is_empty(out),
               "refusing to replace " << out.string()
                                      << ": it is neither a CEPE index nor an empty directory");
    replace = true;
  }
  const fs::path parent = out.parent_path().empty() ? fs::path(".") : out.parent_path();
  CEPE_CHECK(fs::is_directory(parent), "parent directory " << parent.string() << " does not exist");
  const IndexWriteLock lock(out);
  remove_stale_partials(out, &pr);

  // Everything before this point is cheap validation; create the embedder and FAISS structure
  // first as well, so that a bad --embedder or --faiss fails before reading the corpus.
  CEPE_CHECK(opt.retriever == "bm25" || opt.retriever == "dense" || opt.retriever == "hybrid",
             "unknown retriever '" << opt.retriever << "' (expected bm25, dense or hybrid)");
  const bool dense = opt.retriever != "bm25";
  const bool with_bm25 = opt.retriever != "dense";
  if (with_bm25) retriever::check_bm25_config(opt.bm25);
  std::unique_ptr<retriever::Embedder> embedder;
  std::unique_ptr<VectorIndex> vindex;
  int dim = 0;
  if (dense) {
    embedder = retriever::create_embedder(opt.embedder);
    dim = embedder->dim();
    vindex = VectorIndex::create(opt.faiss, dim);
  }
  CorpusReader reader(opt.inputs, opt.corpus);

  TempDirGuard guard(parent, out);
  const fs::path& tmp = guard.dir;

  BuildResult result;
  // 1. Ingest: validate, store, index the terms.
  {
    const auto t = Clock::now();
    PassageStoreWriter store(tmp / kPassagesFile);
    std::unique_ptr<retriever::Bm25Writer> bm25;
    if (with_bm25) bm25 = std::make_unique<retriever::Bm25Writer>(tmp / kBm25File, opt.bm25);
    pr.start("read", reader.total_bytes(), "bytes");
    bool crashed_mid_ingest = false;
    reader.read(
        [&](const Passage& p) {
          const uint64_t row = store.add(p.id, p.title, p.text);
          if (bm25) bm25->add(row, p.title, p.text);
          if (!crashed_mid_ingest && store.count() == 100) {
            crashed_mid_ingest = true;
            crash_point("ingest");
          }
        },
        [&](uint64_t bytes) { pr.update(bytes); });
    pr.finish();
    CEPE_CHECK(store.count() > 0, "the corpus has no valid passages");
    finish_ingest(store, reader, bm25.get(), t, pr, &result);
  }
  if (dense) build_dense(opt, tmp, *embedder, *vindex, pr, &result);
  if (!dense) crash_point("save");

  // 4. The manifest, last: its presence is what makes the directory an index.
  IndexManifest& m = result.manifest;
  m.retriever = opt.retriever;
  if (with_bm25) m.bm25 = opt.bm25;
  if (dense) {
    m.embedder_spec = embedder->spec();
    m.embedder_kind = embedder->kind();
    m.embedder_fingerprint = embedder->fingerprint();
    m.embedder_config = embedder->describe();
    m.dim = dim;
    m.faiss_factory = opt.faiss;
    m.faiss_description = vindex->describe();
    m.default_nprobe = vindex->defaults().nprobe;
    m.default_ef_search = vindex->defaults().ef_search;
    m.trained_on = result.trained_on;
  }
  m.passages = result.passages;
  for (const auto& in : opt.inputs) m.inputs.push_back(in.string());
  m.skipped = result.corpus.skipped;
  m.embed_passages_per_second =
      result.embed_seconds > 0 ? static_cast<double>(m.passages) / result.embed_seconds : 0;
  m.created = utc_now();
  m.cepe_version = kCepeVersion;
  m.build_seconds = seconds_since(t0);
  // Checksums of everything else, so that opening verifies each file before any parser reads it.
  m.files = digest_directory(tmp);
  write_manifest(tmp, m);
  fsync_directory(tmp);
  crash_point("manifest");
  install(tmp, out, replace);
  guard.keep = true;
  fsync_directory(parent);
  result.total_seconds = seconds_since(t0);
  result.bytes_on_disk = directory_bytes(out);
  return result;
}

BuildResult add_to_index(const AddOptions& opt, BuildProgress* progress) {
  BuildProgress silent;
  BuildProgress& pr = progress ? *progress : silent;
  const auto t0 = Clock::now();
  CEPE_CHECK(!opt.inputs.empty(), "no corpus to add (--input)");
  IndexUpdate update(opt.index, pr);
  const fs::path& out = update.out;
  IndexManifest m = update.manifest;
  const PassageStore& old_store = *update.old_store;

  const bool dense = has_dense(m), with_bm25 = has_bm25(m);
  std::unique_ptr<retriever::Embedder> embedder;
  std::unique_ptr<VectorIndex> vindex;
  if (dense) {
    embedder = retriever::create_embedder(m.embedder_spec);
    CEPE_CHECK(embedder->fingerprint() == m.embedder_fingerprint,
               "the index was built with embedder "
                   << m.embedder_spec << " of fingerprint " << m.embedder_fingerprint
                   << ", which is now " << embedder->fingerprint()
                   << " (its model changed?): the new passages "
                      "would not be comparable; rebuild the index");
    vindex = load_vectors_for_update(out, m);
  }
  BuildResult result;
  // With replace, a first pass over the input finds the old passages it replaces: they leave
  // (as cepe index remove takes them out) and their new versions join at the end.
  std::vector<bool> keep(static_cast<size_t>(old_store.size()), true);
  if (opt.replace) {
    const std::unordered_map<std::string_view, uint64_t> row_of = rows_by_id(old_store);
    CorpusReader scan(opt.inputs, opt.corpus);
    pr.start("scan", scan.total_bytes(), "bytes");
    scan.read(
        [&](const Passage& p) {
          const auto it = row_of.find(p.id);
          if (it != row_of.end() && keep[it->second]) {
            keep[it->second] = false;
            ++result.replaced;
          }
        },
        [&](uint64_t bytes) { pr.update(bytes); });
    pr.finish();
  }
  CorpusReader reader(opt.inputs, opt.corpus);
  uint64_t old_rows = 0;  // old passages kept, the rows before the new ones
  for (uint64_t row = 0; row < old_store.size(); ++row)
    if (keep[row]) reader.add_existing_id(old_store.get(row).id, old_rows++);

  TempDirGuard guard(update.parent, out);
  const fs::path& tmp = guard.dir;

  // 1. The store and the BM25 database: the old passages as they are, then the new ones.
  {
    const auto t = Clock::now();
    PassageStoreWriter store(tmp / kPassagesFile);
    std::unique_ptr<retriever::Bm25Writer> bm25;
    if (with_bm25) bm25 = std::make_unique<retriever::Bm25Writer>(tmp / kBm25File, m.bm25);
    copy_kept_passages(old_store, keep, store, bm25.get(), pr);
    pr.start("read", reader.total_bytes(), "bytes");
    reader.read(
        [&](const Passage& p) {
          const uint64_t row = store.add(p.id, p.title, p.text);
          if (bm25) bm25->add(row, p.title, p.text);
        },
        [&](uint64_t bytes) { pr.update(bytes); });
    pr.finish();
    CEPE_CHECK(store.count() > old_rows, "the input has no new valid passages");
    finish_ingest(store, reader, bm25.get(), t, pr, &result);
  }
  // 2. Only the new passages are embedded (after the replaced ones' vectors leave).
  if (dense) {
    if (result.replaced > 0) vindex->remove_rows(keep, m.faiss_factory);
    const PassageStore store(tmp / kPassagesFile);
    const int batch = opt.batch > 0 ? opt.batch : embedder->preferred_batch();
    result.embed_seconds =
        embed_and_add(store, static_cast<int64_t>(old_rows), *embedder, *vindex, batch, pr);
    CEPE_CHECK(vindex->size() == static_cast<int64_t>(store.size()),
               "internal: FAISS holds " << vindex->size() << " vectors for " << store.size()
                                        << " passages");
    pr.note("writing the FAISS index");
    vindex->save(tmp / kFaissFile);
    m.faiss_description = vindex->describe();
  }
  crash_point("save");

  // 3. The manifest: the build's record, with the passages and inputs added.
  m.passages = result.passages;
  for (const auto& in : opt.inputs) m.inputs.push_back(in.string());
  m.skipped += result.corpus.skipped;
  update.finish(guard, m);
  result.manifest = m;
  result.total_seconds = seconds_since(t0);
  result.bytes_on_disk = directory_bytes(out);
  return result;
}

RemoveResult remove_from_index(const RemoveOptions& opt, BuildProgress* progress) {
  BuildProgress silent;
  BuildProgress& pr = progress ? *progress : silent;
  const auto t0 = Clock::now();
  CEPE_CHECK(!opt.ids.empty(), "no passage ids to remove");
  IndexUpdate update(opt.index, pr);
  const fs::path& out = update.out;
  IndexManifest m = update.manifest;
  const PassageStore& old_store = *update.old_store;
  const std::unordered_map<std::string_view, uint64_t> row_of = rows_by_id(old_store);
  std::vector<bool> keep(static_cast<size_t>(old_store.size()), true);
  RemoveResult result;
  for (size_t i = 0; i < opt.ids.size(); ++i) {
    const auto it = row_of.find(opt.ids[i]);
    if (it == row_of.end()) {
      CEPE_CHECK(
          opt.ignore_missing,
          (i < opt.id_origins.size() && !opt.id_origins[i].empty() ? opt.id_origins[i] + ": " : "")
              << "unknown id '" << opt.ids[i] << "' (not in the index " << out.string() << ")");
      ++result.missing;
      continue;
    }
    if (keep[it->second]) ++result.removed;
    keep[it->second] = false;
  }
  CEPE_CHECK(result.removed > 0, "none of the " << opt.ids.size() << " ids is in the index "
                                                << out.string() << ": nothing to remove");
  CEPE_CHECK(result.removed < old_store.size(),
             "removing all " << old_store.size() << " passages would leave " << out.string()
                             << " empty; delete the directory instead");

  // 1. The removed vectors leave the FAISS index (first: a structure FAISS cannot remove from is
  // refused before anything is copied); nothing is embedded.
  std::unique_ptr<VectorIndex> vindex;
  if (has_dense(m)) {
    vindex = load_vectors_for_update(out, m);
    pr.note("removing " + std::to_string(result.removed) + " vectors from the FAISS index");
    vindex->remove_rows(keep, m.faiss_factory);
  }
  TempDirGuard guard(update.parent, out);
  const fs::path& tmp = guard.dir;
  // 2. The store and the BM25 database without the removed passages.
  {
    PassageStoreWriter store(tmp / kPassagesFile);
    std::unique_ptr<retriever::Bm25Writer> bm25;
    if (has_bm25(m)) bm25 = std::make_unique<retriever::Bm25Writer>(tmp / kBm25File, m.bm25);
    copy_kept_passages(old_store, keep, store, bm25.get(), pr);
    store.finish();
    crash_point("copy");
    if (bm25) {
      pr.note("writing the BM25 database");
      bm25->finish();
    }
  }
  if (vindex) {
    pr.note("writing the FAISS index");
    vindex->save(tmp / kFaissFile);
    m.faiss_description = vindex->describe();
  }
  crash_point("save");
  // 3. The manifest and the encoder-state stores.
  m.passages = old_store.size() - result.removed;
  m.removed += result.removed;
  update.finish(guard, m);
  result.manifest = m;
  result.total_seconds = seconds_since(t0);
  result.bytes_on_disk = directory_bytes(out);
  return result;
}

}  // namespace cepe::index
