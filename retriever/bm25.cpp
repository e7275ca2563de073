#include "retriever/bm25.h"

#include <xapian.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <fstream>
#include <system_error>

#include "common/error.h"

namespace cepe::retriever {

namespace fs = std::filesystem;

namespace {

// A common English stop list (the words Lucene's and Anserini's analyzers drop, plus frequent
// question words, which carry no evidence about which passage answers).
const char* const kEnglishStopwords[] = {
    "a",    "an",    "and",  "are",   "as",    "at",    "be",   "but", "by",    "for",   "if",
    "in",   "into",  "is",   "it",    "no",    "not",   "of",   "on",  "or",    "such",  "that",
    "the",  "their", "then", "there", "these", "they",  "this", "to",  "was",   "will",  "with",
    "what", "which", "who",  "whom",  "when",  "where", "why",  "how", "did",   "does",  "do",
    "were", "been",  "has",  "have",  "had",   "its",   "from", "he",  "she",   "his",   "her",
    "him",  "i",     "you",  "we",    "our",   "so",    "than", "can", "would", "could", "should"};

// The parts of text analysis that are immutable and shared by every thread.
struct AnalyzerParts {
  Xapian::Stem stem;
  Xapian::SimpleStopper stopper;
  bool has_stopper = false;
};

void load_analyzer(const Bm25Config& c, AnalyzerParts* out) {
  try {
    out->stem = Xapian::Stem(c.stemmer);
  } catch (const Xapian::Error& e) {
    CEPE_THROW("bm25 stemmer '" << c.stemmer << "': " << e.get_msg()
                                << " (expected none or a Xapian language such as english)");
  }
  if (c.stopwords == "none") return;
  out->has_stopper = true;
  if (c.stopwords == "english") {
    for (const char* w : kEnglishStopwords) out->stopper.add(w);
    return;
  }
  std::ifstream in(c.stopwords);
  CEPE_CHECK(in, "bm25 stop words '" << c.stopwords
                                     << "': not english, none, or a readable file of words");
  std::string word;
  while (in >> word) out->stopper.add(word);
}

// Stemmed, stop-worded terms of a text, the same for passages and queries.
void configure(Xapian::TermGenerator& tg, const AnalyzerParts& a) {
  tg.set_stemmer(a.stem);
  // STEM_ALL indexes nothing at all without a stemmer.
  tg.set_stemming_strategy(a.stem.is_none() ? Xapian::TermGenerator::STEM_NONE
                                            : Xapian::TermGenerator::STEM_ALL);
  if (a.has_stopper) {
    tg.set_stopper(&a.stopper);
    tg.set_stopper_strategy(Xapian::TermGenerator::STOP_ALL);
  }
}

Xapian::BM25Weight weight(const Bm25Config& c) {
  // k2 = 0 and k3 = 1 make this the classic Okapi BM25 (no query-length term, query term counts
  // taken as they are); min_normlen 0.5 is Xapian's default.
  return Xapian::BM25Weight(c.k1, 0, 1, c.b, 0.5);
}

}  // namespace

struct Bm25Searcher::Analyzer : AnalyzerParts {};

void check_bm25_config(const Bm25Config& c) {
  CEPE_CHECK(std::isfinite(c.k1) && c.k1 >= 0 && c.k1 <= 100,
             "bm25 k1 must be in [0, 100] (got " << c.k1 << ")");
  CEPE_CHECK(std::isfinite(c.b) && c.b >= 0 && c.b <= 1,
             "bm25 b must be in [0, 1] (got " << c.b << ")");
  AnalyzerParts a;
  load_analyzer(c, &a);
}

struct Bm25Writer::State {
  fs::path file;
  fs::path scratch;
  Bm25Config config;
  AnalyzerParts analyzer;
  Xapian::TermGenerator tg;
  std::unique_ptr<Xapian::WritableDatabase> db;
  uint64_t next_row = 0;
};

Bm25Writer::Bm25Writer(const fs::path& file, const Bm25Config& config)
    : state_(std::make_unique<State>()) {
  check_bm25_config(config);
  State& s = *state_;
  s.file = file;
  s.scratch = file;
  s.scratch += ".build";
  s.config = config;
  load_analyzer(config, &s.analyzer);
  configure(s.tg, s.analyzer);
  std::error_code ec;
  fs::remove_all(s.scratch, ec);
  try {
    s.db = std::make_unique<Xapian::WritableDatabase>(
        s.scratch.string(), Xapian::DB_CREATE_OR_OVERWRITE | Xapian::DB_BACKEND_GLASS);
  } catch (const Xapian::Error& e) {
    CEPE_THROW(s.scratch.string() << ": cannot create the BM25 database: " << e.get_description());
  }
}

Bm25Writer::~Bm25Writer() {
  if (!state_) return;
  state_->db.reset();
  std::error_code ec;
  fs::remove_all(state_->scratch, ec);
}

void Bm25Writer::add(uint64_t row, std::string_view title, std::string_view text) {
  State& s = *state_;
  CEPE_CHECK(row == s.next_row, "internal: BM25 rows must be added in order (got "
                                    << row << ", expected " << s.next_row << ")");
  try {
    Xapian::Document doc;
    s.tg.set_document(doc);
    // Without positions: BM25 weights only term and document frequencies and lengths, and no
    // query here is a phrase, so positional data would be two thirds of the database for nothing.
    if (!title.empty())
      s.tg.index_text_without_positions(Xapian::Utf8Iterator(title.data(), title.size()));
    s.tg.index_text_without_positions(Xapian::Utf8Iterator(text.data(), text.size()));
    // The row is kept in the document data too: a sharded search renumbers documents.
    doc.set_data(std::string(reinterpret_cast<const char*>(&row), sizeof row));
    s.db->replace_document(static_cast<Xapian::docid>(row + 1), doc);
  } catch (const Xapian::Error& e) {
    CEPE_THROW(s.scratch.string() << ": indexing passage row " << row << ": "
                                  << e.get_description());
  }
  ++s.next_row;
}

void Bm25Writer::finish() {
  State& s = *state_;
  try {
    s.db->commit();
    // Compaction writes a new database (smaller, one file); readers never see a partial one
    // because it is written under a temporary name and renamed.
    fs::path tmp = s.file;
    tmp += ".tmp";
    s.db->compact(tmp.string(), Xapian::DBCOMPACT_SINGLE_FILE);
    s.db->close();
    s.db.reset();
    fs::rename(tmp, s.file);
  } catch (const Xapian::Error& e) {
    CEPE_THROW(s.file.string() << ": writing the BM25 database: " << e.get_description());
  }
  std::error_code ec;
  fs::remove_all(s.scratch, ec);
}

std::vector<fs::path> split_bm25(const fs::path& file, int shards, const fs::path& out_dir) {
  CEPE_CHECK(shards >= 1 && shards <= 1024, "shards must be in [1, 1024] (got " << shards << ")");
  std::vector<fs::path> out;
  try {
    Xapian::Database db(file.string());
    fs::create_directories(out_dir);
    std::vector<std::unique_ptr<Xapian::WritableDatabase>> parts;
    std::vector<fs::path> scratch;
    for (int s = 0; s < shards; ++s) {
      scratch.push_back(out_dir / (".shard-" + std::to_string(s) + ".build"));
      std::error_code ec;
      fs::remove_all(scratch.back(), ec);
      parts.push_back(std::make_unique<Xapian::WritableDatabase>(
          scratch.back().string(), Xapian::DB_CREATE_OR_OVERWRITE | Xapian::DB_BACKEND_GLASS));
    }
    const Xapian::docid last = db.get_lastdocid();
    for (Xapian::docid id = 1; id <= last; ++id) {
      const uint64_t row = id - 1;
      const int s = static_cast<int>(row % static_cast<uint64_t>(shards));
      parts[s]->replace_document(static_cast<Xapian::docid>(row / shards + 1), db.get_document(id));
    }
    for (int s = 0; s < shards; ++s) {
      parts[s]->commit();
      const fs::path final_path = out_dir / ("shard-" + std::to_string(s) + ".xapian");
      fs::path tmp = final_path;
      tmp += ".tmp";
      parts[s]->compact(tmp.string(), Xapian::DBCOMPACT_SINGLE_FILE);
      parts[s]->close();
      fs::rename(tmp, final_path);
      std::error_code ec;
      fs::remove_all(scratch[s], ec);
      out.push_back(final_path);
    }
  } catch (const Xapian::Error& e) {
    CEPE_THROW(file.string() << ": splitting the BM25 database: " << e.get_description());
  }
  return out;
}

Bm25Searcher::Bm25Searcher(const std::vector<std::string>& shards, const Bm25Config& config)
    : shards_(shards), config_(config) {
  CEPE_CHECK(!shards_.empty(), "bm25: no database given");
  check_bm25_config(config);
  auto a = std::make_shared<Analyzer>();
  load_analyzer(config, a.get());
  analyzer_ = a;
  auto db = open_all();
  size_ = db->get_doccount();
  release(std::move(db));
}

Bm25Searcher::~Bm25Searcher() = default;

std::unique_ptr<Xapian::Database> Bm25Searcher::open_all() const {
  auto all = std::make_unique<Xapian::Database>();
  for (const auto& shard : shards_) {
    try {
      if (shard.rfind("tcp:", 0) == 0) {
        const std::string rest = shard.substr(4);
        const size_t colon = rest.rfind(':');
        CEPE_CHECK(colon != std::string::npos && colon > 0,
                   "bm25 shard '" << shard << "': expected tcp:HOST:PORT");
        const std::string port_text = rest.substr(colon + 1);
        char* end = nullptr;
        const long port = std::strtol(port_text.c_str(), &end, 10);
        CEPE_CHECK(!port_text.empty() && *end == '\0' && port > 0 && port < 65536,
                   "bm25 shard '" << shard << "': bad port '" << port_text << "'");
        all->add_database(
            Xapian::Remote::open(rest.substr(0, colon), static_cast<unsigned>(port), 10000));
      } else {
        all->add_database(Xapian::Database(shard));
      }
    } catch (const Xapian::Error& e) {
      CEPE_THROW("bm25 database " << shard << ": " << e.get_description());
    }
  }
  return all;
}

std::unique_ptr<Xapian::Database> Bm25Searcher::acquire() const {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (!pool_.empty()) {
      auto db = std::move(pool_.back());
      pool_.pop_back();
      return db;
    }
  }
  return open_all();
}

