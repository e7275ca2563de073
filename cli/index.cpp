// `cepe index build|search|info`: build a BM25, FAISS or hybrid index over a corpus, query it,
// describe it.
#include <rapidjson/stringbuffer.h>
#include <rapidjson/writer.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iostream>
#include <sstream>

#include "cli/command.h"
#include "cli/model_flags.h"
#include "common/error.h"
#include "common/fileio.h"
#include "common/progress.h"
#include "common/strings.h"
#include "index/builder.h"
#include "index/encoder_store.h"
#include "index/manifest.h"
#include "index/open_index.h"
#include "index/passage_store.h"
#include "qa/encoder_states.h"
#include "retriever/retriever.h"

namespace cepe::cli {

namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

std::string human_count(double v) {
  char buf[32];
  if (v >= 1e9)
    std::snprintf(buf, sizeof buf, "%.1fG", v / 1e9);
  else if (v >= 1e6)
    std::snprintf(buf, sizeof buf, "%.1fM", v / 1e6);
  else if (v >= 1e4)
    std::snprintf(buf, sizeof buf, "%.1fk", v / 1e3);
  else
    std::snprintf(buf, sizeof buf, "%.0f", v);
  return buf;
}

std::string human_bytes(double v) {
  char buf[32];
  if (v >= 1 << 30)
    std::snprintf(buf, sizeof buf, "%.2f GiB", v / (1 << 30));
  else if (v >= 1 << 20)
    std::snprintf(buf, sizeof buf, "%.1f MiB", v / (1 << 20));
  else if (v >= 1 << 10)
    std::snprintf(buf, sizeof buf, "%.1f KiB", v / (1 << 10));
  else
    std::snprintf(buf, sizeof buf, "%.0f B", v);
  return buf;
}

std::string clock_time(double s) {
  if (!std::isfinite(s) || s < 0) return "?";
  const long t = std::lround(s);
  char buf[32];
  if (t >= 3600)
    std::snprintf(buf, sizeof buf, "%ld:%02ld:%02ld", t / 3600, (t / 60) % 60, t % 60);
  else
    std::snprintf(buf, sizeof buf, "%ld:%02ld", t / 60, t % 60);
  return buf;
}

// A progress bar on a terminal; periodic plain lines in logs (where \r would make a mess).
class CliProgress : public index::BuildProgress {
 public:
  /// `label` prefixes the log lines ("index build", "index add").
  explicit CliProgress(std::string label = "index build")
      : label_(std::move(label) + ": "), tty_(::isatty(STDERR_FILENO) == 1) {}
  void start(const std::string& phase, uint64_t total, const std::string& unit) override {
    phase_ = phase;
    total_ = total;
    unit_ = unit;
    done_ = 0;
    t0_ = last_ = Clock::now();
    if (!tty_) std::cerr << label_ << phase_ << ": started (" << amount(total_) << ")\n";
  }
  void update(uint64_t done) override {
    done_ = done;
    const auto now = Clock::now();
    const double since = std::chrono::duration<double>(now - last_).count();
    if (since < (tty_ ? 0.1 : 10.0)) return;
    last_ = now;
    if (tty_)
      std::cerr << "\r" << line() << "\033[K" << std::flush;
    else
      std::cerr << label_ << line() << "\n";
  }
  void finish() override {
    const double s = elapsed();
    if (tty_) std::cerr << "\r" << line() << "\033[K\n";
    std::cerr << label_ << phase_ << ": done, " << amount(done_) << " in " << clock_time(s) << " ("
              << rate(done_, s) << ")\n";
  }
  void note(const std::string& l) override { std::cerr << label_ << l << "\n"; }

