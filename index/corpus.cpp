#include "index/corpus.h"

#include <rapidjson/document.h>

#include <algorithm>
#include <cctype>
#include <cstdio>
#include <memory>

#include "common/error.h"
#include "common/fileio.h"
#include "common/hash.h"
#include "common/json.h"
#include "common/utf8.h"

namespace cepe::index {

namespace {

namespace fs = std::filesystem;

const char* kDuplicate = "duplicate id";
const char* kEmpty = "empty text";
const char* kUtf8 = "invalid UTF-8";
const char* kMalformed = "malformed line";

std::string lower(std::string s) {
  for (char& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

bool is_space(char c) {
  return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v';
}

std::string_view trim(std::string_view s) {
  while (!s.empty() && is_space(s.front())) s.remove_prefix(1);
  while (!s.empty() && is_space(s.back())) s.remove_suffix(1);
  return s;
}

// Reads a file line by line in large chunks; lines lose their "\n" and a trailing "\r".
class LineReader {
 public:
  explicit LineReader(const fs::path& path) : f_(std::fopen(path.c_str(), "rb"), &std::fclose) {
    CEPE_CHECK(f_, "cannot open " << path.string());
    buf_.resize(1 << 20);
  }
  bool next(std::string* line) {
    line->clear();
    for (;;) {
      if (pos_ == len_) {
        len_ = std::fread(buf_.data(), 1, buf_.size(), f_.get());
        pos_ = 0;
        if (len_ == 0) {
          if (line->empty() && !pending_) return false;
          pending_ = false;
          break;
        }
      }
      const char* start = buf_.data() + pos_;
      const char* nl = static_cast<const char*>(std::memchr(start, '\n', len_ - pos_));
      if (nl) {
        line->append(start, nl - start);
        const size_t used = nl - start + 1;
        pos_ += used;
        bytes_ += used;
        pending_ = false;
        break;
      }
      line->append(start, len_ - pos_);
      bytes_ += len_ - pos_;
      pos_ = len_;
      pending_ = true;
    }
    if (!line->empty() && line->back() == '\r') line->pop_back();
    ++line_no_;
    return true;
  }
  uint64_t line_no() const { return line_no_; }
  uint64_t bytes() const { return bytes_; }

 private:
  std::unique_ptr<FILE, int (*)(FILE*)> f_;
  std::vector<char> buf_;
  size_t pos_ = 0, len_ = 0;
  uint64_t line_no_ = 0, bytes_ = 0;
  bool pending_ = false;
};

// A TSV field written by Python's csv module: "..." with "" for a quote.
std::string unquote_tsv(std::string_view f) {
  if (f.size() >= 2 && f.front() == '"' && f.back() == '"') {
    std::string out;
    out.reserve(f.size());
    for (size_t i = 1; i + 1 < f.size(); ++i) {
      out.push_back(f[i]);
      if (f[i] == '"' && i + 2 < f.size() && f[i + 1] == '"') ++i;
    }
    return out;
  }
  return std::string(f);
}

std::vector<std::string_view> split_tabs(std::string_view line) {
  std::vector<std::string_view> out;
  size_t start = 0;
  for (;;) {
    size_t tab = line.find('\t', start);
    out.push_back(
        line.substr(start, tab == std::string_view::npos ? std::string_view::npos : tab - start));
    if (tab == std::string_view::npos) break;
    start = tab + 1;
  }
  return out;
}

uint64_t line_of_offset(std::string_view text, size_t offset) {
  return 1 + static_cast<uint64_t>(std::count(text.begin(), text.begin() + offset, '\n'));
}

CorpusFormat format_of(const fs::path& p, bool* known) {
  const std::string ext = lower(p.extension().string());
  *known = true;
  if (ext == ".jsonl" || ext == ".json" || ext == ".ndjson") return CorpusFormat::Jsonl;
  if (ext == ".tsv") return CorpusFormat::Tsv;
  if (ext == ".txt") return CorpusFormat::Text;
  if (ext == ".md" || ext == ".markdown") return CorpusFormat::Markdown;
  *known = false;
  return CorpusFormat::Text;
}

}  // namespace

std::vector<CorpusFile> resolve_corpus_inputs(const std::vector<fs::path>& inputs,
                                              CorpusStats* stats) {
  CEPE_CHECK(!inputs.empty(), "no corpus input given");
  std::vector<CorpusFile> files;
  for (const fs::path& input : inputs) {
    CEPE_CHECK(fs::exists(input), "corpus input " << input.string() << " does not exist");
    if (fs::is_directory(input)) {
      std::vector<fs::path> found;
      for (auto it = fs::recursive_directory_iterator(input);
           it != fs::recursive_directory_iterator(); ++it) {
        const std::string name = it->path().filename().string();
        if (!name.empty() && name[0] == '.') {  // hidden files and directories (.git, editors)
          if (it->is_directory()) it.disable_recursion_pending();
          continue;
        }
        if (!it->is_regular_file()) continue;
        bool known = false;
        CorpusFormat f = format_of(it->path(), &known);
        if (known && (f == CorpusFormat::Text || f == CorpusFormat::Markdown)) {
          found.push_back(it->path());
        } else if (stats) {
          ++stats->ignored_files;
        }
      }
      // Sorted so that ids and rows do not depend on directory enumeration order.
      std::sort(found.begin(), found.end());
      CEPE_CHECK(!found.empty(),
                 "corpus directory " << input.string() << " has no .txt or .md files");
      for (const fs::path& p : found) {
        bool known = false;
        files.push_back({p, fs::relative(p, input).generic_string(), format_of(p, &known),
                         static_cast<uint64_t>(fs::file_size(p))});
      }
    } else {
      bool known = false;
      CorpusFormat f = format_of(input, &known);
      CEPE_CHECK(known, "corpus input " << input.string()
                                        << ": unsupported format (expected .jsonl, .tsv, .txt, .md "
                                           "or a directory of .txt/.md files)");
      std::string display = f == CorpusFormat::Text || f == CorpusFormat::Markdown
                                ? input.filename().string()
                                : input.string();
      files.push_back({input, display, f, static_cast<uint64_t>(fs::file_size(input))});
    }
  }
  return files;
}

CorpusReader::CorpusReader(const std::vector<fs::path>& inputs, CorpusOptions options)
    : options_(options) {
  CEPE_CHECK(options_.passage_words >= 8,
             "passage length must be at least 8 words (got " << options_.passage_words << ")");
  CEPE_CHECK(options_.overlap_words >= 0 && options_.overlap_words < options_.passage_words,
             "passage overlap must be in [0, " << options_.passage_words << ") words (got "
                                               << options_.overlap_words << ")");
  files_ = resolve_corpus_inputs(inputs, &stats_);
}

uint64_t CorpusReader::total_bytes() const {
  uint64_t n = 0;
  for (const auto& f : files_) n += f.bytes;
  return n;
}

void CorpusReader::read(const std::function<void(const Passage&)>& sink,
                        const std::function<void(uint64_t)>& progress) {
  sink_ = sink;
  progress_ = progress;
  bytes_before_ = 0;
  for (size_t i = 0; i < files_.size(); ++i) {
    ++stats_.files;
    switch (files_[i].format) {
      case CorpusFormat::Jsonl:
        read_jsonl(i);
        break;
      case CorpusFormat::Tsv:
        read_tsv(i);
        break;
      case CorpusFormat::Text:
      case CorpusFormat::Markdown:
        read_text(i);
        break;
    }
    bytes_before_ += files_[i].bytes;
    if (progress_) progress_(bytes_before_);
  }
}

void CorpusReader::reject(size_t file_index, uint64_t line, const std::string& reason,
                          const std::string& detail) {
  const std::string where = files_[file_index].path.string() + ":" + std::to_string(line);
  if (!options_.skip_invalid) {
    CEPE_THROW(where << ": " << reason << ": " << detail
                     << " (pass --skip-invalid to skip bad records)");
  }
  ++stats_.skipped;
  ++stats_.skipped_by_reason[reason];
  if (stats_.examples.size() < options_.max_examples) {
    stats_.examples.push_back(where + ": " + reason + ": " + detail);
  }
}

void CorpusReader::add_existing_id(std::string_view id, uint64_t row) {
  seen_ids_.try_emplace(hash64(id, 0x1d),
                        Location{kExistingIndex, static_cast<uint32_t>(hash64(id, 0x2e)), row});
}

bool CorpusReader::accept(size_t file_index, uint64_t line, Passage&& p) {
  if (trim(p.text).empty()) {
    reject(file_index, line, kEmpty, "passage " + quoted_input(p.id) + " has no text");
    return false;
  }
  const uint64_t key = hash64(p.id, 0x1d);
  const auto check = static_cast<uint32_t>(hash64(p.id, 0x2e));
  auto [it, inserted] =
      seen_ids_.try_emplace(key, Location{static_cast<uint32_t>(file_index), check, line});
  if (!inserted && it->second.check == check) {
    const std::string first = it->second.file == kExistingIndex
                                  ? "already in the index, row " + std::to_string(it->second.line)
                                  : "first seen at " + files_[it->second.file].path.string() + ":" +
                                        std::to_string(it->second.line);
    reject(file_index, line, kDuplicate, quoted_input(p.id) + " (" + first + ")");
    return false;
  }
  ++stats_.passages;
  sink_(p);
  return true;
}

void CorpusReader::read_jsonl(size_t fi) {
  LineReader in(files_[fi].path);
  std::string line;
  rapidjson::Document doc;
  while (in.next(&line)) {
    const uint64_t ln = in.line_no();
    if ((ln & 1023) == 0 && progress_) progress_(bytes_before_ + in.bytes());
    if (trim(line).empty()) continue;  // blank lines (a trailing newline) are not records
    size_t bad = 0;
    if (!utf8_valid(line, &bad)) {
      reject(fi, ln, kUtf8, "bad byte sequence at column " + std::to_string(bad + 1));
      continue;
    }
    if (std::string error; !parse_json(line, &doc, &error)) {
      reject(fi, ln, kMalformed, error);
      continue;
    }
    if (!doc.IsObject()) {
      reject(fi, ln, kMalformed, "expected a JSON object {\"id\", \"title\", \"text\"}");
      continue;
    }
    Passage p;
    auto id = doc.FindMember("id");
    if (id == doc.MemberEnd()) {
      reject(fi, ln, kMalformed, "missing field \"id\"");
      continue;
    }
    if (id->value.IsString()) {
      p.id.assign(id->value.GetString(), id->value.GetStringLength());
    } else if (id->value.IsInt64()) {
      p.id = std::to_string(id->value.GetInt64());
    } else if (id->value.IsUint64()) {
      p.id = std::to_string(id->value.GetUint64());
    } else {
      reject(fi, ln, kMalformed, "field \"id\" must be a string or an integer");
      continue;
    }
    if (trim(p.id).empty()) {
      reject(fi, ln, kMalformed, "field \"id\" is empty");
      continue;
    }
    auto text = doc.FindMember("text");
    if (text == doc.MemberEnd() || !text->value.IsString()) {
      reject(
          fi, ln, kMalformed,
          text == doc.MemberEnd() ? "missing field \"text\"" : "field \"text\" must be a string");
      continue;
    }
    p.text.assign(text->value.GetString(), text->value.GetStringLength());
    auto title = doc.FindMember("title");
    if (title != doc.MemberEnd() && !title->value.IsNull()) {
      if (!title->value.IsString()) {
        reject(fi, ln, kMalformed, "field \"title\" must be a string");
        continue;
      }
      p.title.assign(title->value.GetString(), title->value.GetStringLength());
    }
    // \u escapes can smuggle in what the raw-line check cannot see (lone surrogates decode to
    // invalid UTF-8 in rapidjson's output).
    if (!utf8_valid(p.id) || !utf8_valid(p.title) || !utf8_valid(p.text)) {
      reject(fi, ln, kUtf8, "a \\u escape decodes to an invalid code point");
      continue;
    }
    accept(fi, ln, std::move(p));
  }
}

void CorpusReader::read_tsv(size_t fi) {
  LineReader in(files_[fi].path);
  std::string line;
  const std::string& name = files_[fi].path.string();
  CEPE_CHECK(in.next(&line),
             name << ":1: empty TSV file (expected a header line id<TAB>text<TAB>title)");
  // The header is not skippable: without it no row can be read.
  int col_id = -1, col_text = -1, col_title = -1;
  const auto header = split_tabs(line);
  for (size_t i = 0; i < header.size(); ++i) {
    const std::string h = lower(std::string(trim(header[i])));
    if (h == "id") col_id = static_cast<int>(i);
    if (h == "text") col_text = static_cast<int>(i);
    if (h == "title") col_title = static_cast<int>(i);
  }
  CEPE_CHECK(col_id >= 0 && col_text >= 0 && col_title >= 0,
             name << ":1: malformed line: expected a header line naming the columns id, text and "
                     "title (got "
                  << quoted_input(line) << ")");
  while (in.next(&line)) {
    const uint64_t ln = in.line_no();
    if ((ln & 1023) == 0 && progress_) progress_(bytes_before_ + in.bytes());
    if (trim(line).empty()) continue;
    size_t bad = 0;
    if (!utf8_valid(line, &bad)) {
      reject(fi, ln, kUtf8, "bad byte sequence at column " + std::to_string(bad + 1));
      continue;
    }
    const auto fields = split_tabs(line);
    if (fields.size() != header.size()) {
      reject(fi, ln, kMalformed,
             "expected " + std::to_string(header.size()) + " tab-separated fields, got " +
                 std::to_string(fields.size()));
      continue;
    }
    Passage p;
    p.id = unquote_tsv(trim(fields[col_id]));
    p.text = unquote_tsv(fields[col_text]);
    p.title = unquote_tsv(fields[col_title]);
    if (p.id.empty()) {
      reject(fi, ln, kMalformed, "empty id");
      continue;
    }
    accept(fi, ln, std::move(p));
  }
}

void CorpusReader::read_text(size_t fi) {
  const CorpusFile& f = files_[fi];
  std::string content = read_whole_file(f.path);
  if (progress_) progress_(bytes_before_ + content.size());
  size_t bad = 0;
  if (!utf8_valid(content, &bad)) {
    reject(fi, line_of_offset(content, bad), kUtf8,
           "bad byte sequence at byte " + std::to_string(bad) + " (the whole file is skipped)");
    return;
  }
  std::string title = f.path.stem().string();
  if (f.format == CorpusFormat::Markdown) {
    // Headings become paragraph breaks; the first one names the document.
    bool have_heading = false;
    size_t start = 0;
    while (start < content.size()) {
      size_t end = content.find('\n', start);
      if (end == std::string::npos) end = content.size();
      std::string_view l(content.data() + start, end - start);
      size_t hashes = 0;
      while (hashes < l.size() && l[hashes] == '#') ++hashes;
      if (hashes >= 1 && hashes <= 6 &&
          (hashes == l.size() || l[hashes] == ' ' || l[hashes] == '\t')) {
        std::string_view h = trim(l.substr(hashes));
        while (!h.empty() && h.back() == '#') h.remove_suffix(1);  // closing hashes
        h = trim(h);
        if (!have_heading && !h.empty()) {
          title = std::string(h);
          have_heading = true;
        }
        std::fill(content.begin() + start, content.begin() + end, ' ');
      }
      start = end + 1;
    }
  }
  const auto passages = split_passages(content, options_.passage_words, options_.overlap_words);
  if (passages.empty()) {
    reject(fi, 1, kEmpty, "file has no text");
    return;
  }
  for (size_t i = 0; i < passages.size(); ++i) {
    Passage p;
    p.id = f.display + "#" + std::to_string(i);
    p.title = title;
    p.text = passages[i].first;
    accept(fi, passages[i].second, std::move(p));
  }
}

std::string CorpusReader::skip_summary() const {
  if (stats_.skipped == 0) return "";
  std::string s = "skipped " + std::to_string(stats_.skipped) + " invalid record(s):";
  bool first = true;
  for (const auto& [reason, n] : stats_.skipped_by_reason) {
    s += (first ? " " : ", ") + std::to_string(n) + " " + reason;
    first = false;
  }
  return s;
}

namespace {
struct Word {
  std::string_view text;
  uint64_t line;
  bool paragraph_start;
};

bool ends_sentence(std::string_view w) {
  size_t i = w.size();
  // Closing quotes and brackets may follow the full stop: 'he said "no."'.
  while (i > 0 && (w[i - 1] == '"' || w[i - 1] == '\'' || w[i - 1] == ')' || w[i - 1] == ']')) --i;
  if (i >= 3 && w.substr(i - 3, 3) == "\xE2\x80\x9D") i -= 3;  // ”
  if (i >= 3 && w.substr(i - 3, 3) == "\xE2\x80\x99") i -= 3;  // ’
  return i > 0 && (w[i - 1] == '.' || w[i - 1] == '!' || w[i - 1] == '?');
}

bool starts_sentence(std::string_view w) {
  const unsigned char c = static_cast<unsigned char>(w[0]);
  return std::isupper(c) || std::isdigit(c) || c == '"' || c == '\'' || c == '(' || c == '[' ||
         c >= 0x80;
}
}  // namespace

std::vector<std::pair<std::string, uint64_t>> split_passages(const std::string& text, int words,
                                                             int overlap, uint64_t first_line) {
  // Words with their line numbers; a blank line marks a paragraph start.
  std::vector<Word> ws;
  uint64_t line = first_line;
  bool para = true;
  size_t i = 0;
  while (i < text.size()) {
    if (text[i] == '\n') {
      ++line;
      size_t j = i + 1;
      while (j < text.size() && text[j] != '\n' && is_space(text[j])) ++j;
      if (j < text.size() && text[j] == '\n') para = true;
      ++i;
      continue;
    }
    if (is_space(text[i])) {
      ++i;
      continue;
    }
    size_t j = i;
    while (j < text.size() && !is_space(text[j])) ++j;
    ws.push_back({std::string_view(text).substr(i, j - i), line, para});
    para = false;
    i = j;
  }
  // Sentences as [begin, end) word ranges.
  std::vector<std::pair<size_t, size_t>> sentences;
  size_t begin = 0;
  for (size_t k = 0; k < ws.size(); ++k) {
    const bool last = k + 1 == ws.size();
    if (last || ws[k + 1].paragraph_start ||
        (ends_sentence(ws[k].text) && starts_sentence(ws[k + 1].text))) {
      sentences.push_back({begin, k + 1});
      begin = k + 1;
    }
  }
  // Sentences longer than a passage are cut into passage-sized pieces.
  std::vector<std::pair<size_t, size_t>> units;
  const size_t W = static_cast<size_t>(words);
  for (auto [b, e] : sentences) {
    for (size_t s = b; s < e; s += W) units.push_back({s, std::min(e, s + W)});
  }
  std::vector<std::pair<std::string, uint64_t>> out;
  std::vector<std::pair<size_t, size_t>> cur;
  size_t cur_words = 0;
  auto emit = [&]() {
    std::string s;
    for (auto [b, e] : cur) {
      for (size_t k = b; k < e; ++k) {
        if (!s.empty()) s += ' ';
        s.append(ws[k].text);
      }
    }
    out.push_back({std::move(s), ws[cur.front().first].line});
  };
  for (auto u : units) {
    const size_t n = u.second - u.first;
    // A short passage may run over by half rather than end far below the target.
    const bool fits = cur_words + n <= W || (cur_words < W / 2 && cur_words + n <= W + W / 2);
    if (cur.empty() || fits) {
      cur.push_back(u);
      cur_words += n;
      continue;
    }
    emit();
    // Carry whole trailing sentences (never the whole passage, so that every step advances).
    size_t carry = 0, carried_words = 0;
    while (carry + 1 < cur.size()) {
      const auto& s = cur[cur.size() - 1 - carry];
      const size_t sw = s.second - s.first;
      if (carried_words + sw > static_cast<size_t>(overlap) || carried_words + sw + n > W) break;
      carried_words += sw;
      ++carry;
    }
    cur.erase(cur.begin(), cur.end() - static_cast<std::ptrdiff_t>(carry));
    cur_words = carried_words;
    cur.push_back(u);
    cur_words += n;
  }
  if (!cur.empty()) emit();
  return out;
}

}  // namespace cepe::index