void Bm25Searcher::release(std::unique_ptr<Xapian::Database> db) const {
  std::lock_guard<std::mutex> lock(mu_);
  pool_.push_back(std::move(db));
}

std::map<std::string, int> Bm25Searcher::query_terms(const std::string& query) const {
  // A stemmer of this query's own: Xapian's stemmers keep working state and non-atomic reference
  // counts, so one shared by concurrent searches mis-stems now and then. Opening one is cheap;
  // the stop word list is only read and stays shared.
  AnalyzerParts own;
  own.stem = Xapian::Stem(config_.stemmer);
  own.has_stopper = analyzer_->has_stopper;
  Xapian::TermGenerator tg;
  tg.set_stemmer(own.stem);
  tg.set_stemming_strategy(own.stem.is_none() ? Xapian::TermGenerator::STEM_NONE
                                              : Xapian::TermGenerator::STEM_ALL);
  if (own.has_stopper) {
    tg.set_stopper(&analyzer_->stopper);
    tg.set_stopper_strategy(Xapian::TermGenerator::STOP_ALL);
  }
  Xapian::Document doc;
  tg.set_document(doc);
  tg.index_text(query);
  std::map<std::string, int> terms;
  for (auto it = doc.termlist_begin(); it != doc.termlist_end(); ++it)
    terms[*it] = static_cast<int>(it.get_wdf());
  return terms;
}