 private:
  double elapsed() const { return std::chrono::duration<double>(Clock::now() - t0_).count(); }
  std::string amount(uint64_t n) const {
    return unit_ == "bytes" ? human_bytes(static_cast<double>(n))
                            : human_count(static_cast<double>(n)) + " " + unit_;
  }
  std::string rate(uint64_t n, double s) const {
    const double r = s > 0 ? n / s : 0;
    return unit_ == "bytes" ? human_bytes(r) + "/s" : human_count(r) + " " + unit_ + "/s";
  }
  std::string line() const {
    const double s = elapsed();
    const double frac = total_ ? static_cast<double>(done_) / total_ : 0;
    std::ostringstream os;
    if (tty_) {
      constexpr int kWidth = 30;
      const int filled = static_cast<int>(frac * kWidth);
      os << "[" << std::string(filled, '#') << std::string(kWidth - filled, '.') << "] ";
    }
    char pct[16];
    std::snprintf(pct, sizeof pct, "%5.1f%%", 100 * frac);
    const double r = s > 0 ? done_ / s : 0;
    const double eta = r > 0 && total_ ? (total_ - done_) / r : NAN;
    os << phase_ << " " << pct << " " << amount(done_) << "/" << amount(total_) << "  "
       << rate(done_, s) << "  ETA " << clock_time(eta);
    return os.str();
  }
  std::string label_;
  bool tty_;
  std::string phase_, unit_;
  uint64_t total_ = 0, done_ = 0;
  Clock::time_point t0_, last_;
};

int usage_error(const Args& args, const std::string& line, const std::string& msg) {
  std::cerr << "cepe index: error: " << msg << "\n" << args.usage(line);
  return 2;
}

// The flags that split .txt/.md inputs into passages (build and add).
void add_passage_flags(Args& a) {
  a.option("passage-words", "passage length for .txt/.md inputs, in words", "100")
      .option("overlap", "words of whole sentences repeated between consecutive .txt/.md passages",
              "0");
}

// Corpus reading settings from --skip-invalid and the passage flags.
index::CorpusOptions corpus_options(const Args& a) {
  index::CorpusOptions o;
  o.skip_invalid = a.is_set("skip-invalid");
  o.passage_words = static_cast<int>(a.get_int("passage-words", 8, 100000));
  o.overlap_words = static_cast<int>(a.get_int("overlap", 0, 100000));
  return o;
}

// The skipped records of a build or an add: the summary line and its examples.
void print_skipped(const index::BuildResult& r) {
  if (r.skip_summary.empty()) return;
  std::cout << r.skip_summary << "\n";
  for (const auto& e : r.corpus.examples) std::cout << "  " << e << "\n";
}

int run_build(const std::vector<std::string>& argv) {
  Args a;
  a.multi("input",
          "corpus: .jsonl ({id,title,text}), .tsv (id, text, title + header), .txt/.md, or a "
          "directory of .txt/.md")
      .option("out", "index directory to create")
      .option("retriever",
              "bm25 (Xapian, no model), dense (embedder + FAISS) or hybrid (both, fused by "
              "reciprocal rank fusion); default bm25, or dense when --embedder/--faiss is given")
      .option("bm25-k1", "BM25 term-frequency saturation k1", "0.9")
      .option("bm25-b", "BM25 length normalisation b", "0.4")
      .option("bm25-stemmer", "Xapian stemmer language (english, french, ...) or none", "english")
      .option("bm25-stopwords", "english (built-in list), none, or a file of stop words", "english")
      .option("embedder",
              "dense side: "
              "bert:DIR[,pooling=mean|cls][,normalize=0|1][,query_prefix=..][,passage_prefix=..]")
      .option(
          "faiss",
          "FAISS factory string: Flat, HNSW32, IVF256,Flat, IVF256,PQ64, OPQ64,IVF256,PQ64, ...",
          "Flat")
      .flag("skip-invalid", "skip (and count) bad records instead of stopping at the first")
      .option("train-size",
              "vectors sampled to train IVF/PQ/OPQ (default: 64 per centroid, at least 10000)")
      .option("batch", "passages per embedding batch (default: the embedder's choice)")
      .option("nprobe",
              "IVF lists visited by default at query time (default: nlist/16, at least 8)")
      .option("ef-search", "HNSW efSearch used by default at query time", "64")
      .flag("overwrite", "replace an existing index at --out");
  add_passage_flags(a);
  const std::string line =
      "cepe index build --input PATH... --out DIR [--retriever bm25|dense|hybrid] "
      "[--embedder bert:DIR] [--faiss STRING] [--skip-invalid]";
  a.parse(argv);
  if (a.help_requested()) {
    std::cout << a.usage(line);
    return 0;
  }
  if (!a.positionals().empty())
    return usage_error(
        a, line, "unexpected argument '" + a.positionals()[0] + "' (inputs go after --input)");
  index::BuildOptions o;
  for (const auto& in : a.get_all("input")) o.inputs.emplace_back(in);
  if (o.inputs.empty()) return usage_error(a, line, "missing required flag --input");
  o.out = a.get("out");
  const bool dense_flags = a.is_set("embedder") || a.is_set("faiss");
  o.retriever = a.is_set("retriever") ? a.get("retriever") : (dense_flags ? "dense" : "bm25");
  CEPE_CHECK(o.retriever == "bm25" || o.retriever == "dense" || o.retriever == "hybrid",
             "--retriever: expected bm25, dense or hybrid (got '" << o.retriever << "')");
  CEPE_CHECK(o.retriever != "bm25" || !dense_flags,
             "--embedder and --faiss need --retriever dense or hybrid");
  o.bm25.k1 = a.get_double("bm25-k1", 0, 100);
  o.bm25.b = a.get_double("bm25-b", 0, 1);
  o.bm25.stemmer = a.get("bm25-stemmer");
  o.bm25.stopwords = a.get("bm25-stopwords");
  if (a.has("embedder")) o.embedder = a.get("embedder");
  CEPE_CHECK(o.retriever == "bm25" || !o.embedder.empty(),
             "--retriever " << o.retriever << " needs --embedder bert:DIR (a BERT-family model "
                            << "directory: config.json, vocab.txt, model.safetensors)");
  o.faiss = a.get("faiss");
  o.corpus = corpus_options(a);
  if (a.has("train-size")) o.train_size = a.get_int("train-size", 1, 1LL << 40);
  if (a.has("batch")) o.batch = static_cast<int>(a.get_int("batch", 1, 1 << 20));
  if (a.has("nprobe")) o.defaults.nprobe = static_cast<int>(a.get_int("nprobe", 1, 1 << 20));
  o.defaults.ef_search = static_cast<int>(a.get_int("ef-search", 1, 1 << 20));
  o.overwrite = a.is_set("overwrite");
  CliProgress progress;
  const index::BuildResult r = index::build_index(o, &progress);
  const auto& m = r.manifest;
  std::cout << "built " << o.out.string() << ": " << m.passages << " passages, retriever "
            << m.retriever;
  if (index::has_bm25(m))
    std::cout << ", BM25 (k1 " << m.bm25.k1 << ", b " << m.bm25.b << ", stemmer " << m.bm25.stemmer
              << ", stop words " << m.bm25.stopwords << ")";
  if (index::has_dense(m))
    std::cout << ", embedder " << m.embedder_spec << " (dim " << m.dim << "), FAISS "
              << m.faiss_factory << " [" << m.faiss_description << "]";
  std::cout << "\n";
  char buf[256];
  std::snprintf(buf, sizeof buf,
                "time %.1f s (read %.1f s, bm25 %.1f s, train %.1f s, embed+add %.1f s = %.0f "
                "passages/s), %s on disk\n",
                r.total_seconds, r.ingest_seconds, r.bm25_seconds, r.train_seconds, r.embed_seconds,
                m.embed_passages_per_second,
                human_bytes(static_cast<double>(r.bytes_on_disk)).c_str());
  std::cout << buf;
  print_skipped(r);
  return 0;
}

// `cepe index add`: more passages into an existing index, which is swapped in atomically.
int run_add(const std::vector<std::string>& argv) {
  Args a;
  a.option("index", "index directory (from cepe index build)")
      .multi("input", "JSONL/TSV file or directory of .txt/.md files to add")
      .flag("skip-invalid",
            "skip (and count) bad records, and ids the index already holds, instead of stopping")
      .option("batch", "passages per embedding batch (default: the embedder's choice)")
      .flag("replace",
            "a record whose id the index holds replaces that passage (the old version leaves, "
            "the new one joins at the end) instead of being a duplicate");
  add_passage_flags(a);
  const std::string line =
      "cepe index add --index DIR --input PATH... [--skip-invalid] [--replace]";
  a.parse(argv);
  if (a.help_requested()) {
    std::cout << a.usage(line);
    return 0;
  }
  if (!a.positionals().empty())
    return usage_error(
        a, line, "unexpected argument '" + a.positionals()[0] + "' (inputs go after --input)");
  index::AddOptions o;
  if (!a.has("index")) return usage_error(a, line, "missing required flag --index");
  o.index = a.get("index");
  for (const auto& in : a.get_all("input")) o.inputs.emplace_back(in);
  if (o.inputs.empty()) return usage_error(a, line, "missing required flag --input");
  o.corpus = corpus_options(a);
  if (a.has("batch")) o.batch = static_cast<int>(a.get_int("batch", 1, 1 << 20));
  o.replace = a.is_set("replace");
  CliProgress progress("index add");
  const index::BuildResult r = index::add_to_index(o, &progress);
  const uint64_t added = r.corpus.passages;
  char buf[256];
  std::snprintf(buf, sizeof buf,
                "added %llu passages to %s (%llu in all); time %.1f s (copy + read %.1f s, bm25 "
                "%.1f s, embed+add %.1f s), %s on disk\n",
                static_cast<unsigned long long>(added), o.index.string().c_str(),
                static_cast<unsigned long long>(r.passages), r.total_seconds, r.ingest_seconds,
                r.bm25_seconds, r.embed_seconds,
                human_bytes(static_cast<double>(r.bytes_on_disk)).c_str());
  std::cout << buf;
  if (r.replaced > 0) std::cout << r.replaced << " of them replaced an older version\n";
  print_skipped(r);
  return 0;
}

// `cepe index remove`: passages out by id, nothing embedded.
int run_remove(const std::vector<std::string>& argv) {
  Args a;
  a.option("index", "index directory (from cepe index build)")
      .option("ids", "file of passage ids to remove, one per line ('-': standard input)")
      .flag("ignore-missing", "skip ids the index does not hold instead of stopping");
  const std::string line = "cepe index remove --index DIR [--ids FILE] [ID...] [--ignore-missing]";
  a.parse(argv);
  if (a.help_requested()) {
    std::cout << a.usage(line);
    return 0;
  }
  if (!a.has("index")) return usage_error(a, line, "missing required flag --index");
  index::RemoveOptions o;
  o.index = a.get("index");
  o.ignore_missing = a.is_set("ignore-missing");
  for (const auto& id : a.positionals()) {
    o.ids.push_back(id);
    o.id_origins.push_back("");
  }
  if (a.has("ids")) {
    const std::string file = a.get("ids");
    std::ifstream in_file;
    if (file != "-") {
      in_file.open(file);
      CEPE_CHECK(in_file, "--ids " << file << ": cannot open: " << std::strerror(errno));
    }
    std::istream& in = file == "-" ? std::cin : in_file;
    const std::string name = file == "-" ? "<stdin>" : file;
    std::string id;
    for (uint64_t n = 1; std::getline(in, id); ++n) {
      if (!id.empty() && id.back() == '\r') id.pop_back();
      if (id.empty()) continue;
      o.ids.push_back(id);
      o.id_origins.push_back(name + ":" + std::to_string(n));
    }
    CEPE_CHECK(!in.bad(), "--ids " << name << ": read error");
  }
  if (o.ids.empty()) return usage_error(a, line, "no ids to remove (give them, or --ids FILE)");
  CliProgress progress("index remove");
  const index::RemoveResult r = index::remove_from_index(o, &progress);
  char buf[256];
  std::snprintf(buf, sizeof buf,
                "removed %llu passages from %s (%llu left); time %.1f s, %s on disk\n",
                static_cast<unsigned long long>(r.removed), o.index.string().c_str(),
                static_cast<unsigned long long>(r.manifest.passages), r.total_seconds,
                human_bytes(static_cast<double>(r.bytes_on_disk)).c_str());
  std::cout << buf;
  if (r.missing > 0) std::cout << r.missing << " ids were not in the index (ignored)\n";
  return 0;
}

std::string clip(const std::string& s, size_t max) {
  if (s.size() <= max) return s;
  size_t cut = max;
  // Never split a UTF-8 character.
  while (cut > 0 && (static_cast<unsigned char>(s[cut]) & 0xC0) == 0x80) --cut;
  return s.substr(0, cut) + "...";
}

void write_hits_json(const std::string& query, const std::vector<retriever::Hit>& hits) {
  rapidjson::StringBuffer sb;
  rapidjson::Writer<rapidjson::StringBuffer> w(sb);
  auto str = [&](const std::string& s) {
    w.String(s.c_str(), static_cast<rapidjson::SizeType>(s.size()));
  };
  w.StartObject();
  w.Key("query");
  str(query);
  w.Key("hits");
  w.StartArray();
  for (const auto& h : hits) {
    w.StartObject();
    w.Key("rank");
    w.Int(h.rank);
    w.Key("score");
    w.Double(h.score);
    w.Key("id");
    str(h.id);
    w.Key("title");
    str(h.title);
    w.Key("text");
    str(h.text);
    w.Key("row");
    w.Uint64(h.row);
    w.EndObject();
  }
  w.EndArray();
  w.EndObject();
  std::cout << sb.GetString() << "\n";
}

int run_search(const std::vector<std::string>& argv) {
  Args a;
  a.option("index", "index directory")
      .option("k", "passages to return (-k)", "10")
      .option("nprobe", "IVF lists to visit (default: the index's)")
      .option("ef-search", "HNSW candidate list size (default: the index's)")
      .option("embedder", "refuse unless the index was built with this embedder spec")
      .option("bm25-weight", "hybrid indexes: weight of the BM25 ranking in rank fusion", "1")
      .option("dense-weight", "hybrid indexes: weight of the dense ranking in rank fusion", "1")
      .option("rrf-k", "hybrid indexes: reciprocal rank fusion constant c in w / (c + rank)", "60")
      .multi("bm25-shard",
             "search these BM25 databases (paths or tcp:HOST:PORT of xapian-tcpsrv) as one "
             "instead of the index's own")
      .flag("json",
            "one JSON object per question: {query, hits: [{rank, score, id, title, text, row}]}")
      .flag("full", "print whole passages (default: the first 300 bytes)")
      .flag("no-mmap",
            "read IVF inverted lists into memory instead of mapping them (where they can be)")
      .positional("QUESTION...  one or more questions");
  const std::string line =
      "cepe index search --index DIR [-k 10] [--nprobe N] [--ef-search N] [--json] \"question\"...";
  a.parse(argv);
  if (a.help_requested()) {
    std::cout << a.usage(line);
    return 0;
  }
  if (a.positionals().empty()) return usage_error(a, line, "no question given");
  index::OpenOptions ro;
  if (a.has("embedder")) ro.embedder = a.get("embedder");
  ro.mmap = !a.is_set("no-mmap");
  ro.bm25_shards = a.get_all("bm25-shard");
  auto r = index::open_index(a.get("index"), ro);
  retriever::SearchOptions so;
  so.k = static_cast<int>(a.get_int("k", 1, 100000));
  if (a.has("nprobe")) so.nprobe = static_cast<int>(a.get_int("nprobe", 1, 1 << 20));
  if (a.has("ef-search")) so.ef_search = static_cast<int>(a.get_int("ef-search", 1, 1 << 20));
  so.bm25_weight = a.get_double("bm25-weight", 0, 1e6);
  so.dense_weight = a.get_double("dense-weight", 0, 1e6);
  so.rrf_k = static_cast<int>(a.get_int("rrf-k", 0, 1 << 20));
  const auto results = r->search_batch(a.positionals(), so);
  for (size_t q = 0; q < results.size(); ++q) {
    if (a.is_set("json")) {
      write_hits_json(a.positionals()[q], results[q]);
      continue;
    }
    if (results.size() > 1) std::cout << (q ? "\n" : "") << "Q: " << a.positionals()[q] << "\n";
    for (const auto& h : results[q]) {
      char score[32];
      std::snprintf(score, sizeof score, "%.4f", h.score);
      std::cout << h.rank << ". [" << score << "] " << h.id
                << (h.title.empty() ? "" : " | " + h.title) << "\n   "
                << (a.is_set("full") ? h.text : clip(h.text, 300)) << "\n";
    }
  }
  return 0;
}

// The encoder-state stores beside an index (cepe index encode) and the builds of one in progress,
// for cepe index info: what each holds and whether it still covers the index. With `verify`, each
// store's data checksum is recomputed (a mismatch is an error, as for the index's own files).
void print_encoder_stores(const fs::path& dir, uint64_t passages, bool verify) {
  std::error_code ec;
  std::vector<fs::path> files;
  for (const auto& e : fs::directory_iterator(index::encoder_store_dir(dir), ec))
    files.push_back(e.path());
  std::sort(files.begin(), files.end());
  for (const fs::path& f : files) {
    if (f.extension() == ".ces") {
      const index::EncoderStore store(f);
      if (verify) store.verify();
      const index::EncoderFingerprint& fp = store.fingerprint();
      std::cout << "encoder    " << f.filename().string() << " ("
                << index::store_layout_name(fp.layout) << ", " << index::state_dtype_name(fp.dtype)
                << ", chunks of " << fp.chunk_tokens << " tokens, " << store.size() << " passages, "
                << human_bytes(static_cast<double>(store.file_bytes())) << ")";
      if (store.size() != passages)
        std::cout << ": the index has " << passages << " (cepe index encode rewrites it)";
      std::cout << "\n";
    } else if (const auto build = index::read_store_checkpoint(f)) {
      std::cout << "encoder    " << build->store.filename().string()
                << ": a build in progress or interrupted, " << build->rows
                << " passages committed (cepe index encode resumes it)\n";
    }
  }
}

int run_info(const std::vector<std::string>& argv) {
  Args a;
  a.flag("verify", "check every file's checksum, walk the passage store, load every component")
      .flag("json", "print the manifest as JSON")
      .positional("DIR  the index directory");
  const std::string line = "cepe index info DIR [--verify] [--json]";
  a.parse(argv);
  if (a.help_requested()) {
    std::cout << a.usage(line);
    return 0;
  }
  if (a.positionals().size() != 1)
    return usage_error(a, line, "expected exactly one index directory");
  const fs::path dir = a.positionals()[0];
  index::IndexManifest m = index::read_manifest(dir);
  if (a.is_set("verify")) {
    index::OpenOptions ro;
    ro.verify = true;
    auto r = index::open_index(dir, ro);
    m = r->manifest();
  }
  if (a.is_set("json")) {
    std::cout << index::manifest_to_json(m);
  } else {
    std::cout << "index      " << dir.string() << "\n"
              << "passages   " << m.passages << "\n"
              << "retriever  " << m.retriever << "\n";
    if (index::has_bm25(m))
      std::cout << "bm25       " << index::kBm25File << " (k1 " << m.bm25.k1 << ", b " << m.bm25.b
                << ", stemmer " << m.bm25.stemmer << ", stop words " << m.bm25.stopwords << ")\n";
    if (index::has_dense(m)) {
      std::cout << "embedder   " << m.embedder_spec << " (dim " << m.dim << ", fingerprint "
                << m.embedder_fingerprint << ")\n";
      for (const auto& [k, v] : m.embedder_config)
        std::cout << "           " << k << ": " << v << "\n";
      std::cout << "faiss      " << m.faiss_factory << " [" << m.faiss_description << "]";
      if (m.trained_on) std::cout << ", trained on " << m.trained_on << " vectors";
      std::cout << "\n";
    }
    if (m.default_nprobe) std::cout << "nprobe     " << m.default_nprobe << " (default)\n";
    if (m.default_ef_search) std::cout << "ef_search  " << m.default_ef_search << " (default)\n";
    std::cout << "size       " << human_bytes(static_cast<double>(index::directory_bytes(dir)))
              << " on disk\n"
              << "built      " << m.created << " in " << clock_time(m.build_seconds) << " by cepe "
              << m.cepe_version << "\n";
    for (const auto& in : m.inputs) std::cout << "input      " << in << "\n";
    if (m.skipped) std::cout << "skipped    " << m.skipped << " invalid records\n";
    if (m.removed) std::cout << "removed    " << m.removed << " passages since the build\n";
    print_encoder_stores(dir, m.passages, a.is_set("verify"));
  }
  if (a.is_set("verify")) std::cout << "verify     ok\n";
  return 0;
}

int run_shard(const std::vector<std::string>& argv) {
  Args a;
  a.option("index", "index directory (bm25 or hybrid)")
      .option("shards", "number of shards", "2")
      .option("out", "directory for shard-0.xapian, shard-1.xapian, ...");
  const std::string line = "cepe index shard --index DIR --shards N --out DIR";
  a.parse(argv);
  if (a.help_requested()) {
    std::cout << a.usage(line);
    return 0;
  }
  if (!a.has("index") || !a.has("out"))
    return usage_error(a, line, "--index and --out are required");
  const fs::path dir = a.get("index");
  auto r = index::open_index(dir);  // verifies the files first
  CEPE_CHECK(r->bm25(), "index " << dir.string() << " has no BM25 database (retriever "
                                 << r->manifest().retriever << ")");
  const auto shards = retriever::split_bm25(
      dir / index::kBm25File, static_cast<int>(a.get_int("shards", 1, 1024)), a.get("out"));
  for (const auto& s : shards) std::cout << s.string() << "\n";
  return 0;
}

// A finished encoder-state store whose rows `cepe index encode` takes instead of encoding, with
// each passage's row in it.
struct StoredRows {
  static constexpr uint64_t kNotStored = ~uint64_t{0};
  /// How a stored row becomes a row of the store being written.
  enum class Use {
    Copy,     ///< the same fingerprint: its bytes
    Convert,  ///< the f32 store of the same layout: decoded, encoded in the narrower dtype
    Project,  ///< the f32 states store, for a kv store: each cross layer's keys and values of E
  };
  std::shared_ptr<const index::EncoderStore> store;  ///< null: none
  Use use = Use::Copy;                               ///< what is done with its rows
  bool verified = false;      ///< its data checksum was recomputed (before its first row is taken)
  std::vector<uint64_t> row;  ///< per passage of the index: its row in `store`, or kNotStored
  uint64_t found = 0;         ///< passages of the index the store holds

