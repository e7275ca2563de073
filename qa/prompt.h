// The QA prompt: a small template engine and the default template of CEPE's open-domain QA
// evaluation (NQ, TriviaQA, PopQA), where each decoder passage is rendered as
//   Document (Title: <title>): <text>
// the passages are joined by blank lines, and the question follows as
//   Question: <question>\nAnswer:
// CEPE's instruction line is off by default there (use_instruction: false); kCepeInstruction has
// it.
//
// Templates hold placeholders `{name}`; `{{` and `}}` stand for literal braces. The question
// template knows {question}, {passages} and {instruction}; passage templates know {title}, {text},
// {id} and {idx} (1-based rank). Any other placeholder is an error that names it.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>
#include <vector>

#include "qa/passage.h"

namespace cepe::qa {

/// CEPE's QA instruction, for PromptFormat::instruction.
inline constexpr char kCepeInstruction[] =
    "Instruction: Use the document(s) to write an accurate and concise answer to the question.\n\n";

/// The templates a prompt is built from; the defaults reproduce CEPE's QA prompt.
struct PromptFormat {
  /// The whole prompt. {passages} expands to every rendered passage.
  std::string question_template = "{passages}{instruction}Question: {question}\nAnswer:";
  /// One passage with a title; its trailing blank line separates it from what follows.
  std::string passage_template = "Document (Title: {title}): {text}\n\n";
  /// One passage without a title (CEPE's include_title: false form); "" means passage_template.
  std::string untitled_passage_template = "Document: {text}\n\n";
  /// Inserted between rendered passages (the default templates end in their own separator).
  std::string passage_separator;
  /// Text for {instruction}; "" as in CEPE's QA configuration.
  std::string instruction;
};

/// Renders prompts from a validated PromptFormat.
class PromptBuilder {
 public:
  /// Parses and checks every template; throws cepe::Error naming unknown placeholders, unmatched
  /// braces, or a question template without {question}.
  explicit PromptBuilder(PromptFormat format = {});

  /// The prompt for `question` with `passages` (in rank order) in the decoder.
  std::string render(std::string_view question, const std::vector<Passage>& passages) const;
  /// One passage as it appears in the prompt; `index` is 0-based ({idx} shows index + 1).
  std::string render_passage(const Passage& passage, size_t index) const;
  /// The format this builder was made from.
  const PromptFormat& format() const { return format_; }

  /// A parsed template: literal text and placeholder slots.
  struct Piece {
    bool is_field = false;  ///< true: `field` is a placeholder index; false: `text` is literal
    int field = 0;          ///< index of the placeholder among the template's known names
    std::string text;       ///< literal text
  };

 private:
  PromptFormat format_;
  std::vector<Piece> question_;
  std::vector<Piece> passage_;
  std::vector<Piece> untitled_;
};

/// A passage as the text of one encoder chunk: "Document (Title: <title>): <text>", or
/// "Document: <text>" without a title, as CEPE formats the documents it moves to the encoder.
std::string encoder_chunk_text(const Passage& passage);

/// Several passages packed into one encoder chunk, joined by blank lines as CEPE does.
std::string encoder_chunk_text(const std::vector<Passage>& passages);

/// Turns the escapes \n, \t and \\ into their characters, for templates given on a command line;
/// any other backslash is kept.
std::string unescape_template(std::string_view text);

}  // namespace cepe::qa
