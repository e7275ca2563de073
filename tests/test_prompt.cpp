// The QA prompt templates: CEPE's default layout, custom numbered templates, and template errors.
#include <gtest/gtest.h>

#include "common/error.h"
#include "qa/prompt.h"

namespace {

using cepe::qa::Passage;
using cepe::qa::PromptBuilder;
using cepe::qa::PromptFormat;

Passage passage(std::string id, std::string title, std::string text) {
  Passage p;
  p.id = std::move(id);
  p.title = std::move(title);
  p.text = std::move(text);
  return p;
}

std::string error_of(const PromptFormat& format) {
  try {
    PromptBuilder b(format);
  } catch (const cepe::Error& e) {
    return e.message();
  }
  return "";
}

TEST(QaPrompt, DefaultIsCepesOpenDomainQaPrompt) {
  const PromptBuilder b;
  const std::vector<Passage> ps = {passage("1", "Eiffel Tower", "The tower is in Paris."),
                                   passage("2", "", "Untitled text.")};
  EXPECT_EQ(b.render("where is the eiffel tower", ps),
            "Document (Title: Eiffel Tower): The tower is in Paris.\n\n"
            "Document: Untitled text.\n\n"
            "Question: where is the eiffel tower\nAnswer:");
  // Closed book: no passages, no blank lines.
  EXPECT_EQ(b.render("who?", {}), "Question: who?\nAnswer:");
  EXPECT_EQ(b.render_passage(ps[0], 0),
            "Document (Title: Eiffel Tower): The tower is in Paris.\n\n");
}

TEST(QaPrompt, CepeInstruction) {
  PromptFormat f;
  f.instruction = cepe::qa::kCepeInstruction;
  const PromptBuilder b(f);
  EXPECT_EQ(b.render("q", {passage("1", "T", "x")}),
            "Document (Title: T): x\n\n"
            "Instruction: Use the document(s) to write an accurate and concise answer to the "
            "question.\n\nQuestion: q\nAnswer:");
}

TEST(QaPrompt, NumberedCustomTemplate) {
  PromptFormat f;
  f.question_template = "{passages}\n\nQ: {question}\nA:";
  f.passage_template = "[{idx}] {title} ({id})\n{text}";
  f.untitled_passage_template = "";  // untitled passages use passage_template too
  f.passage_separator = "\n\n";
  const PromptBuilder b(f);
  EXPECT_EQ(b.render("q?", {passage("w1", "A", "a"), passage("w2", "", "b")}),
            "[1] A (w1)\na\n\n[2]  (w2)\nb\n\nQ: q?\nA:");
}

TEST(QaPrompt, BracesAndValuesAreLiteral) {
  PromptFormat f;
  f.question_template = "{{literal}} {question} }}{{";
  const PromptBuilder b(f);
  EXPECT_EQ(b.render("what is {passages}?", {}), "{literal} what is {passages}? }{");
  // Passage text is not expanded either.
  EXPECT_EQ(PromptBuilder().render("q", {passage("1", "{title}", "{text}")}),
            "Document (Title: {title}): {text}\n\nQuestion: q\nAnswer:");
}

TEST(QaPrompt, TemplateErrorsNameTheProblem) {
  PromptFormat f;
  f.question_template = "{question} {foo} {bar} {foo}";
  EXPECT_EQ(error_of(f),
            "unknown placeholders {foo}, {bar} in the prompt template (known: {question}, "
            "{passages}, {instruction})");
  f.question_template = "{Question}";
  EXPECT_EQ(error_of(f),
            "unknown placeholder {Question} in the prompt template (known: {question}, "
            "{passages}, {instruction})");
  f.question_template = "{}{question}";
  EXPECT_EQ(error_of(f),
            "unknown placeholder {} in the prompt template (known: {question}, {passages}, "
            "{instruction})");
  f.question_template = "Q: {question";
  EXPECT_EQ(error_of(f),
            "unmatched '{' at column 4 of the prompt template (write {{ for a literal brace)");
  f.question_template = "Q: {question} }";
  EXPECT_EQ(error_of(f),
            "unmatched '}' at column 15 of the prompt template (write }} for a literal brace)");
  f.question_template = "{passages}Answer:";
  EXPECT_EQ(error_of(f), "the prompt template has no {question}");

  f = PromptFormat();
  f.passage_template = "{title}: {text} ({score})";
  EXPECT_EQ(error_of(f),
            "unknown placeholder {score} in the passage template (known: {title}, {text}, {id}, "
            "{idx})");
  f = PromptFormat();
  f.untitled_passage_template = "{question}";
  EXPECT_EQ(error_of(f),
            "unknown placeholder {question} in the untitled passage template (known: {title}, "
            "{text}, {id}, {idx})");
}

TEST(QaPrompt, EncoderChunks) {
  EXPECT_EQ(cepe::qa::encoder_chunk_text(passage("1", "Zürich", "A city.")),
            "Document (Title: Zürich): A city.");
  EXPECT_EQ(cepe::qa::encoder_chunk_text(passage("1", "", "No title.")), "Document: No title.");
  EXPECT_EQ(cepe::qa::encoder_chunk_text(
                std::vector<Passage>{passage("1", "A", "a"), passage("2", "B", "b")}),
            "Document (Title: A): a\n\nDocument (Title: B): b");
  EXPECT_EQ(cepe::qa::encoder_chunk_text(std::vector<Passage>{}), "");
}

TEST(QaPrompt, UnescapeForCommandLines) {
  EXPECT_EQ(cepe::qa::unescape_template("Q: {question}\\nA:\\t\\\\n \\x"),
            "Q: {question}\nA:\t\\n \\x");
  EXPECT_EQ(cepe::qa::unescape_template("trailing\\"), "trailing\\");
}

}  // namespace
