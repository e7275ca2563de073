#include "qa/prompt.h"

#include <algorithm>

#include "common/error.h"
#include "common/utf8.h"

namespace cepe::qa {

namespace {

using Piece = PromptBuilder::Piece;

enum QuestionField { kQuestion, kPassages, kInstruction };
const std::vector<std::string> kQuestionFields = {"question", "passages", "instruction"};

enum PassageField { kTitle, kText, kId, kIdx };
const std::vector<std::string> kPassageFields = {"title", "text", "id", "idx"};

std::string known_list(const std::vector<std::string>& names) {
  std::string out;
  for (const std::string& n : names) out += (out.empty() ? "{" : ", {") + n + "}";
  return out;
}

// Collects every unknown placeholder before failing so that one error lists them all.
std::vector<Piece> parse_template(std::string_view tmpl, const std::vector<std::string>& names,
                                  const char* what) {
  std::vector<Piece> pieces;
  std::vector<std::string> unknown;
  std::string literal;
  auto flush = [&] {
    if (!literal.empty()) pieces.push_back(Piece{false, 0, std::move(literal)});
    literal.clear();
  };
  for (size_t i = 0; i < tmpl.size(); ++i) {
    const char c = tmpl[i];
    if (c == '}') {
      if (i + 1 < tmpl.size() && tmpl[i + 1] == '}') {
        literal.push_back('}');
        ++i;
        continue;
      }
      CEPE_THROW("unmatched '}' at column " << i + 1 << " of the " << what
                                            << " (write }} for a literal brace)");
    }
    if (c != '{') {
      literal.push_back(c);
      continue;
    }
    if (i + 1 < tmpl.size() && tmpl[i + 1] == '{') {
      literal.push_back('{');
      ++i;
      continue;
    }
    const size_t close = tmpl.find_first_of("{}", i + 1);
    if (close == std::string_view::npos || tmpl[close] != '}') {
      CEPE_THROW("unmatched '{' at column " << i + 1 << " of the " << what
                                            << " (write {{ for a literal brace)");
    }
    const std::string name(tmpl.substr(i + 1, close - i - 1));
    auto it = std::find(names.begin(), names.end(), name);
    if (it == names.end()) {
      if (std::find(unknown.begin(), unknown.end(), name) == unknown.end()) unknown.push_back(name);
    } else {
      flush();
      pieces.push_back(Piece{true, static_cast<int>(it - names.begin()), {}});
    }
    i = close;
  }
  flush();
  if (!unknown.empty()) {
    std::string list;
    for (const std::string& n : unknown)
      list += (list.empty() ? "{" : ", {") + escaped_input(n) + "}";
    CEPE_THROW("unknown placeholder" << (unknown.size() > 1 ? "s " : " ") << list << " in the "
                                     << what << " (known: " << known_list(names) << ")");
  }
  return pieces;
}

bool has_field(const std::vector<Piece>& pieces, int field) {
  return std::any_of(pieces.begin(), pieces.end(),
                     [&](const Piece& p) { return p.is_field && p.field == field; });
}

std::string chunk_text(const Passage& p) {
  return p.title.empty() ? "Document: " + p.text : "Document (Title: " + p.title + "): " + p.text;
}

}  // namespace

PromptBuilder::PromptBuilder(PromptFormat format) : format_(std::move(format)) {
  question_ = parse_template(format_.question_template, kQuestionFields, "prompt template");
  if (!has_field(question_, kQuestion)) CEPE_THROW("the prompt template has no {question}");
  passage_ = parse_template(format_.passage_template, kPassageFields, "passage template");
  untitled_ = format_.untitled_passage_template.empty()
                  ? passage_
                  : parse_template(format_.untitled_passage_template, kPassageFields,
                                   "untitled passage template");
}

std::string PromptBuilder::render_passage(const Passage& passage, size_t index) const {
  std::string out;
  for (const Piece& piece : passage.title.empty() ? untitled_ : passage_) {
    if (!piece.is_field) {
      out += piece.text;
      continue;
    }
    switch (piece.field) {
      case kTitle:
        out += passage.title;
        break;
      case kText:
        out += passage.text;
        break;
      case kId:
        out += passage.id;
        break;
      case kIdx:
        out += std::to_string(index + 1);
        break;
    }
  }
  return out;
}

std::string PromptBuilder::render(std::string_view question,
                                  const std::vector<Passage>& passages) const {
  std::string rendered_passages;
  for (size_t i = 0; i < passages.size(); ++i) {
    if (i > 0) rendered_passages += format_.passage_separator;
    rendered_passages += render_passage(passages[i], i);
  }
  std::string out;
  for (const Piece& piece : question_) {
    if (!piece.is_field) {
      out += piece.text;
      continue;
    }
    switch (piece.field) {
      case kQuestion:
        out += question;
        break;
      case kPassages:
        out += rendered_passages;
        break;
      case kInstruction:
        out += format_.instruction;
        break;
    }
  }
  return out;
}

std::string encoder_chunk_text(const Passage& passage) {
  return chunk_text(passage);
}

std::string encoder_chunk_text(const std::vector<Passage>& passages) {
  std::string out;
  for (size_t i = 0; i < passages.size(); ++i) {
    if (i > 0) out += "\n\n";
    out += chunk_text(passages[i]);
  }
  return out;
}

std::string unescape_template(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  for (size_t i = 0; i < text.size(); ++i) {
    if (text[i] == '\\' && i + 1 < text.size()) {
      const char n = text[i + 1];
      if (n == 'n' || n == 't' || n == '\\') {
        out.push_back(n == 'n' ? '\n' : n == 't' ? '\t' : '\\');
        ++i;
        continue;
      }
    }
    out.push_back(text[i]);
  }
  return out;
}

}  // namespace cepe::qa