  /// Finds passage `r` (`id`, its chunk `info`) in the store.
  void look_up(uint64_t r, const std::string& id, const index::StoredPassageInfo& info) {
    if (!store) return;
    row[r] = store->find(id, info.tokens, info.token_hash).value_or(kNotStored);
    found += row[r] != kNotStored;
  }
  /// True when the store holds every passage of rows [begin, end). A store is checksummed the
  /// first time it would be used (its rows must be the rows it was written with); a damaged one
  /// is reported and dropped.
  bool supplies(uint64_t begin, uint64_t end) {
    if (!store) return false;
    for (uint64_t r = begin; r < end; ++r)
      if (row[r] == kNotStored) return false;
    if (!verified) {
      try {
        store->verify();
        verified = true;
      } catch (const Error& e) {
        std::cerr << "index encode: not using it: " << e.what() << "\n";
        store.reset();
        return false;
      }
    }
    return true;
  }
};

// `cepe index encode`: every passage's encoder states, written resumably beside the index.
int run_encode(const std::vector<std::string>& argv) {
  Args a;
  add_model_flags(a);
  a.option("index", "index directory (from cepe index build)")
      .option("dtype", "stored element type: f32 (exact), bf16, f16 or q8_0", "f32")
      .option("layout",
              "states: the encoder states (what absorbed cross-attention reads); kv: every "
              "cross layer's projected keys and values (no projection per request, 2 x layers x "
              "kv width values per token; read on the CPU)",
              "states")
      .option("chunk-tokens", "tokens per passage chunk (as cepe qa --chunk-tokens)", "256")
      .option("batch-tokens", "encoder tokens per packed encoder pass (and per commit)", "8192")
      .flag("overwrite", "rebuild a store that is already complete");
  const std::string line =
      "cepe index encode --index DIR --model DIR [--dtype f32|bf16|f16|q8_0] "
      "[--layout states|kv] [--threads N] [--chunk-tokens 256]";
  a.parse(argv);
  if (a.help_requested()) {
    std::cout << a.usage(line);
    return 0;
  }
  if (!a.positionals().empty())
    return usage_error(a, line, "unexpected argument '" + a.positionals()[0] + "'");
  if (!a.has("index")) return usage_error(a, line, "missing required flag --index");
  if (!a.has("model")) return usage_error(a, line, "missing required flag --model");
  const fs::path dir = a.get("index");
  const index::StateDType dtype = index::parse_state_dtype(a.get("dtype"), "--dtype");
  const index::StoreLayout layout = index::parse_store_layout(a.get("layout"), "--layout");
  const int chunk_tokens = static_cast<int>(a.get_int("chunk-tokens", 1, 1 << 16));
  const int64_t batch_tokens = a.get_int("batch-tokens", 1, 1LL << 30);
  index::read_manifest(dir);              // refuses a directory that is not a finished index
  const index::IndexWriteLock lock(dir);  // no add or rebuild while the states are written
  const index::PassageStore passages(dir / index::kPassagesFile);
  LoadedModel lm = load_model(a, /*need_tokenizer=*/true);
  CEPE_CHECK(lm.model->config().is_cepe(),
             "--model " << a.get("model") << ": the model has no CEPE encoder");
  const auto t0 = Clock::now();
  const index::EncoderFingerprint fp =
      layout == index::StoreLayout::CrossKV
          ? index::cross_kv_fingerprint(a.get("model"), lm.model->config(), chunk_tokens, dtype)
          : index::encoder_fingerprint(a.get("model"), lm.model->config(), chunk_tokens, dtype);
  const fs::path path = index::encoder_store_path(dir, fp);
  // Finished stores whose rows stand in for encoding: the previous store of this fingerprint
  // (an earlier encode, before `cepe index add` grew the index or a rebuild changed it), its rows
  // copied byte for byte; for a narrower dtype, the f32 store of the same model and layout, its
  // rows converted as encoding converts the same f32 values; for a kv store, the f32 states
  // store, its E projected as set_context projects it. Preferred in that order. The previous
  // store stays in place (and keeps serving) until the new one is renamed over it.
  StoredRows previous, widest, states;
  // The store of fingerprint `want` beside the index, if there is one and it opens.
  const auto open_source = [&](StoredRows& into, const index::EncoderFingerprint& want,
                               StoredRows::Use use) {
    const fs::path file = index::encoder_store_path(dir, want);
    std::error_code ec;
    if (!fs::exists(file, ec)) return;
    try {
      into.store = std::make_shared<index::EncoderStore>(file);
      CEPE_CHECK(into.store->fingerprint().digest() == want.digest(),
                 file.string() << " was made with another fingerprint than its name says");
      into.use = use;
    } catch (const Error& e) {
      std::cerr << "index encode: not using " << file.string() << ": " << e.what() << "\n";
      into.store.reset();
    }
  };
  if (!a.is_set("overwrite")) open_source(previous, fp, StoredRows::Use::Copy);
  if (dtype != index::StateDType::F32) {
    index::EncoderFingerprint f32 = fp;
    f32.dtype = index::StateDType::F32;
    open_source(widest, f32, StoredRows::Use::Convert);
  }
  if (layout == index::StoreLayout::CrossKV) {
    open_source(states,
                index::encoder_fingerprint(a.get("model"), lm.model->config(), chunk_tokens,
                                           index::StateDType::F32),
                StoredRows::Use::Project);
  }
  // Chunk lengths and hashes first (the table is laid out before any state is written).
  auto chunk_of = [&](uint64_t row) {
    const index::PassageView v = passages.get(row);
    qa::Passage p{std::string(v.id), std::string(v.title), std::string(v.text), std::nullopt};
    return std::make_pair(p.id, qa::encoder_chunk_ids(*lm.tokenizer, p, chunk_tokens));
  };
  std::vector<index::StoredPassageInfo> infos(passages.size());
  uint64_t total_tokens = 0;
  for (StoredRows* s : {&previous, &widest, &states})
    if (s->store) s->row.assign(passages.size(), StoredRows::kNotStored);
  // The previous store's passages are the index's first rows, in order (the index grew).
  bool prefix_kept = previous.store && previous.store->size() <= passages.size();
  for (uint64_t r = 0; r < passages.size(); ++r) {
    const auto [id, ids] = chunk_of(r);
    CEPE_CHECK(!ids.empty(),
               dir.string() << ": passage row " << r << " ('" << id << "') tokenises to nothing");
    infos[r] = {index::passage_id_hash(id), static_cast<uint32_t>(ids.size()),
                index::chunk_token_hash(ids)};
    total_tokens += ids.size();
    for (StoredRows* s : {&previous, &widest, &states}) s->look_up(r, id, infos[r]);
    if (previous.store && r < previous.store->size())
      prefix_kept = prefix_kept && previous.row[r] == r;
  }
  if (previous.store) {
    if (prefix_kept && previous.store->size() == passages.size()) {
      std::cout << "encoder store " << path.string() << " is complete (" << previous.store->size()
                << " passages, " << human_bytes(static_cast<double>(previous.store->file_bytes()))
                << "); --overwrite rebuilds it\n";
      return 0;
    }
    // A store is laid out for one passage list, so it is written again for the whole of it.
    std::cerr << "index encode: " << path.string() << " holds " << previous.store->size();
    if (prefix_kept)
      std::cerr << " of the index's " << passages.size() << " passages (the index grew)";
    else
      std::cerr << " passages, " << previous.found << " of them still in the index (the index "
                << "changed)";
    std::cerr << ": writing it again for all " << passages.size() << ", copying the states of "
              << previous.found << "\n";
  }
  index::EncoderStoreWriter writer(path, fp, infos);
  if (writer.resumed_rows() > 0)
    std::cerr << "index encode: resuming at passage " << writer.resumed_rows() << " of "
              << passages.size() << "\n";
  const int64_t width = lm.model->config().encoder_hidden_size;
  ProgressBar bar("encode", "passages",
                  static_cast<int64_t>(passages.size() - writer.resumed_rows()));
  // Batches are cut at fixed rows (from row 0, by token budget), so a resumed build encodes the
  // same batches as an uninterrupted one.
  // The keys and values set_context would project for passage row r's states e, layer-major.
  const auto append_kv = [&](const Tensor& e, uint64_t r, int64_t n) {
    const std::vector<float> kv = qa::stored_kv_values(*lm.backend, lm.model->project_chunk(e));
    CEPE_CHECK(kv.size() == static_cast<size_t>(n * fp.token_values()),
               "index encode: projected " << kv.size() << " values of passage row " << r
                                          << ", the layout holds " << n * fp.token_values());
    writer.append(kv.data(), n);
  };
  uint64_t row = 0, encoded_tokens = 0, copied = 0, converted = 0, projected = 0,
           taken_since_commit = 0;
  std::vector<float> values;
  while (row < passages.size()) {
    uint64_t end = row;
    int64_t tokens = 0;
    while (end < passages.size() && (end == row || tokens + infos[end].tokens <= batch_tokens))
      tokens += infos[end++].tokens;
    if (end <= writer.resumed_rows()) {
      row = end;
      continue;
    }
    CEPE_CHECK(row >= writer.resumed_rows(),
               "index encode: the checkpoint is not at a batch boundary (was --batch-tokens "
               "changed?); delete "
                   << path.string() << ".partial.ckpt to restart");
    // A batch whose passages a stored source holds, each, is taken from it; so after an add every
    // batch before the first new passage is copied, and (with the same --batch-tokens) the store
    // is byte-equal to one encoded from scratch: the stored rows came from these very batches.
    const StoredRows* from = nullptr;
    for (StoredRows* s : {&previous, &widest, &states})
      if (!from && s->supplies(row, end)) from = s;
    if (from) {
      for (uint64_t r = row; r < end; ++r) {
        const int64_t n = infos[r].tokens;
        if (from->use == StoredRows::Use::Copy) {
          writer.append_stored(*from->store, from->row[r]);
          continue;
        }
        values.resize(static_cast<size_t>(n * from->store->fingerprint().token_values()));
        from->store->read(from->row[r], values.data());
        if (from->use == StoredRows::Use::Convert) {
          writer.append(values.data(), n);
        } else {
          // The passage's stored E, as the live path's view of its encoder pass.
          Tensor e = Tensor::wrap(values.data(), {n, width}, DType::F32, Device::CPU, nullptr);
          if (lm.backend->device() != Device::CPU) e = lm.backend->to_device(e);
          append_kv(e, r, n);
        }
      }
      (from->use == StoredRows::Use::Copy      ? copied
       : from->use == StoredRows::Use::Convert ? converted
                                               : projected) += end - row;
      // Stored rows are cheap to take again: committed (an fsync) every 64 batches, not each.
      if (++taken_since_commit == 64) {
        writer.commit();
        taken_since_commit = 0;
      }
      row = end;
      bar.update(static_cast<int64_t>(row - writer.resumed_rows()));
      continue;
    }
    std::vector<std::vector<int32_t>> chunks;
    for (uint64_t r = row; r < end; ++r) chunks.push_back(chunk_of(r).second);
    const EncodedContext ctx = lm.model->encode(chunks);
    const Tensor host = lm.backend->to_host_f32(ctx.states);
    int64_t at = 0;
    for (uint64_t r = row; r < end; ++r) {
      const int64_t n = infos[r].tokens;
      if (layout == index::StoreLayout::States) {
        writer.append(host.data<float>() + at * width, n);
      } else {
        append_kv(ctx.states.rows(at, n), r, n);
      }
      at += n;
    }
    writer.commit();
    taken_since_commit = 0;
    encoded_tokens += static_cast<uint64_t>(tokens);
    row = end;
    bar.update(static_cast<int64_t>(row - writer.resumed_rows()));
  }
  bar.finish();
  writer.finish();
  const double s = std::chrono::duration<double>(Clock::now() - t0).count();
  char buf[256];
  std::snprintf(buf, sizeof buf, "%.1f s, %.0f tokens/s", s, s > 0 ? encoded_tokens / s : 0.0);
  std::cout << "encoded " << passages.size() << " passages ("
            << (copied > 0 ? std::to_string(copied) + " copied from the previous store; " : "")
            << (converted > 0 ? std::to_string(converted) + " converted from the f32 store; " : "")
            << (projected > 0 ? std::to_string(projected) + " projected from the states store; "
                              : "")
            << total_tokens << " tokens, " << index::state_dtype_name(dtype) << ", "
            << index::store_layout_name(layout) << ") into " << path.string() << ": "
            << human_bytes(static_cast<double>(writer.file_bytes())) << ", " << buf << "\n";
  return 0;
}

int run_index(const std::vector<std::string>& argv) {
  const std::string help =
      "usage: cepe index <build|add|remove|search|info|shard|encode> [flags]   "
      "(cepe index <sub> --help for its flags)\n"
      "  build   build an index over a corpus\n"
      "  add     add passages to an index (only the new ones are embedded)\n"
      "  remove  remove passages by id (nothing is embedded)\n"
      "  search  retrieve the top-k passages for questions\n"
      "  info    describe an index\n"
      "  shard   split an index's BM25 database into shards (for xapian-tcpsrv)\n"
      "  encode  store every passage's encoder states for a model (cepe qa/serve read them)\n";
  if (argv.empty() || argv[0] == "--help" || argv[0] == "-h" || argv[0] == "help") {
    (argv.empty() ? std::cerr : std::cout) << help;
    return argv.empty() ? 2 : 0;
  }
  const std::vector<std::string> rest(argv.begin() + 1, argv.end());
  if (argv[0] == "build") return run_build(rest);
  if (argv[0] == "add") return run_add(rest);
  if (argv[0] == "search") return run_search(rest);
  if (argv[0] == "info") return run_info(rest);
  if (argv[0] == "shard") return run_shard(rest);
  if (argv[0] == "encode") return run_encode(rest);
  if (argv[0] == "remove") return run_remove(rest);
  std::cerr << "cepe index: error: unknown subcommand '" << argv[0] << "'\n" << help;
  return 2;
}

}  // namespace

CEPE_REGISTER_COMMAND("index", "build, query and describe passage indexes (BM25, FAISS, hybrid)",
                      run_index);

}  // namespace cepe::cli
