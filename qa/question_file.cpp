#include "qa/question_file.h"

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <unordered_map>

#include "common/error.h"
#include "common/fileio.h"
#include "common/json.h"
#include "common/strings.h"
#include "common/utf8.h"

namespace cepe::qa {

namespace {

using rapidjson::Value;

// A bad line: caught per line and turned into "FILE:LINE: what".
struct BadLine {
  std::string what;
};

[[noreturn]] void bad(std::string what) {
  throw BadLine{std::move(what)};
}

std::string quoted(std::string_view key) {
  std::string out(1, '"');
  out.append(key);
  out.push_back('"');
  return out;
}

std::string lower_ascii(std::string_view s) {
  std::string out(s);
  for (char& c : out) {
    if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
  }
  return out;
}

void check_utf8(std::string_view line) {
  if (auto at = find_invalid_utf8(line)) {
    bad("invalid UTF-8 at column " + std::to_string(*at + 1));
  }
}

// Ids are kept as text; integers remember that they were integers so output can match input.
void read_id(const Value& v, std::string_view what, std::string* id, bool* numeric) {
  if (v.IsString()) {
    *id = json_string(v);
    if (id->empty()) bad(std::string(what) + " is empty");
    *numeric = false;
  } else if (v.IsInt64()) {
    *id = std::to_string(v.GetInt64());
    *numeric = true;
  } else if (v.IsUint64()) {
    *id = std::to_string(v.GetUint64());
    *numeric = true;
  } else {
    bad(std::string(what) + " must be a string or an integer");
  }
}

void read_answers(const Value& v, std::string_view key, std::vector<std::string>* out) {
  if (v.IsString()) {
    out->push_back(json_string(v));
    return;
  }
  if (!v.IsArray()) bad(quoted(key) + " must be a string or a list of strings");
  for (rapidjson::SizeType i = 0; i < v.Size(); ++i) {
    const Value& e = v[i];
    const std::string where = quoted(key) + "[" + std::to_string(i) + "]";
    if (e.IsString()) {
      out->push_back(json_string(e));
    } else if (e.IsArray()) {
      // CEPE flattens a list of lists of answers.
      for (rapidjson::SizeType j = 0; j < e.Size(); ++j) {
        if (!e[j].IsString()) bad(where + "[" + std::to_string(j) + "] must be a string");
        out->push_back(json_string(e[j]));
      }
    } else {
      bad(where + " must be a string");
    }
  }
}

std::optional<double> read_score(const Value& v, const std::string& where) {
  if (v.IsNull()) return std::nullopt;
  if (v.IsNumber()) return v.GetDouble();
  if (v.IsString()) {
    const std::string s = json_string(v);
    const std::string_view t = trim_ascii(s);
    if (!t.empty()) {
      const std::string copy(t);
      char* end = nullptr;
      errno = 0;
      const double d = std::strtod(copy.c_str(), &end);
      if (end == copy.c_str() + copy.size() && errno == 0) return d;
    }
  }
  bad(where + " must be a number or a numeric string");
}

std::vector<Passage> read_ctxs(const Value& v) {
  if (!v.IsArray()) bad("\"ctxs\" must be a list of passages");
  std::vector<Passage> out;
  out.reserve(v.Size());
  for (rapidjson::SizeType i = 0; i < v.Size(); ++i) {
    const Value& c = v[i];
    const std::string where = "\"ctxs\"[" + std::to_string(i) + "]";
    if (!c.IsObject()) bad(where + " must be an object");
    Passage p;
    auto text = c.FindMember("text");
    if (text == c.MemberEnd()) bad(where + " has no \"text\"");
    if (!text->value.IsString()) bad(where + ".text must be a string");
    p.text = json_string(text->value);
    auto title = c.FindMember("title");
    if (title != c.MemberEnd() && !title->value.IsNull()) {
      if (!title->value.IsString()) bad(where + ".title must be a string");
      p.title = json_string(title->value);
    }
    auto id = c.FindMember("id");
    if (id != c.MemberEnd() && !id->value.IsNull()) {
      bool numeric = false;
      read_id(id->value, where + ".id", &p.id, &numeric);
    }
    auto score = c.FindMember("score");
    if (score != c.MemberEnd()) p.score = read_score(score->value, where + ".score");
    out.push_back(std::move(p));
  }
  return out;
}

Question read_question_object(const Value& v, size_t line, size_t default_id,
                              const QuestionFileOptions& options) {
  if (!v.IsObject()) bad("expected a JSON object");
  Question q;
  q.line = line;

  auto question = v.FindMember("question");
  if (question == v.MemberEnd()) bad("missing \"question\"");
  if (!question->value.IsString()) bad("\"question\" must be a string");
  q.question = json_string(question->value);
  if (trim_ascii(q.question).empty()) bad("empty question");

  auto answers = v.FindMember("answers");
  const char* key = "answers";
  if (answers == v.MemberEnd()) {
    answers = v.FindMember("answer");
    key = "answer";
  }
  if (answers != v.MemberEnd()) {
    read_answers(answers->value, key, &q.answers);
    if (q.answers.empty() && options.require_answers) bad(quoted(key) + " is empty");
  } else if (options.require_answers) {
    bad("missing gold answers (\"answers\" or \"answer\")");
  }

  auto id = v.FindMember("id");
  if (id != v.MemberEnd()) {
    read_id(id->value, "\"id\"", &q.id, &q.numeric_id);
  } else {
    q.id = std::to_string(default_id);
    q.numeric_id = true;
  }

  auto ctxs = v.FindMember("ctxs");
  if (ctxs != v.MemberEnd()) q.ctxs = read_ctxs(ctxs->value);

  auto gold = v.FindMember("passage_id");
  if (gold != v.MemberEnd()) {
    bool numeric = false;
    read_id(gold->value, "\"passage_id\"", &q.gold_passage_id, &numeric);
  }
  return q;
}

Question read_json_line(std::string_view line, size_t line_no, const QuestionFileOptions& options) {
  check_utf8(line);
  rapidjson::Document doc;
  std::string error;
  if (!parse_json(line, &doc, &error)) bad(error);
  return read_question_object(doc, line_no, line_no, options);
}

// Appends one code point as UTF-8; false for surrogates and values past U+10FFFF.
bool append_utf8(uint32_t c, std::string* out) {
  if (c >= 0xD800 && c <= 0xDFFF) return false;
  if (c < 0x80) {
    out->push_back(static_cast<char>(c));
  } else if (c < 0x800) {
    out->push_back(static_cast<char>(0xC0 | (c >> 6)));
    out->push_back(static_cast<char>(0x80 | (c & 0x3F)));
  } else if (c < 0x10000) {
    out->push_back(static_cast<char>(0xE0 | (c >> 12)));
    out->push_back(static_cast<char>(0x80 | ((c >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (c & 0x3F)));
  } else if (c <= 0x10FFFF) {
    out->push_back(static_cast<char>(0xF0 | (c >> 18)));
    out->push_back(static_cast<char>(0x80 | ((c >> 12) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | ((c >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (c & 0x3F)));
  } else {
    return false;
  }
  return true;
}

// A Python list literal of str as repr() writes it (DPR's .csv question files):
// ['a', "b's", 'caf\xe9']. Returns nullopt when `s` is not one.
std::optional<std::vector<std::string>> parse_python_list(std::string_view s) {
  size_t i = 0;
  auto skip_ws = [&] {
    while (i < s.size() && (s[i] == ' ' || s[i] == '\t')) ++i;
  };
  auto hex_value = [&](size_t digits, uint32_t* out) {
    if (i + digits > s.size()) return false;
    uint32_t v = 0;
    for (size_t k = 0; k < digits; ++k) {
      const char c = s[i + k];
      v <<= 4;
      if (c >= '0' && c <= '9') {
        v |= static_cast<uint32_t>(c - '0');
      } else if (c >= 'a' && c <= 'f') {
        v |= static_cast<uint32_t>(c - 'a' + 10);
      } else if (c >= 'A' && c <= 'F') {
        v |= static_cast<uint32_t>(c - 'A' + 10);
      } else {
        return false;
      }
    }
    i += digits;
    *out = v;
    return true;
  };
  std::vector<std::string> items;
  skip_ws();
  if (i >= s.size() || s[i] != '[') return std::nullopt;
  ++i;
  skip_ws();
  if (i < s.size() && s[i] == ']') {
    ++i;
  } else {
    while (true) {
      skip_ws();
      if (i < s.size() && (s[i] == 'u' || s[i] == 'U')) ++i;  // Python 2 repr
      if (i >= s.size() || (s[i] != '\'' && s[i] != '"')) return std::nullopt;
      const char quote = s[i++];
      std::string item;
      while (true) {
        if (i >= s.size()) return std::nullopt;
        const char c = s[i++];
        if (c == quote) break;
        if (c != '\\') {
          item.push_back(c);
          continue;
        }
        if (i >= s.size()) return std::nullopt;
        const char e = s[i++];
        uint32_t cp = 0;
        switch (e) {
          case '\\':
            item.push_back('\\');
            break;
          case '\'':
            item.push_back('\'');
            break;
          case '"':
            item.push_back('"');
            break;
          case 'n':
            item.push_back('\n');
            break;
          case 't':
            item.push_back('\t');
            break;
          case 'r':
            item.push_back('\r');
            break;
          case 'a':
            item.push_back('\a');
            break;
          case 'b':
            item.push_back('\b');
            break;
          case 'f':
            item.push_back('\f');
            break;
          case 'v':
            item.push_back('\v');
            break;
          case 'x':
            if (!hex_value(2, &cp) || !append_utf8(cp, &item)) return std::nullopt;
            break;
          case 'u':
            if (!hex_value(4, &cp) || !append_utf8(cp, &item)) return std::nullopt;
            break;
          case 'U':
            if (!hex_value(8, &cp) || !append_utf8(cp, &item)) return std::nullopt;
            break;
          default:
            if (e >= '0' && e <= '7') {
              cp = static_cast<uint32_t>(e - '0');
              for (int k = 0; k < 2 && i < s.size() && s[i] >= '0' && s[i] <= '7'; ++k) {
                cp = cp * 8 + static_cast<uint32_t>(s[i++] - '0');
              }
              if (!append_utf8(cp, &item)) return std::nullopt;
            } else {
              // Python keeps unknown escapes as written.
              item.push_back('\\');
              item.push_back(e);
            }
        }
      }
      items.push_back(std::move(item));
      skip_ws();
      if (i < s.size() && s[i] == ',') {
        ++i;
        skip_ws();
        if (i < s.size() && s[i] == ']') {
          ++i;
          break;
        }
        continue;
      }
      if (i < s.size() && s[i] == ']') {
        ++i;
        break;
      }
      return std::nullopt;
    }
  }
  skip_ws();
  if (i != s.size()) return std::nullopt;
  return items;
}

std::vector<std::string> read_tsv_answers(std::string_view column) {
  const std::string_view t = trim_ascii(column);
  if (t.empty() || t.front() != '[') {
    bad("the answers column must be a list such as [\"Paris\"]");
  }
  rapidjson::Document doc;
  std::string json_error;
  if (parse_json(t, &doc, &json_error)) {
    if (!doc.IsArray()) bad("the answers column must be a list such as [\"Paris\"]");
    std::vector<std::string> out;
    read_answers(doc, "answers", &out);
    return out;
  }
  if (auto items = parse_python_list(t)) return *items;
  bad("the answers column is neither a JSON list of strings nor a Python list literal (" +
      json_error + ")");
}

std::optional<Question> read_tsv_line(std::string_view line, size_t line_no,
                                      const QuestionFileOptions& options) {
  check_utf8(line);
  std::vector<std::string_view> cols;
  size_t start = 0;
  while (true) {
    const size_t tab = line.find('\t', start);
    cols.push_back(line.substr(start, tab == std::string_view::npos ? tab : tab - start));
    if (tab == std::string_view::npos) break;
    start = tab + 1;
  }
  if (cols.size() > 2) {
    bad("expected 2 tab-separated columns (question, answers), found " +
        std::to_string(cols.size()));
  }
  if (line_no == 1 && cols.size() == 2 && lower_ascii(trim_ascii(cols[0])) == "question") {
    const std::string second = lower_ascii(trim_ascii(cols[1]));
    if (second == "answers" || second == "answer") return std::nullopt;  // header
  }
  Question q;
  q.line = line_no;
  q.id = std::to_string(line_no);
  q.numeric_id = true;
  q.question = std::string(cols[0]);
  if (trim_ascii(q.question).empty()) bad("empty question");
  if (cols.size() == 1) {
    if (options.require_answers) bad("missing the answers column (question TAB answers)");
  } else {
    q.answers = read_tsv_answers(cols[1]);
    if (q.answers.empty() && options.require_answers) bad("no gold answers");
  }
  return q;
}

// Offsets of the top-level elements of a JSON array that has already parsed successfully, so that
// errors can name the line an element starts on.
std::vector<size_t> array_element_offsets(std::string_view text) {
  std::vector<size_t> offsets;
  int depth = 0;
  bool in_string = false, escaped = false, expect = false;
  for (size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    if (in_string) {
      if (escaped) {
        escaped = false;
      } else if (c == '\\') {
        escaped = true;
      } else if (c == '"') {
        in_string = false;
      }
      continue;
    }
    if (c == ' ' || c == '\t' || c == '\n' || c == '\r') continue;
    if (depth == 1 && expect && c != ']') {
      offsets.push_back(i);
      expect = false;
    }
    if (c == '"') {
      in_string = true;
    } else if (c == '[' || c == '{') {
      if (++depth == 1) expect = true;
    } else if (c == ']' || c == '}') {
      --depth;
    } else if (c == ',' && depth == 1) {
      expect = true;
    }
  }
  return offsets;
}

size_t line_of_offset(std::string_view text, size_t offset) {
  return 1 + static_cast<size_t>(std::count(text.begin(), text.begin() + offset, '\n'));
}

// Collects questions and errors, enforcing id uniqueness (--resume relies on ids).
class Collector {
 public:
  Collector(const std::filesystem::path& path, const QuestionFileOptions& options)
      : file_(path.string()), options_(options) {}

  void add(Question q) {
    auto [it, inserted] = first_line_.emplace(q.id, q.line);
    if (!inserted) {
      error(q.line,
            "duplicate id \"" + q.id + "\" (first on line " + std::to_string(it->second) + ")");
      return;
    }
    set_.questions.push_back(std::move(q));
  }

  void error(size_t line, const std::string& what) {
    std::string msg = file_ + ":" + std::to_string(line) + ": " + what;
    if (!options_.skip_invalid) CEPE_THROW(msg);
    set_.errors.push_back(std::move(msg));
  }

  QuestionSet finish(QuestionFormat format) {
    set_.format = format;
    if (set_.questions.empty()) {
      if (set_.errors.empty()) CEPE_THROW(file_ << ": no questions");
      CEPE_THROW(file_ << ": no valid questions (" << set_.errors.size()
                       << " bad lines; the first: " << set_.errors.front() << ")");
    }
    return std::move(set_);
  }

 private:
  std::string file_;
  const QuestionFileOptions& options_;
  QuestionSet set_;
  std::unordered_map<std::string, size_t> first_line_;
};

}  // namespace

QuestionFormat parse_question_format(std::string_view name) {
  const std::string n = lower_ascii(name);
  if (n == "auto") return QuestionFormat::kAuto;
  if (n == "jsonl") return QuestionFormat::kJsonl;
  if (n == "json") return QuestionFormat::kJson;
  if (n == "tsv" || n == "csv") return QuestionFormat::kTsv;
  CEPE_THROW("unknown question file format '" << std::string(name)
                                              << "' (expected auto, jsonl, json or tsv)");
}

const char* question_format_name(QuestionFormat format) {
  switch (format) {
    case QuestionFormat::kAuto:
      return "auto";
    case QuestionFormat::kJsonl:
      return "jsonl";
    case QuestionFormat::kJson:
      return "json";
    case QuestionFormat::kTsv:
      return "tsv";
  }
  return "?";
}

QuestionFormat format_for_extension(const std::filesystem::path& path) {
  const std::string ext = lower_ascii(path.extension().string());
  if (ext == ".jsonl") return QuestionFormat::kJsonl;
  if (ext == ".json") return QuestionFormat::kJson;
  if (ext == ".tsv" || ext == ".csv") return QuestionFormat::kTsv;
  CEPE_THROW(path.string() << ": cannot tell the question file format from the extension '" << ext
                           << "' (expected .jsonl, .json, .tsv or .csv, or give the format)");
}

QuestionSet load_questions(const std::filesystem::path& path, const QuestionFileOptions& options) {
  QuestionFormat format =
      options.format == QuestionFormat::kAuto ? format_for_extension(path) : options.format;
  std::string content = read_whole_file(path, "question file");
  if (content.compare(0, 3, "\xEF\xBB\xBF") == 0) content.erase(0, 3);  // UTF-8 byte-order mark
  const std::string_view text(content);
  Collector out(path, options);

  if (format == QuestionFormat::kJson) {
    const size_t first = text.find_first_not_of(" \t\r\n");
    if (first != std::string_view::npos && text[first] == '[') {
      if (auto at = find_invalid_utf8(text)) {
        CEPE_THROW(path.string() << ":" << line_of_offset(text, *at) << ": invalid UTF-8");
      }
      rapidjson::Document doc;
      JsonError error;
      if (!parse_json(text, &doc, &error)) {
        // The offset counts from the start of the file; report the line and the column within it.
        const size_t at = error.offset;
        const size_t line_start = at == 0 ? 0 : text.rfind('\n', at - 1) + 1;
        CEPE_THROW(path.string() << ":" << line_of_offset(text, at) << ": invalid JSON: "
                                 << error.reason << " (at column " << at - line_start + 1 << ")");
      }
      const std::vector<size_t> offsets = array_element_offsets(text);
      for (rapidjson::SizeType i = 0; i < doc.Size(); ++i) {
        const size_t line = i < offsets.size() ? line_of_offset(text, offsets[i]) : 0;
        try {
          out.add(read_question_object(doc[i], line, i + 1, options));
        } catch (const BadLine& e) {
          out.error(line, "item " + std::to_string(i + 1) + ": " + e.what);
        }
      }
      return out.finish(QuestionFormat::kJson);
    }
    format = QuestionFormat::kJsonl;
  }

  size_t line_no = 0;
  size_t start = 0;
  while (start < text.size()) {
    size_t end = text.find('\n', start);
    if (end == std::string_view::npos) end = text.size();
    std::string_view line = text.substr(start, end - start);
    start = end + 1;
    ++line_no;
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    if (trim_ascii(line).empty()) continue;
    try {
      if (format == QuestionFormat::kTsv) {
        if (auto q = read_tsv_line(line, line_no, options)) out.add(std::move(*q));
      } else {
        out.add(read_json_line(line, line_no, options));
      }
    } catch (const BadLine& e) {
      out.error(line_no, e.what);
    }
  }
  return out.finish(format);
}

}  // namespace cepe::qa
