// Text from clients, files and models, through the code that cleans, splits and scores it: UTF-8
// repair, JSON string writing, SQuAD answer normalisation and F1, and BERT's WordPiece tokenizer.
// Every output that later becomes JSON or a token must be valid UTF-8, and the scores must be
// what their definitions allow (an answer matches itself; F1 lies in [0, 1]).
#include <cmath>
#include <string>
#include <vector>

#include "common/json.h"
#include "common/utf8.h"
#include "qa/scoring.h"
#include "retriever/wordpiece.h"
#include "tests/fuzz/fuzz_util.h"

using namespace cepe;

namespace {

const retriever::WordPiece& tokenizer() {
  static const retriever::WordPiece wp({"[PAD]", "[UNK]", "[CLS]", "[SEP]", "the", "a", "##s",
                                        "##ing", "run", "x", "##x", ".", ",", "é", "中", "##é"},
                                       retriever::WordPieceOptions{});
  return wp;
}

void check_utf8(const std::string& what, std::string_view s) {
  size_t bad = 0;
  if (!utf8_valid(s, &bad)) fuzz::fail(what + " is not valid UTF-8 at byte " + std::to_string(bad));
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view text = fuzz::as_text(data, size);

  // UTF-8 repair and the pieces around it.
  const std::string clean = sanitize_utf8(text);
  check_utf8("sanitize_utf8's output", clean);
  if (utf8_valid(text) != (clean == text)) fuzz::fail("sanitize_utf8 changed valid text");
  if (find_invalid_utf8(text).has_value() == utf8_valid(text))
    fuzz::fail("find_invalid_utf8 and utf8_valid disagree");
  const size_t prefix = utf8_complete_prefix(text);
  if (prefix > text.size()) fuzz::fail("utf8_complete_prefix past the end");
  size_t pos = 0, steps = 0;
  while (pos < text.size()) {
    const size_t before = pos;
    utf8_next(text, &pos);
    if (pos <= before || pos > text.size()) fuzz::fail("utf8_next did not advance within the text");
    ++steps;
  }
  if (utf8_valid(text) && steps != utf8_length(text)) fuzz::fail("utf8_length miscounts");

  // JSON string writing: any text becomes a string that parses back to its repaired form.
  rapidjson::StringBuffer buffer;
  rapidjson::Writer<rapidjson::StringBuffer> writer(buffer);
  write_json_text(writer, text);
  rapidjson::Document doc;
  std::string error;
  if (!parse_json(std::string_view(buffer.GetString(), buffer.GetSize()), &doc, &error) ||
      !doc.IsString() || json_string(doc) != clean)
    fuzz::fail("write_json_text did not round-trip: " + error);

  // Answer scoring: the text split at its first NUL into prediction and gold.
  const size_t nul = text.find('\0');
  const std::string_view prediction = text.substr(0, nul);
  const std::string_view gold = nul == std::string_view::npos ? text : text.substr(nul + 1);
  fuzz::expect_clean([&] {
    check_utf8("normalize_answer's output", qa::normalize_answer(clean));
    if (!qa::exact_match(prediction, prediction)) fuzz::fail("an answer does not match itself");
    for (auto rule : {qa::F1Rule::kCepe, qa::F1Rule::kSquad}) {
      const double f1 = qa::token_f1(prediction, gold, rule);
      if (!(f1 >= 0.0 && f1 <= 1.0)) fuzz::fail("F1 outside [0, 1]");
    }
    qa::score_answer(prediction, {std::string(gold), std::string(prediction)});
    qa::substring_match(prediction, gold);
  });

  // WordPiece: words and pieces are valid UTF-8, encode keeps its length bound.
  const auto& wp = tokenizer();
  fuzz::expect_clean([&] {
    for (const auto& w : wp.basic_tokenize(text)) check_utf8("a basic_tokenize word", w);
    for (const auto& p : wp.tokenize(text)) check_utf8("a WordPiece piece", p);
    const size_t max_tokens = 2 + size % 30;
    const auto ids = wp.encode(text, max_tokens);
    if (ids.size() < 2 || ids.size() > max_tokens) fuzz::fail("encode broke its length bound");
    for (int32_t id : ids)
      if (id < 0 || id >= static_cast<int32_t>(wp.size())) fuzz::fail("id out of range");
  });
  return 0;
}
