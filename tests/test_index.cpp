// Corpus ingestion (every bad-input case names file and line), passage splitting, the passage
// store and manifest (round trips, truncation and corruption), FAISS wrapping, and crash safety of
// `cepe index build`.
#include <gtest/gtest.h>

#include <faiss/IndexFlat.h>
#include <faiss/IndexHNSW.h>
#include <faiss/IndexIVF.h>
#include <faiss/IndexIVFPQ.h>
#include <faiss/index_io.h>
#include <faiss/invlists/InvertedLists.h>

#include <algorithm>
#include <fstream>
#include <functional>
#include <iterator>
#include <map>
#include <random>
#include <set>
#include <sstream>

#include "common/error.h"
#include "index/builder.h"
#include "index/corpus.h"
#include "index/manifest.h"
#include "index/open_index.h"
#include "index/passage_store.h"
#include "retriever/vector_index.h"
#include "tests/test_util.h"

namespace fs = std::filesystem;
using namespace cepe::index;
using cepe::retriever::SearchParams;
using cepe::retriever::VectorIndex;

namespace {

void write(const fs::path& p, const std::string& s) {
  fs::create_directories(p.parent_path());
  std::ofstream(p, std::ios::binary) << s;
}

std::vector<Passage> read_all(const std::vector<fs::path>& inputs, CorpusOptions o = {},
                              CorpusStats* stats = nullptr) {
  CorpusReader r(inputs, o);
  std::vector<Passage> out;
  r.read([&](const Passage& p) { out.push_back(p); });
  if (stats) *stats = r.stats();
  return out;
}

// The message of the error reading `inputs` in strict mode.
std::string strict_error(const std::vector<fs::path>& inputs) {
  try {
    read_all(inputs);
  } catch (const cepe::Error& e) {
    return e.message();
  }
  return "(no error)";
}

std::string where(const fs::path& p, int line) {
  return p.string() + ":" + std::to_string(line) + ": ";
}

std::string json_line(const std::string& id, const std::string& title, const std::string& text) {
  return "{\"id\": \"" + id + "\", \"title\": \"" + title + "\", \"text\": \"" + text + "\"}\n";
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// JSONL

TEST(CorpusJsonl, ReadsRecordsInOrder) {
  const fs::path dir = cepe::test::temp_dir("jsonl");
  write(dir / "c.jsonl", json_line("a", "Alpha", "first text") + "\n" +
                             "{\"id\": 7, \"text\": \"numeric id, no title\"}\n" +
                             json_line("c", "Gamma", "caf\\u00e9"));
  const auto ps = read_all({dir / "c.jsonl"});
  ASSERT_EQ(ps.size(), 3u);
  EXPECT_EQ(ps[0].id, "a");
  EXPECT_EQ(ps[0].title, "Alpha");
  EXPECT_EQ(ps[1].id, "7");
  EXPECT_EQ(ps[1].title, "");
  EXPECT_EQ(ps[2].text, "caf\xC3\xA9");
}

TEST(CorpusJsonl, EveryBadRecordNamesFileAndLine) {
  const fs::path dir = cepe::test::temp_dir("jsonl-bad");
  const std::string good = json_line("a", "A", "text a");
  struct Case {
    std::string name, second_line, fragment;
  };
  const std::vector<Case> cases = {
      {"duplicate", json_line("a", "B", "other"), "duplicate id: 'a' (first seen at "},
      {"empty", json_line("b", "B", "  "), "empty text"},
      {"utf8", "{\"id\": \"b\", \"text\": \"bad \xC3\x28 byte\"}\n", "invalid UTF-8"},
      {"surrogate", "{\"id\": \"b\", \"text\": \"\\ud800\"}\n", "surrogate"},
      {"json", "{\"id\": \"b\", \"text\": \n", "malformed line: invalid JSON"},
      {"not-object", "[1, 2]\n", "malformed line: expected a JSON object"},
      {"no-id", "{\"text\": \"x\"}\n", "missing field \"id\""},
      {"no-text", "{\"id\": \"b\"}\n", "missing field \"text\""},
      {"text-type", "{\"id\": \"b\", \"text\": 3}\n", "field \"text\" must be a string"},
      {"title-type", "{\"id\": \"b\", \"title\": 1, \"text\": \"x\"}\n", "\"title\" must be"},
  };
  for (const auto& c : cases) {
    const fs::path f = dir / (c.name + ".jsonl");
    write(f, good + c.second_line);
    const std::string msg = strict_error({f});
    EXPECT_NE(msg.find(where(f, 2)), std::string::npos) << c.name << ": " << msg;
    EXPECT_NE(msg.find(c.fragment), std::string::npos) << c.name << ": " << msg;
    EXPECT_NE(msg.find("--skip-invalid"), std::string::npos) << c.name << ": " << msg;
  }
  // The duplicate names where the first one was.
  const fs::path f = dir / "duplicate.jsonl";
  EXPECT_NE(strict_error({f}).find("first seen at " + f.string() + ":1"), std::string::npos);
}

TEST(CorpusJsonl, DuplicateAcrossFilesNamesBoth) {
  const fs::path dir = cepe::test::temp_dir("jsonl-dup2");
  write(dir / "one.jsonl", json_line("x", "", "t1") + json_line("y", "", "t2"));
  write(dir / "two.jsonl", "\n" + json_line("z", "", "t3") + json_line("y", "", "t4"));
  const std::string msg = strict_error({dir / "one.jsonl", dir / "two.jsonl"});
  EXPECT_NE(msg.find(where(dir / "two.jsonl", 3) + "duplicate id: 'y' (first seen at " +
                     (dir / "one.jsonl").string() + ":2)"),
            std::string::npos)
      << msg;
}

TEST(CorpusJsonl, SkipInvalidCountsByReason) {
  const fs::path dir = cepe::test::temp_dir("jsonl-skip");
  const fs::path f = dir / "c.jsonl";
  write(f, json_line("a", "A", "ok") + json_line("a", "A", "dup") + json_line("b", "B", "") +
               "{broken\n" + "{\"id\": \"c\", \"text\": \"\xFF\"}\n" + json_line("d", "D", "ok") +
               "{\"id\": \"e\"}\n");
  CorpusOptions o;
  o.skip_invalid = true;
  CorpusStats st;
  const auto ps = read_all({f}, o, &st);
  ASSERT_EQ(ps.size(), 2u);
  EXPECT_EQ(ps[0].id, "a");
  EXPECT_EQ(ps[1].id, "d");
  EXPECT_EQ(st.passages, 2u);
  EXPECT_EQ(st.skipped, 5u);
  EXPECT_EQ(st.skipped_by_reason["duplicate id"], 1u);
  EXPECT_EQ(st.skipped_by_reason["empty text"], 1u);
  EXPECT_EQ(st.skipped_by_reason["malformed line"], 2u);
  EXPECT_EQ(st.skipped_by_reason["invalid UTF-8"], 1u);
  ASSERT_EQ(st.examples.size(), 5u);
  EXPECT_EQ(st.examples[0].rfind(where(f, 2) + "duplicate id", 0), 0u) << st.examples[0];
  EXPECT_EQ(st.examples[1].rfind(where(f, 3) + "empty text", 0), 0u) << st.examples[1];
  EXPECT_EQ(st.examples[2].rfind(where(f, 4) + "malformed line", 0), 0u) << st.examples[2];
  EXPECT_EQ(st.examples[3].rfind(where(f, 5) + "invalid UTF-8", 0), 0u) << st.examples[3];
  EXPECT_EQ(st.examples[4].rfind(where(f, 7) + "malformed line", 0), 0u) << st.examples[4];
  CorpusReader r({f}, o);
  r.read([](const Passage&) {});
  EXPECT_EQ(r.skip_summary(),
            "skipped 5 invalid record(s): 1 duplicate id, 1 empty text, 1 invalid UTF-8, 2 "
            "malformed line");
}

// ---------------------------------------------------------------------------------------------
// TSV

TEST(CorpusTsv, ReadsDprLayout) {
  const fs::path dir = cepe::test::temp_dir("tsv");
  write(dir / "psgs.tsv",
        "id\ttext\ttitle\n1\t\"He said \"\"hi\"\"\"\tAaron\n2\tplain text\tBee\r\n\n3\tthird\t\n");
  const auto ps = read_all({dir / "psgs.tsv"});
  ASSERT_EQ(ps.size(), 3u);
  EXPECT_EQ(ps[0].id, "1");
  EXPECT_EQ(ps[0].text, "He said \"hi\"");
  EXPECT_EQ(ps[0].title, "Aaron");
  EXPECT_EQ(ps[1].text, "plain text");
  EXPECT_EQ(ps[1].title, "Bee");
  EXPECT_EQ(ps[2].title, "");
}

TEST(CorpusTsv, EveryBadRecordNamesFileAndLine) {
  const fs::path dir = cepe::test::temp_dir("tsv-bad");
  const std::string head = "id\ttext\ttitle\n1\tgood\tT\n";
  struct Case {
    std::string name, row, fragment;
  };
  const std::vector<Case> cases = {
      {"fields", "2\tonly two\n", "malformed line: expected 3 tab-separated fields, got 2"},
      {"extra", "2\ta\tb\tc\n", "malformed line: expected 3 tab-separated fields, got 4"},
      {"dup", "1\tagain\tT\n", "duplicate id: '1'"},
      {"empty", "2\t \tT\n", "empty text"},
      {"noid", "\ttext\tT\n", "malformed line: empty id"},
      {"utf8", "2\tbad \xE2\x82 seq\tT\n", "invalid UTF-8: bad byte sequence at column 7"},
  };
  for (const auto& c : cases) {
    const fs::path f = dir / (c.name + ".tsv");
    write(f, head + c.row);
    const std::string msg = strict_error({f});
    EXPECT_NE(msg.find(where(f, 3) + c.fragment), std::string::npos) << c.name << ": " << msg;
  }
  const fs::path nohead = dir / "nohead.tsv";
  write(nohead, "1\tgood\tT\n");
  EXPECT_NE(strict_error({nohead}).find(where(nohead, 1) + "malformed line: expected a header"),
            std::string::npos)
      << strict_error({nohead});
  const fs::path empty = dir / "empty.tsv";
  write(empty, "");
  EXPECT_NE(strict_error({empty}).find(where(empty, 1) + "empty TSV file"), std::string::npos);
}

TEST(CorpusTsv, SkipInvalidCounts) {
  const fs::path dir = cepe::test::temp_dir("tsv-skip");
  const fs::path f = dir / "p.tsv";
  write(f, "id\ttext\ttitle\n1\tone\tA\n1\tdup\tA\n2\t\tB\n3\tshort\n4\tfour\tD\n");
  CorpusOptions o;
  o.skip_invalid = true;
  CorpusStats st;
  const auto ps = read_all({f}, o, &st);
  ASSERT_EQ(ps.size(), 2u);
  EXPECT_EQ(st.skipped, 3u);
  EXPECT_EQ(st.skipped_by_reason["duplicate id"], 1u);
  EXPECT_EQ(st.skipped_by_reason["empty text"], 1u);
  EXPECT_EQ(st.skipped_by_reason["malformed line"], 1u);
}

// ---------------------------------------------------------------------------------------------
// .txt / .md directories

TEST(CorpusText, SplitsAtSentenceBoundariesNearTarget) {
  std::string text;
  for (int s = 0; s < 60; ++s)
    text += "Sentence number " + std::to_string(s) + " has seven words here. ";
  const auto ps = split_passages(text, 100, 0);
  ASSERT_GE(ps.size(), 4u);
  size_t total = 0;
  for (size_t i = 0; i < ps.size(); ++i) {
    std::istringstream is(ps[i].first);
    size_t words = 0;
    for (std::string w; is >> w;) ++words;
    total += words;
    if (i + 1 < ps.size()) {
      EXPECT_GE(words, 50u) << i;
      EXPECT_LE(words, 150u) << i;
    }
    EXPECT_EQ(ps[i].first.rfind("Sentence number", 0), 0u)
        << "passage " << i << " starts mid-sentence";
    EXPECT_EQ(ps[i].first.back(), '.') << "passage " << i << " ends mid-sentence";
  }
  EXPECT_EQ(total, 60u * 7);  // no overlap: every word exactly once
}

TEST(CorpusText, OverlapRepeatsWholeTrailingSentences) {
  std::string text;
  for (int s = 0; s < 40; ++s) text += "Alpha beta gamma delta epsilon " + std::to_string(s) + ". ";
  const auto ps = split_passages(text, 30, 12);
  ASSERT_GE(ps.size(), 3u);
  for (size_t i = 0; i + 1 < ps.size(); ++i) {
    // The last two sentences (12 words) of a passage open the next one.
    const std::string& a = ps[i].first;
    const std::string tail = a.substr(a.rfind("Alpha", a.rfind("Alpha") - 1));
    EXPECT_EQ(ps[i + 1].first.rfind(tail, 0), 0u)
        << i << ": '" << tail << "' vs '" << ps[i + 1].first << "'";
  }
}

TEST(CorpusText, LongSentenceIsCutAndLinesAreTracked) {
  std::string text = "Intro line.\n\n";
  for (int w = 0; w < 250; ++w) text += "word" + std::to_string(w) + (w % 10 == 9 ? "\n" : " ");
  const auto ps = split_passages(text, 100, 0);
  // "Intro line." joins the first 100-word piece (a short passage may run over by half).
  ASSERT_EQ(ps.size(), 3u);
  EXPECT_EQ(ps[0].second, 1u);
  EXPECT_EQ(ps[1].second, 13u);  // word100 is on line 3 + 10
  EXPECT_EQ(ps[2].second, 23u);
  EXPECT_EQ(ps[1].first.rfind("word100 ", 0), 0u);
}

TEST(CorpusText, DirectoryTitlesAndIds) {
  const fs::path dir = cepe::test::temp_dir("txtdir");
  write(dir / "b" / "notes.txt", "Plain text file. It has two sentences.");
  write(dir / "a.md",
        "Intro before the heading.\n\n# The Real Title #\n\nBody text here.\n## Sub\nMore.");
  write(dir / "ignored.pdf", "x");
  write(dir / ".hidden" / "x.txt", "hidden");
  CorpusStats st;
  const auto ps = read_all({dir}, {}, &st);
  ASSERT_EQ(ps.size(), 2u);
  EXPECT_EQ(ps[0].id, "a.md#0");
  EXPECT_EQ(ps[0].title, "The Real Title");
  EXPECT_EQ(ps[0].text.find('#'), std::string::npos) << ps[0].text;
  EXPECT_NE(ps[0].text.find("Body text here."), std::string::npos);
  EXPECT_EQ(ps[1].id, "b/notes.txt#0");
  EXPECT_EQ(ps[1].title, "notes");
  EXPECT_EQ(st.ignored_files, 1u);
}

TEST(CorpusText, BadFilesNameFileAndLine) {
  const fs::path dir = cepe::test::temp_dir("txt-bad");
  write(dir / "bad" / "x.txt", "Line one.\nLine two.\nBad \xC0\xAF here.\n");
  const fs::path f = dir / "bad" / "x.txt";
  const std::string msg = strict_error({dir / "bad"});
  EXPECT_NE(msg.find(where(f, 3) + "invalid UTF-8"), std::string::npos) << msg;
  write(dir / "empty" / "e.md", "# Only a heading\n\n   \n");
  const std::string m2 = strict_error({dir / "empty"});
  EXPECT_NE(m2.find(where(dir / "empty" / "e.md", 1) + "empty text"), std::string::npos) << m2;
  write(dir / "mixed" / "good.txt", "Fine text.");
  write(dir / "mixed" / "x.txt", "Bad \xFF.");
  write(dir / "mixed" / "y.md", "");
  CorpusOptions o;
  o.skip_invalid = true;
  CorpusStats st;
  EXPECT_EQ(read_all({dir / "mixed"}, o, &st).size(), 1u);
  EXPECT_EQ(st.skipped, 2u);
  EXPECT_EQ(st.skipped_by_reason["invalid UTF-8"], 1u);
  EXPECT_EQ(st.skipped_by_reason["empty text"], 1u);
}

TEST(CorpusInputs, MissingAndUnsupportedInputs) {
  const fs::path dir = cepe::test::temp_dir("inputs");
  EXPECT_THROW(read_all({dir / "nope.jsonl"}), cepe::Error);
  write(dir / "x.csv", "a,b");
  try {
    read_all({dir / "x.csv"});
    ADD_FAILURE();
  } catch (const cepe::Error& e) {
    EXPECT_NE(e.message().find("unsupported format"), std::string::npos) << e.message();
  }
  fs::create_directories(dir / "emptydir");
  EXPECT_THROW(read_all({dir / "emptydir"}), cepe::Error);
}

// ---------------------------------------------------------------------------------------------
// Passage store

namespace {
fs::path make_store(const fs::path& dir, int n) {
  const fs::path p = dir / "passages.bin";
  PassageStoreWriter w(p);
  for (int i = 0; i < n; ++i)
    w.add("id" + std::to_string(i), i % 3 ? "title " + std::to_string(i) : "",
          std::string(static_cast<size_t>(i % 17), 'x') + " text " + std::to_string(i));
  w.finish();
  return p;
}

std::string store_error(const fs::path& p, bool verify = false) {
  try {
    PassageStore s(p);
    if (verify) s.verify();
  } catch (const cepe::Error& e) {
    return e.message();
  }
  return "(no error)";
}

void patch(const fs::path& p, uint64_t offset, const std::string& bytes) {
  std::fstream f(p, std::ios::in | std::ios::out | std::ios::binary);
  f.seekp(static_cast<std::streamoff>(offset));
  f.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}
}  // namespace

TEST(PassageStore, RoundTripAndLookupByRow) {
  const fs::path dir = cepe::test::temp_dir("store");
  const fs::path p = make_store(dir, 1000);
  // Only the final file exists: the temporary was renamed.
  EXPECT_EQ(std::distance(fs::directory_iterator(dir), fs::directory_iterator()), 1);
  PassageStore s(p);
  ASSERT_EQ(s.size(), 1000u);
  s.verify();
  for (int i : {0, 1, 2, 500, 999}) {
    const PassageView v = s.get(static_cast<uint64_t>(i));
    EXPECT_EQ(v.id, "id" + std::to_string(i));
    EXPECT_EQ(v.title, i % 3 ? "title " + std::to_string(i) : "");
    EXPECT_EQ(v.text, std::string(static_cast<size_t>(i % 17), 'x') + " text " + std::to_string(i));
  }
  EXPECT_THROW(s.get(1000), cepe::Error);
}

TEST(PassageStore, UnfinishedWriterLeavesNothing) {
  const fs::path dir = cepe::test::temp_dir("store-unfinished");
  {
    PassageStoreWriter w(dir / "passages.bin");
    w.add("a", "", "b");
  }
  EXPECT_TRUE(fs::is_empty(dir));
}

TEST(PassageStore, TruncatedOrCorruptFilesGiveClearErrors) {
  const fs::path dir = cepe::test::temp_dir("store-bad");
  const fs::path good = make_store(dir, 50);
  const std::string bytes = cepe::test::read_file(good);
  const fs::path p = dir / "bad.bin";
  auto with = [&](const std::string& content) {
    write(p, content);
    return p;
  };
  EXPECT_NE(store_error(with(bytes.substr(0, 20))).find("truncated passage store (20 bytes"),
            std::string::npos);
  EXPECT_NE(store_error(with(bytes.substr(0, bytes.size() - 9))).find("truncated passage store"),
            std::string::npos);
  EXPECT_NE(store_error(with(bytes + "junk")).find("unexpected trailing bytes"), std::string::npos);
  std::string magic = bytes;
  magic[0] = 'X';
  EXPECT_NE(store_error(with(magic)).find("bad magic"), std::string::npos);
  with(bytes);
  patch(p, 8, std::string("\x02\x00\x00\x00", 4));  // version 2
  EXPECT_NE(store_error(p).find("version 2 is not supported"), std::string::npos) << store_error(p);
  with(bytes);
  patch(p, 16, std::string("\x33", 1));  // count, header checksum no longer matches
  EXPECT_NE(store_error(p).find("corrupt passage store header"), std::string::npos);
  with(bytes);
  patch(p, 64 + 20, "Z");  // a data byte: only the full checksum sees it
  EXPECT_EQ(store_error(p), "(no error)");
  EXPECT_NE(store_error(p, true).find("checksum mismatch"), std::string::npos);
  for (const std::string& msg : {store_error(with(bytes.substr(0, 20)))})
    EXPECT_NE(msg.find(p.string()), std::string::npos) << msg;
  EXPECT_NE(store_error(dir / "missing.bin").find("cannot open"), std::string::npos);
}

// ---------------------------------------------------------------------------------------------
// Manifest

namespace {
IndexManifest sample_manifest() {
  IndexManifest m;
  m.embedder_spec = "bert:/models/e5";
  m.embedder_kind = "bert";
  m.embedder_fingerprint = "0123456789abcdef";
  m.embedder_config = {{"dim", "64"}};
  m.dim = 64;
  m.faiss_factory = "IVF4,Flat";
  m.faiss_description = "IVF nlist=4";
  m.default_nprobe = 2;
  m.passages = 12;
  m.trained_on = 12;
  m.inputs = {"a.jsonl"};
  m.created = "2024-01-01T00:00:00Z";
  m.cepe_version = "0.1.0";
  m.files = {{"passages.bin", {100, 0x1234}}, {"faiss.index", {200, 0xabcdef}}};
  return m;
}
}  // namespace

TEST(Manifest, RoundTrip) {
  const fs::path dir = cepe::test::temp_dir("manifest");
  write_manifest(dir, sample_manifest());
  const IndexManifest m = read_manifest(dir);
  EXPECT_EQ(m.embedder_fingerprint, "0123456789abcdef");
  EXPECT_EQ(m.faiss_factory, "IVF4,Flat");
  EXPECT_EQ(m.default_nprobe, 2);
  EXPECT_EQ(m.passages, 12u);
  EXPECT_EQ(m.embedder_config.at("dim"), "64");
  EXPECT_EQ(m.retriever, "dense");
  EXPECT_EQ(m.files.at("faiss.index").bytes, 200u);
  EXPECT_EQ(m.files.at("faiss.index").hash, 0xabcdefu);
  IndexManifest b = sample_manifest();
  b.retriever = "hybrid";
  b.bm25.k1 = 1.2;
  b.bm25.b = 0.75;
  b.bm25.stemmer = "none";
  b.files["bm25.xapian"] = {300, 7};
  write_manifest(dir, b);
  const IndexManifest rb = read_manifest(dir);
  EXPECT_EQ(rb.retriever, "hybrid");
  EXPECT_DOUBLE_EQ(rb.bm25.k1, 1.2);
  EXPECT_DOUBLE_EQ(rb.bm25.b, 0.75);
  EXPECT_EQ(rb.bm25.stemmer, "none");
  EXPECT_EQ(rb.bm25.stopwords, "english");
}

TEST(Manifest, MissingTruncatedOrCorruptManifestGivesClearErrors) {
  const fs::path dir = cepe::test::temp_dir("manifest-bad");
  auto err = [&]() -> std::string {
    try {
      read_manifest(dir);
    } catch (const cepe::Error& e) {
      return e.message();
    }
    return "(no error)";
  };
  EXPECT_NE(err().find("is not a CEPE index: it has no manifest.json"), std::string::npos) << err();
  const std::string json = manifest_to_json(sample_manifest());
  const fs::path f = dir / kManifestFile;
  write(f, json.substr(0, json.size() / 2));
  EXPECT_NE(err().find(f.string() + ": invalid JSON"), std::string::npos) << err();
  std::string v2 = json;
  v2.replace(v2.find("\"version\": 2"), 12, "\"version\": 9");
  write(f, v2);
  EXPECT_NE(err().find("index format version 9 is not supported"), std::string::npos) << err();
  std::string nofp = json;
  nofp.replace(nofp.find("\"fingerprint\""), 13, "\"fingerprinx\"");
  write(f, nofp);
  EXPECT_NE(err().find(f.string() + ": missing field \"embedder.fingerprint\""), std::string::npos)
      << err();
  write(f, "[]");
  EXPECT_NE(err().find("expected a JSON object"), std::string::npos) << err();
  // A changed value that still parses (one digit of a file size) fails the manifest's checksum.
  std::string edited = json;
  const std::string size200 = "\"bytes\": 200";
  edited.replace(edited.find(size200), size200.size(), "\"bytes\": 201");
  write(f, edited);
  EXPECT_NE(err().find(f.string() + ": checksum mismatch"), std::string::npos) << err();
  // File names must stay inside the index directory.
  std::string escape = json;
  const std::string key = "\"faiss.index\": {";
  escape.replace(escape.find(key), key.size(), "\"../x.index\": {");
  write(f, escape);
  EXPECT_NE(err().find("which is not a file of the index directory"), std::string::npos) << err();
}

// ---------------------------------------------------------------------------------------------
// FAISS wrapper

namespace {
std::vector<float> random_unit_vectors(int n, int d, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> g;
  std::vector<float> v(static_cast<size_t>(n) * d);
  for (int i = 0; i < n; ++i) {
    double norm = 0;
    for (int j = 0; j < d; ++j) norm += std::pow(v[i * d + j] = g(rng), 2);
    for (int j = 0; j < d; ++j) v[i * d + j] /= static_cast<float>(std::sqrt(norm));
  }
  return v;
}

// Top-k rows by inner product, computed by hand.
std::vector<int64_t> brute_force(const std::vector<float>& x, int n, int d, const float* q, int k) {
  std::vector<std::pair<double, int64_t>> s;
  for (int i = 0; i < n; ++i) {
    double dot = 0;
    for (int j = 0; j < d; ++j) dot += static_cast<double>(x[i * d + j]) * q[j];
    s.push_back({-dot, i});
  }
  std::sort(s.begin(), s.end());
  std::vector<int64_t> out;
  for (int i = 0; i < k; ++i) out.push_back(s[i].second);
  return out;
}
}  // namespace

TEST(VectorIndex, FlatEqualsBruteForceAndExhaustiveIvfToo) {
  const int n = 600, d = 32, k = 10, nq = 20;
  const auto x = random_unit_vectors(n, d, 1);
  const auto q = random_unit_vectors(nq, d, 2);
  auto flat = VectorIndex::create("Flat", d);
  EXPECT_FALSE(flat->needs_training());
  flat->add(n, x.data());
  auto ivf = VectorIndex::create("IVF8,Flat", d);
  ASSERT_TRUE(ivf->needs_training());
  EXPECT_TRUE(ivf->has_ivf());
  ivf->train(n, x.data());
  ivf->add(n, x.data());
  std::vector<float> scores(nq * k);
  std::vector<int64_t> rows(nq * k), ivf_rows(nq * k);
  flat->search(nq, q.data(), k, {}, scores.data(), rows.data());
  SearchParams all;
  all.nprobe = 8;  // every list: exact
  ivf->search(nq, q.data(), k, all, scores.data(), ivf_rows.data());
  for (int i = 0; i < nq; ++i) {
    const auto want = brute_force(x, n, d, q.data() + i * d, k);
    EXPECT_EQ(std::vector<int64_t>(rows.begin() + i * k, rows.begin() + (i + 1) * k), want) << i;
    EXPECT_EQ(std::vector<int64_t>(ivf_rows.begin() + i * k, ivf_rows.begin() + (i + 1) * k), want)
        << i;
  }
  // nprobe on a Flat index is a usage error, not silently ignored.
  EXPECT_THROW(flat->search(1, q.data(), k, all, scores.data(), rows.data()), cepe::Error);
}

TEST(VectorIndex, FactoryStringsSaveAndMappedLoad) {
  const int n = 1000, d = 32;
  const auto x = random_unit_vectors(n, d, 3);
  const fs::path dir = cepe::test::temp_dir("faiss");
  // Small PQ codebooks keep training fast on this 2-core machine (OPQ is left out: its rotation
  // training alone takes a minute here).
  for (const std::string f : {"HNSW16", "IVF16,Flat", "IVF16_HNSW8,Flat", "IVF8,PQ8x4"}) {
    auto v = VectorIndex::create(f, d);
    if (v->needs_training()) v->train(n, x.data());
    v->add(n, x.data());
    v->set_defaults({4, 32});
    v->save(dir / "i.index");
    for (bool mmap : {false, true}) {
      auto l = VectorIndex::load(dir / "i.index", mmap);
      EXPECT_EQ(l->size(), n) << f;
      // Only IVF lists map, and only where FAISS's layout leaves their 64-bit ids aligned
      // (misaligned ones are read into memory: every read of them would be undefined).
      EXPECT_TRUE(!l->is_mapped() || (mmap && l->has_ivf())) << f;
      if (l->has_ivf()) {
        EXPECT_EQ(l->defaults().nprobe, 4) << f;
      }
      if (l->has_hnsw()) {
        EXPECT_EQ(l->defaults().ef_search, 32) << f;
      }
      std::vector<float> s(5);
      std::vector<int64_t> r(5);
      // Searching for a stored vector finds it first (PQ: among the top 5).
      l->search(1, x.data() + 7 * d, 5, {}, s.data(), r.data());
      EXPECT_NE(std::find(r.begin(), r.end(), 7), r.end()) << f << " " << l->describe();
    }
  }
  try {
    VectorIndex::create("NoSuchIndex12", d);
    ADD_FAILURE();
  } catch (const cepe::Error& e) {
    EXPECT_NE(e.message().find("'NoSuchIndex12' rejected"), std::string::npos) << e.message();
  }
  write(dir / "trunc.index", cepe::test::read_file(dir / "i.index").substr(0, 100));
  EXPECT_THROW(VectorIndex::load(dir / "trunc.index", false), cepe::Error);
}

// A file FAISS itself reads without complaint but whose structure is wrong (written by a buggy or
// hostile tool, checksum recomputed) is refused at load, naming the file and what is wrong, before
// a search can read out of bounds (a bad HNSW neighbour id made FAISS segfault).
TEST(VectorIndex, StructurallyCorruptFilesAreRefusedAtLoad) {
  const int n = 1000, d = 32;
  const auto x = random_unit_vectors(n, d, 5);
  const fs::path dir = cepe::test::temp_dir("faiss-structure");
  struct Case {
    std::string factory;
    std::string what;
    std::function<void(faiss::Index*)> corrupt;
    std::string fragment;
  };
  auto hnsw_of = [](faiss::Index* i) { return dynamic_cast<faiss::IndexHNSW*>(i); };
  auto ivf_of = [](faiss::Index* i) { return dynamic_cast<faiss::IndexIVF*>(i); };
  auto lists_of = [&](faiss::Index* i) {
    return dynamic_cast<faiss::ArrayInvertedLists*>(ivf_of(i)->invlists);
  };
  const std::vector<Case> cases = {
      {"HNSW16", "neighbour id past the end",
       [&](faiss::Index* i) { hnsw_of(i)->hnsw.neighbors[123] = n + 5; }, "HNSW neighbour id 1005"},
      {"HNSW16", "negative neighbour id",
       [&](faiss::Index* i) { hnsw_of(i)->hnsw.neighbors[7] = -9; }, "HNSW neighbour id -9"},
      {"HNSW16", "entry point past the end",
       [&](faiss::Index* i) { hnsw_of(i)->hnsw.entry_point = n; }, "HNSW entry point 1000"},
      {"HNSW16", "level above the graph", [&](faiss::Index* i) { hnsw_of(i)->hnsw.levels[3] = 40; },
       "HNSW vector 3 has level 40"},
      {"HNSW16", "storage shorter than the graph",
       [&](faiss::Index* i) {
         auto* flat = dynamic_cast<faiss::IndexFlat*>(hnsw_of(i)->storage);
         flat->codes.resize(flat->codes.size() / 2);
         flat->ntotal = n / 2;
       },
       "HNSW storage holds 500 vectors"},
      {"IVF16,Flat", "id outside the index",
       [&](faiss::Index* i) { lists_of(i)->ids[2][0] = n + 3; }, "holds id 1003"},
      {"IVF16,Flat", "an entry missing from a list",
       [&](faiss::Index* i) {
         auto* il = lists_of(i);
         il->ids[0].pop_back();
         il->codes[0].resize(il->ids[0].size() * il->code_size);
       },
       "inverted lists hold 999 entries, the index 1000"},
      {"IVF16,Flat", "quantizer with fewer centroids",
       [&](faiss::Index* i) {
         auto* q = dynamic_cast<faiss::IndexFlat*>(ivf_of(i)->quantizer);
         q->codes.resize(q->codes.size() - q->code_size);
         q->ntotal -= 1;
       },
       "IVF quantizer holds 15 centroids"},
      {"IVF16_HNSW8,Flat", "bad neighbour in the HNSW quantizer",
       [&](faiss::Index* i) { hnsw_of(ivf_of(i)->quantizer)->hnsw.neighbors[0] = 1 << 20; },
       "(IVF quantizer): HNSW neighbour id 1048576"},
      {"IVF8,PQ8x4", "product quantizer codebook cut short",
       [&](faiss::Index* i) {
         auto* pq = dynamic_cast<faiss::IndexIVFPQ*>(i);
         pq->pq.centroids.resize(pq->pq.centroids.size() / 2);
       },
       "product quantizer (M 8, 4 bits"},
      {"Flat", "vector data cut short",
       [&](faiss::Index* i) {
         auto* f = dynamic_cast<faiss::IndexFlat*>(i);
         f->codes.resize(f->codes.size() - 4);
       },
       // FAISS's reader checks this one itself.
       "codes.size() == idxf->ntotal * idxf->code_size"},
  };
  for (const Case& c : cases) {
    auto v = VectorIndex::create(c.factory, d);
    if (v->needs_training()) v->train(n, x.data());
    v->add(n, x.data());
    const fs::path good = dir / "good.index", bad = dir / "bad.index";
    v->save(good);
    std::unique_ptr<faiss::Index> raw(faiss::read_index(good.c_str()));
    c.corrupt(raw.get());
    faiss::write_index(raw.get(), bad.c_str());
    for (bool mmap : {false, true}) {
      EXPECT_NO_THROW(VectorIndex::load(good, mmap)) << c.factory;
      try {
        VectorIndex::load(bad, mmap);
        ADD_FAILURE() << c.factory << " " << c.what << ": loaded";
      } catch (const cepe::Error& e) {
        EXPECT_NE(e.message().find("FAISS index " + bad.string()), std::string::npos)
            << e.message();
        EXPECT_NE(e.message().find(c.fragment), std::string::npos)
            << c.factory << " " << c.what << ": " << e.message();
        EXPECT_NE(e.message().find("rebuild the index"), std::string::npos) << e.message();
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Builds: atomic installation, crashes at every stage, kill -9 from outside

namespace {
fs::path write_corpus(const fs::path& dir, int n, const std::string& tag) {
  const fs::path f = dir / (tag + ".jsonl");
  std::ofstream out(f);
  std::mt19937 rng(n);
  const char* words[] = {"river",  "mountain", "city",  "king",   "war",
                         "music",  "science",  "ocean", "forest", "bridge",
                         "castle", "engine",   "poet",  "island", "desert"};
  for (int i = 0; i < n; ++i) {
    std::string text = tag;
    for (int w = 0; w < 40; ++w) text += std::string(" ") + words[rng() % 15];
    std::string title = "T";  // appended: `"T" + std::string&&` trips GCC 12's -Wrestrict
    title += std::to_string(i % 50);
    out << json_line(tag + "-" + std::to_string(i), title, text);
  }
  return f;
}

std::string run_cepe(const std::string& args, int* rc, const std::string& env = "") {
  std::string out;
  *rc = cepe::test::run_command(env + " " + cepe::test::cepe_binary().string() + " " + args, &out);
  return out;
}
}  // namespace

TEST(Build, CrashAtEveryStageLeavesOldIndexAndNothingLoadable) {
  const fs::path dir = cepe::test::temp_dir("crash");
  const fs::path old_corpus = write_corpus(dir, 300, "old");
  const fs::path new_corpus = write_corpus(dir, 400, "new");
  const fs::path out = dir / "idx";
  // A dense index, so that the train and add stages run: the tiny random BERT fixture embeds.
  const std::string dense =
      " --faiss IVF4,Flat --embedder bert:" +
      (cepe::test::source_dir() / "tests" / "fixtures" / "bert_tiny").string();
  int rc = 0;
  std::string log = run_cepe(
      "index build --input " + old_corpus.string() + " --out " + out.string() + dense, &rc);
  ASSERT_EQ(rc, 0) << log;
  for (const std::string point : {"ingest", "train", "add", "save", "manifest"}) {
    log = run_cepe(
        "index build --overwrite --input " + new_corpus.string() + " --out " + out.string() + dense,
        &rc, "CEPE_INDEX_BUILD_CRASH_AT=" + point);
    EXPECT_EQ(rc, 128 + 9) << point << ": " << log;
    // The old index is untouched and still answers.
    log = run_cepe("index search --index " + out.string() + " -k 1 --json \"river king\"", &rc);
    EXPECT_EQ(rc, 0) << point << ": " << log;
    EXPECT_NE(log.find("\"id\":\"old-"), std::string::npos) << point << ": " << log;
    // Whatever the killed build left does not load as an index.
    int partials = 0;
    for (const auto& e : fs::directory_iterator(dir)) {
      if (!is_partial_build_dir(e.path())) continue;
      ++partials;
      log = run_cepe("index search --index " + e.path().string() + " \"river\"", &rc);
      EXPECT_EQ(rc, 1) << point << ": " << log;
      EXPECT_NE(log.find("not an index"), std::string::npos) << point << ": " << log;
    }
    EXPECT_EQ(partials, 1) << point;
  }
  // The next build removes what the killed ones left, and installs the new index.
  log = run_cepe(
      "index build --overwrite --input " + new_corpus.string() + " --out " + out.string(), &rc);
  ASSERT_EQ(rc, 0) << log;
  EXPECT_NE(log.find("left by an interrupted build"), std::string::npos) << log;
  for (const auto& e : fs::directory_iterator(dir))
    EXPECT_FALSE(is_partial_build_dir(e.path())) << e.path();
  log = run_cepe("index search --index " + out.string() + " -k 1 --json \"river king\"", &rc);
  EXPECT_NE(log.find("\"id\":\"new-"), std::string::npos) << log;
  // A first build killed before it finished leaves no index at all.
  const fs::path fresh = dir / "fresh";
  log = run_cepe("index build --input " + new_corpus.string() + " --out " + fresh.string(), &rc,
                 "CEPE_INDEX_BUILD_CRASH_AT=save");
  EXPECT_EQ(rc, 128 + 9) << log;
  EXPECT_FALSE(fs::exists(fresh));
  log = run_cepe("index info " + fresh.string(), &rc);
  EXPECT_EQ(rc, 1) << log;
}

TEST(Build, RefusesToClobber) {
  const fs::path dir = cepe::test::temp_dir("clobber");
  const fs::path corpus = write_corpus(dir, 20, "c");
  BuildOptions o;
  o.inputs = {corpus};
  o.out = dir / "idx";
  build_index(o);
  EXPECT_THROW(build_index(o), cepe::Error);  // exists, no --overwrite
  fs::create_directories(dir / "notindex");
  write(dir / "notindex" / "precious.txt", "x");
  o.out = dir / "notindex";
  o.overwrite = true;
  try {
    build_index(o);
    ADD_FAILURE();
  } catch (const cepe::Error& e) {
    EXPECT_NE(e.message().find("neither a CEPE index nor an empty directory"), std::string::npos);
  }
  EXPECT_TRUE(fs::exists(dir / "notindex" / "precious.txt"));
  // A failed build (bad corpus) leaves no temporary directory behind.
  write(dir / "bad.jsonl", "{oops\n");
  o.inputs = {dir / "bad.jsonl"};
  o.out = dir / "idx2";
  EXPECT_THROW(build_index(o), cepe::Error);
  for (const auto& e : fs::directory_iterator(dir)) EXPECT_FALSE(is_partial_build_dir(e.path()));
  EXPECT_FALSE(fs::exists(dir / "idx2"));
}

// ---------------------------------------------------------------------------------------------
// cepe index add

namespace {
std::string file_bytes(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

// Every file of an index directory, by name (recursively), with its bytes.
std::map<std::string, std::string> index_files(const fs::path& dir) {
  std::map<std::string, std::string> out;
  for (const auto& e : fs::recursive_directory_iterator(dir))
    if (e.is_regular_file()) out[fs::relative(e.path(), dir).string()] = file_bytes(e.path());
  return out;
}

// Top hits of each query as "id score" lines.
std::string hits_of(const fs::path& dir, const std::vector<std::string>& queries) {
  auto r = open_index(dir);
  cepe::retriever::SearchOptions so;
  so.k = 8;
  std::ostringstream os;
  for (const auto& hits : r->search_batch(queries, so)) {
    for (const auto& h : hits) os << h.id << " " << h.score << "\n";
    os << "--\n";
  }
  return os.str();
}

const std::string kTinyBert =
    "bert:" + (cepe::test::source_dir() / "tests" / "fixtures" / "bert_tiny").string();

// Indexes of retriever `kind` (dense sides with the tiny BERT, Flat): `start` built into
// DIR/KIND-changed, the index a test then changes, and `expected` into DIR/KIND-expected, what
// the change must give. Returns the two directories.
std::pair<fs::path, fs::path> changed_and_expected(const fs::path& dir, const std::string& kind,
                                                   const std::vector<fs::path>& start,
                                                   const std::vector<fs::path>& expected) {
  BuildOptions o;
  o.retriever = kind;
  if (kind != "bm25") o.embedder = kTinyBert;
  o.inputs = start;
  o.out = dir / (kind + "-changed");
  build_index(o);
  o.inputs = expected;
  o.out = dir / (kind + "-expected");
  build_index(o);
  return {dir / (kind + "-changed"), o.out};
}

// A hybrid index of `n` passages ("old-0" ...) at DIR/idx with a stand-in encoder-state store in
// encoder_states/ (which a change must carry along); returns how it was built.
BuildOptions hybrid_index_with_a_store(const fs::path& dir, int n) {
  BuildOptions o;
  o.retriever = "hybrid";
  o.embedder = kTinyBert;
  o.inputs = {write_corpus(dir, n, "old")};
  o.out = dir / "idx";
  build_index(o);
  write(o.out / "encoder_states" / "0123.ces", "stored states");
  return o;
}
}  // namespace

// Adding B to an index of A gives the index of A + B built in one go: the same passage store
// byte for byte and the same hits, scores included, on BM25, dense Flat and hybrid; old rows keep
// their numbers. An IVF index grows without retraining: its new passages are found.
TEST(Add, EqualsABuildOfEverything) {
  const fs::path dir = cepe::test::temp_dir("add");
  const fs::path a = write_corpus(dir, 120, "old"), b = write_corpus(dir, 50, "new");
  const std::vector<std::string> queries = {"river king", "new castle poet", "old ocean",
                                            "desert engine science"};
  for (const std::string kind : {"bm25", "dense", "hybrid"}) {
    SCOPED_TRACE(kind);
    const auto [added, whole] = changed_and_expected(dir, kind, {a}, {a, b});
    AddOptions add;
    add.index = added;
    add.inputs = {b};
    const BuildResult r = add_to_index(add);
    EXPECT_EQ(r.passages, 170u);
    EXPECT_EQ(r.corpus.passages, 50u);
    EXPECT_EQ(r.manifest.passages, 170u);
    EXPECT_EQ(r.manifest.inputs, (std::vector<std::string>{a.string(), b.string()}));
    EXPECT_EQ(file_bytes(add.index / kPassagesFile), file_bytes(whole / kPassagesFile));
    EXPECT_EQ(hits_of(add.index, queries), hits_of(whole, queries));
    EXPECT_NE(hits_of(add.index, queries).find("new-"), std::string::npos);
    // The added index opens with its checksums verified, like a built one.
    cepe::index::OpenOptions verify;
    verify.verify = true;
    EXPECT_NO_THROW(open_index(add.index, verify));
  }
  // IVF: the centroids trained on A stay, B's vectors join their lists; probing every list is
  // exact search, so the hits are those of the Flat index of A + B.
  BuildOptions o;
  o.retriever = "dense";
  o.embedder = kTinyBert;
  o.faiss = "IVF4,Flat";
  o.inputs = {a};
  o.out = dir / "ivf";
  build_index(o);
  AddOptions add;
  add.index = o.out;
  add.inputs = {b};
  add_to_index(add);
  EXPECT_EQ(read_manifest(o.out).trained_on, 120u);
  cepe::retriever::SearchOptions so;
  so.k = 8;
  const auto flat = open_index(dir / "dense-expected")->search_batch(queries, so);
  so.nprobe = 4;
  const auto ivf = open_index(o.out)->search_batch(queries, so);
  ASSERT_EQ(ivf.size(), flat.size());
  for (size_t q = 0; q < ivf.size(); ++q) {
    ASSERT_EQ(ivf[q].size(), flat[q].size());
    for (size_t i = 0; i < ivf[q].size(); ++i) {
      EXPECT_EQ(ivf[q][i].row, flat[q][i].row) << queries[q] << " rank " << i;
      EXPECT_NEAR(ivf[q][i].score, flat[q][i].score, 1e-4) << queries[q] << " rank " << i;
    }
  }
}

// Ids the index holds are duplicates (named with their row), a bad record stops the add, and a
// failed add leaves every file as it was; --skip-invalid skips them. Encoder-state stores come
// along. A kill at any stage leaves the old index.
TEST(Add, DuplicatesErrorsAndCrashesLeaveTheIndex) {
  const fs::path dir = cepe::test::temp_dir("add-errors");
  const BuildOptions o = hybrid_index_with_a_store(dir, 60);
  const auto before = index_files(o.out);

  const fs::path dup = dir / "dup.jsonl";
  write(dup, json_line("fresh-1", "T", "a new passage") + json_line("old-7", "T", "again"));
  AddOptions add;
  add.index = o.out;
  add.inputs = {dup};
  try {
    add_to_index(add);
    ADD_FAILURE() << "a duplicate id was added";
  } catch (const cepe::Error& e) {
    EXPECT_NE(
        e.message().find(where(dup, 2) + "duplicate id: 'old-7' (already in the index, row 7)"),
        std::string::npos)
        << e.message();
  }
  EXPECT_EQ(index_files(o.out), before);
  const fs::path bad = dir / "bad.jsonl";
  write(bad, json_line("fresh-2", "T", "fine") + "{oops\n");
  add.inputs = {bad};
  EXPECT_THROW(add_to_index(add), cepe::Error);
  EXPECT_EQ(index_files(o.out), before);
  const fs::path nothing_new = dir / "nothing.jsonl";
  write(nothing_new, json_line("old-1", "T", "x"));
  add.inputs = {nothing_new};
  add.corpus.skip_invalid = true;
  try {
    add_to_index(add);
    ADD_FAILURE();
  } catch (const cepe::Error& e) {
    EXPECT_NE(e.message().find("no new valid passages"), std::string::npos) << e.message();
  }
  EXPECT_EQ(index_files(o.out), before);
  for (const auto& e : fs::directory_iterator(dir))
    EXPECT_FALSE(is_partial_build_dir(e.path())) << e.path();

  // One writer at a time: while a build, add or encode holds the index, another add refuses.
  {
    const IndexWriteLock held(o.out);
    add.inputs = {dup};
    try {
      add_to_index(add);
      ADD_FAILURE() << "added under another writer's lock";
    } catch (const cepe::Error& e) {
      EXPECT_NE(e.message().find("another cepe process is writing the index"), std::string::npos)
          << e.message();
    }
    BuildOptions rebuild = o;
    rebuild.overwrite = true;
    try {
      build_index(rebuild);
      ADD_FAILURE() << "rebuilt under another writer's lock";
    } catch (const cepe::Error& e) {
      EXPECT_NE(e.message().find("another cepe process is writing the index"), std::string::npos)
          << e.message();
    }
  }
  EXPECT_EQ(index_files(o.out), before);

  // Killed at every stage (the CLI, as a user's kill -9): the old index stays, whole.
  int rc = 0;
  for (const std::string point : {"add", "save", "manifest"}) {
    const std::string log = run_cepe(
        "index add --index " + o.out.string() + " --input " + dup.string() + " --skip-invalid", &rc,
        "CEPE_INDEX_BUILD_CRASH_AT=" + point);
    EXPECT_EQ(rc, 128 + 9) << point << ": " << log;
    EXPECT_EQ(index_files(o.out), before) << point;
  }
  // With --skip-invalid the duplicate is skipped and counted; the leftovers of the killed runs
  // are removed; the states store is carried over.
  const std::string log = run_cepe(
      "index add --index " + o.out.string() + " --input " + dup.string() + " --skip-invalid", &rc);
  ASSERT_EQ(rc, 0) << log;
  EXPECT_NE(log.find("added 1 passages"), std::string::npos) << log;
  EXPECT_NE(log.find("left by an interrupted build"), std::string::npos) << log;
  EXPECT_EQ(read_manifest(o.out).passages, 61u);
  EXPECT_EQ(read_manifest(o.out).skipped, 1u);
  EXPECT_EQ(file_bytes(o.out / "encoder_states" / "0123.ces"), "stored states");
  for (const auto& e : fs::directory_iterator(dir))
    EXPECT_FALSE(is_partial_build_dir(e.path())) << e.path();
}

namespace {
// The corpus `file` without the records whose ids are in `drop`.
fs::path corpus_without(const fs::path& file, const std::set<std::string>& drop,
                        const fs::path& out) {
  std::ifstream in(file);
  std::ofstream o(out);
  std::string line;
  while (std::getline(in, line)) {
    const size_t at = line.find("\"id\": \"") + 7;
    if (!drop.count(line.substr(at, line.find('"', at) - at))) o << line << "\n";
  }
  return out;
}
}  // namespace

// With replace, records whose ids the index holds replace those passages: the result is the
// build of the old passages less the replaced, then the input (store byte for byte, same hits),
// and the replaced versions' old text is no longer found. Without it they stay duplicates.
TEST(Add, ReplaceEqualsABuildOfTheRestThenTheInput) {
  const fs::path dir = cepe::test::temp_dir("add-replace");
  const fs::path a = write_corpus(dir, 80, "old");
  const fs::path b = dir / "b.jsonl";
  std::set<std::string> replaced;
  {
    std::ofstream out(b);
    for (int i : {3, 40, 79}) {
      const std::string id = "old-" + std::to_string(i);
      replaced.insert(id);
      out << json_line(id, "Zebra", "zebra zebra savanna stripes grazing");
    }
    out << json_line("new-1", "T", "a brand new river poet passage");
  }
  const fs::path rest = corpus_without(a, replaced, dir / "rest.jsonl");
  const std::vector<std::string> queries = {"zebra savanna", "river king", "castle poet"};
  for (const std::string kind : {"bm25", "hybrid"}) {
    SCOPED_TRACE(kind);
    const auto [replaced_in, expected] = changed_and_expected(dir, kind, {a}, {rest, b});
    AddOptions add;
    add.index = replaced_in;
    add.inputs = {b};
    EXPECT_THROW(add_to_index(add), cepe::Error) << "a held id is a duplicate without replace";
    add.replace = true;
    const BuildResult r = add_to_index(add);
    EXPECT_EQ(r.replaced, 3u);
    EXPECT_EQ(r.passages, 81u);
    EXPECT_EQ(file_bytes(add.index / kPassagesFile), file_bytes(expected / kPassagesFile));
    const std::string hits = hits_of(add.index, queries);
    EXPECT_EQ(hits, hits_of(expected, queries));
    EXPECT_NE(hits.find("old-40"), std::string::npos) << "the new version of old-40 is found";
  }
}

// ---------------------------------------------------------------------------------------------
// cepe index remove

// Removing ids from an index gives the index of the other passages built in one go: the same
// passage store byte for byte (the rest renumbered in order) and the same hits, scores included,
// on BM25, dense Flat and hybrid. IVF (trained centroids kept, ids renumbered in the lists), an
// RFlat re-ranked PQ and an HNSW graph (rebuilt) find exactly the Flat index's hits when they
// look at every vector.
TEST(Remove, EqualsABuildOfTheRest) {
  const fs::path dir = cepe::test::temp_dir("remove");
  const fs::path a = write_corpus(dir, 120, "old");
  std::set<std::string> drop;
  for (int i = 0; i < 120; i += 7) drop.insert("old-" + std::to_string(i));
  drop.insert("old-119");
  const fs::path rest = corpus_without(a, drop, dir / "rest.jsonl");
  const std::vector<std::string> ids(drop.begin(), drop.end());
  const std::vector<std::string> queries = {"river king", "castle poet", "old ocean",
                                            "desert engine science"};
  for (const std::string kind : {"bm25", "dense", "hybrid"}) {
    SCOPED_TRACE(kind);
    const auto [removed_from, expected] = changed_and_expected(dir, kind, {a}, {rest});
    const std::string before = hits_of(removed_from, queries);
    RemoveOptions rm;
    rm.index = removed_from;
    rm.ids = ids;
    const RemoveResult r = remove_from_index(rm);
    EXPECT_EQ(r.removed, drop.size());
    EXPECT_EQ(r.manifest.passages, 120u - drop.size());
    EXPECT_EQ(read_manifest(rm.index).removed, drop.size());
    EXPECT_EQ(file_bytes(rm.index / kPassagesFile), file_bytes(expected / kPassagesFile));
    const std::string after = hits_of(rm.index, queries);
    EXPECT_EQ(after, hits_of(expected, queries));
    EXPECT_NE(before, after) << "the queries never met a removed passage";
    for (const auto& id : drop) EXPECT_EQ(after.find(id + " "), std::string::npos) << id;
    cepe::index::OpenOptions verify;
    verify.verify = true;
    EXPECT_NO_THROW(open_index(rm.index, verify));
  }
  // Every remaining passage's exact score per query, from the Flat index of the rest.
  cepe::retriever::SearchOptions so;
  so.k = 120;
  std::vector<std::map<std::string, float>> exact(queries.size());
  const auto all = open_index(dir / "dense-expected")->search_batch(queries, so);
  for (size_t q = 0; q < queries.size(); ++q)
    for (const auto& h : all[q]) exact[q][h.id] = h.score;
  so.k = 8;
  const auto flat = open_index(dir / "dense-expected")->search_batch(queries, so);
  for (const std::string factory : {"IVF4,Flat", "IVF4,PQ8x4,RFlat", "HNSW16"}) {
    SCOPED_TRACE(factory);
    BuildOptions o;
    o.retriever = "dense";
    o.embedder = kTinyBert;
    o.faiss = factory;
    o.inputs = {a};
    o.out = dir / ("ann-" + std::to_string(factory.size()));
    build_index(o);
    RemoveOptions rm;
    rm.index = o.out;
    rm.ids = ids;
    remove_from_index(rm);
    const bool ivf = factory[0] == 'I';
    EXPECT_EQ(read_manifest(o.out).trained_on, ivf ? 120u : 0u);
    so.nprobe = ivf ? 4 : 0;
    so.ef_search = ivf ? 0 : 256;
    const auto ann = open_index(o.out)->search_batch(queries, so);
    ASSERT_EQ(ann.size(), flat.size());
    for (size_t q = 0; q < ann.size(); ++q) {
      ASSERT_EQ(ann[q].size(), flat[q].size());
      for (size_t i = 0; i < ann[q].size(); ++i) {
        // Each hit is a remaining passage with its own vector (the rows renumbered right): its
        // score is its exact score. Inner products over the tiny BERT's 32 dims, summed in
        // another order than Flat's: |error| <= 32 u |x||y|, under 1e-4 at these norms (~14).
        ASSERT_EQ(exact[q].count(ann[q][i].id), 1u) << ann[q][i].id << " is not a kept passage";
        EXPECT_NEAR(ann[q][i].score, exact[q][ann[q][i].id], 1e-4) << queries[q] << " rank " << i;
        // Probing every list (and re-ranking every candidate exactly) is exact search; an HNSW
        // graph over inner products is approximate even when ef_search exceeds its size.
        if (ivf) {
          EXPECT_EQ(ann[q][i].id, flat[q][i].id) << queries[q] << " rank " << i;
        }
      }
    }
  }
}

// Unknown ids are named with where they came from (or skipped with --ignore-missing); removing
// everything, or from a structure FAISS cannot remove from, is refused; a failed or killed removal
// leaves every file as it was; encoder-state stores come along.
TEST(Remove, ErrorsAndCrashesLeaveTheIndex) {
  const fs::path dir = cepe::test::temp_dir("remove-errors");
  const BuildOptions o = hybrid_index_with_a_store(dir, 30);
  const auto before = index_files(o.out);
  const fs::path ids = dir / "ids.txt";
  write(ids, "old-3\n\nold-77\r\n");
  int rc = 0;
  std::string log =
      run_cepe("index remove --index " + o.out.string() + " --ids " + ids.string(), &rc);
  EXPECT_EQ(rc, 1) << log;
  EXPECT_NE(log.find(ids.string() + ":3: unknown id 'old-77' (not in the index"), std::string::npos)
      << log;
  EXPECT_EQ(index_files(o.out), before);
  RemoveOptions rm;
  rm.index = o.out;
  for (int i = 0; i < 30; ++i) rm.ids.push_back("old-" + std::to_string(i));
  try {
    remove_from_index(rm);
    ADD_FAILURE() << "removed every passage";
  } catch (const cepe::Error& e) {
    EXPECT_NE(e.message().find("would leave"), std::string::npos) << e.message();
  }
  rm.ids = {"nope"};
  rm.ignore_missing = true;
  EXPECT_THROW(remove_from_index(rm), cepe::Error) << "nothing to remove";
  EXPECT_EQ(index_files(o.out), before);
  for (const std::string point : {"copy", "save", "manifest"}) {
    log = run_cepe("index remove --index " + o.out.string() + " old-3", &rc,
                   "CEPE_INDEX_BUILD_CRASH_AT=" + point);
    EXPECT_EQ(rc, 128 + 9) << point << ": " << log;
    EXPECT_EQ(index_files(o.out), before) << point;
  }
  log = run_cepe(
      "index remove --ignore-missing --index " + o.out.string() + " --ids " + ids.string(), &rc);
  ASSERT_EQ(rc, 0) << log;
  EXPECT_NE(log.find("removed 1 passages"), std::string::npos) << log;
  EXPECT_NE(log.find("1 ids were not in the index (ignored)"), std::string::npos) << log;
  EXPECT_NE(log.find("left by an interrupted build"), std::string::npos) << log;
  EXPECT_EQ(read_manifest(o.out).passages, 29u);
  EXPECT_EQ(file_bytes(o.out / "encoder_states" / "0123.ces"), "stored states");
  // An HNSW graph below a transform cannot be rebuilt from exact vectors: refused, untouched.
  BuildOptions pca = o;
  pca.faiss = "PCA16,HNSW16";
  pca.out = dir / "pca-hnsw";
  build_index(pca);
  const auto pca_before = index_files(pca.out);
  RemoveOptions one;
  one.index = pca.out;
  one.ids = {"old-3"};
  try {
    remove_from_index(one);
    ADD_FAILURE() << "removed from a PCA + HNSW index";
  } catch (const cepe::Error& e) {
    EXPECT_NE(e.message().find("FAISS has no removal for this structure; rebuild the index"),
              std::string::npos)
        << e.message();
  }
  EXPECT_EQ(index_files(pca.out), pca_before);
  for (const auto& e : fs::directory_iterator(dir))
    EXPECT_FALSE(is_partial_build_dir(e.path())) << e.path();
}