void Bm25Searcher::search(const std::string& query, int k, std::vector<int64_t>* rows,
                          std::vector<float>* scores) const {
  CEPE_CHECK(k > 0, "k must be positive (got " << k << ")");
  rows->clear();
  scores->clear();
  // Terms come from the same analyzer as the passages, never from Xapian's query parser: a
  // question is text, not query syntax, and cannot make the parser throw.
  const std::map<std::string, int> terms = query_terms(query);
  if (terms.empty()) return;
  std::vector<Xapian::Query> parts;
  parts.reserve(terms.size());
  for (const auto& [term, count] : terms)
    parts.emplace_back(term, static_cast<Xapian::termcount>(count));
  const Xapian::Query q(Xapian::Query::OP_OR, parts.begin(), parts.end());
  auto db = acquire();
  try {
    Xapian::Enquire enquire(*db);
    enquire.set_weighting_scheme(weight(config_));
    enquire.set_query(q);
    // Equal scores rank by row, so results do not depend on how documents are sharded.
    enquire.set_docid_order(Xapian::Enquire::ASCENDING);
    const Xapian::MSet mset = enquire.get_mset(0, static_cast<Xapian::doccount>(k));
    const bool sharded = shards_.size() > 1;
    for (auto it = mset.begin(); it != mset.end(); ++it) {
      int64_t row;
      if (sharded) {
        const std::string data = it.get_document().get_data();
        CEPE_CHECK(data.size() == sizeof(uint64_t),
                   "bm25 document " << *it << " has no passage row (not a CEPE BM25 database)");
        uint64_t r;
        std::memcpy(&r, data.data(), sizeof r);
        row = static_cast<int64_t>(r);
      } else {
        row = static_cast<int64_t>(*it) - 1;
      }
      rows->push_back(row);
      scores->push_back(static_cast<float>(it.get_weight()));
    }
  } catch (const Xapian::Error& e) {
    release(std::move(db));
    CEPE_THROW("bm25 search failed: " << e.get_description());
  }
  release(std::move(db));
}

}  // namespace cepe::retriever
