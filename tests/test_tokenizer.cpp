// The LLaMA tokenizer against sentencepiece's own golden encodings, streaming detokenisation
// (never a split UTF-8 character, same text as a one-shot decode) and bad model files.
#include <gtest/gtest.h>
#include <rapidjson/document.h>

#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "common/error.h"
#include "common/utf8.h"
#include "engine/tokenizer.h"
#include "tests/test_util.h"

namespace {

using cepe::StreamDecoder;
using cepe::Tokenizer;

struct GoldenCase {
  std::string text;
  std::vector<int32_t> ids;  // without BOS
  std::vector<std::string> pieces;
};

std::vector<GoldenCase> load_golden(const std::filesystem::path& file) {
  rapidjson::Document doc;
  const std::string json = cepe::test::read_file(file);
  doc.Parse(json.c_str(), json.size());
  EXPECT_FALSE(doc.HasParseError()) << file;
  std::vector<GoldenCase> cases;
  if (doc.HasParseError() || !doc.HasMember("cases")) return cases;
  for (const auto& c : doc["cases"].GetArray()) {
    GoldenCase g;
    g.text.assign(c["text"].GetString(), c["text"].GetStringLength());
    for (const auto& id : c["ids_without_bos"].GetArray()) g.ids.push_back(id.GetInt());
    for (const auto& p : c["pieces"].GetArray())
      g.pieces.emplace_back(p.GetString(), p.GetStringLength());
    cases.push_back(std::move(g));
  }
  return cases;
}

// Strict UTF-8 validity (no overlongs, surrogates or code points past U+10FFFF).
bool valid_utf8(const std::string& s) {
  size_t i = 0;
  const auto* p = reinterpret_cast<const unsigned char*>(s.data());
  while (i < s.size()) {
    const unsigned char b = p[i];
    size_t n;
    uint32_t cp;
    if (b < 0x80) {
      ++i;
      continue;
    } else if (b >= 0xC2 && b <= 0xDF) {
      n = 2, cp = b & 0x1F;
    } else if (b >= 0xE0 && b <= 0xEF) {
      n = 3, cp = b & 0x0F;
    } else if (b >= 0xF0 && b <= 0xF4) {
      n = 4, cp = b & 0x07;
    } else {
      return false;
    }
    if (i + n > s.size()) return false;
    for (size_t k = 1; k < n; ++k) {
      if ((p[i + k] & 0xC0) != 0x80) return false;
      cp = (cp << 6) | (p[i + k] & 0x3F);
    }
    if ((n == 3 && cp < 0x800) || (n == 4 && (cp < 0x10000 || cp > 0x10FFFF)) ||
        (cp >= 0xD800 && cp <= 0xDFFF))
      return false;
    i += n;
  }
  return true;
}

// Streams `gen` after `prompt`, checking every piece; returns the concatenation plus flush.
std::string stream_all(const Tokenizer& tok, const std::vector<int32_t>& prompt,
                       const std::vector<int32_t>& gen,
                       std::vector<std::string>* pieces = nullptr) {
  StreamDecoder dec(tok, prompt);
  std::string out;
  for (int32_t id : gen) {
    const std::string piece = dec.push(id);
    EXPECT_TRUE(valid_utf8(piece)) << "piece for id " << id << " is not whole UTF-8";
    EXPECT_EQ(cepe::utf8_complete_prefix(piece), piece.size());
    if (pieces) pieces->push_back(piece);
    out += piece;
  }
  const std::string rest = dec.flush();
  EXPECT_TRUE(valid_utf8(rest));
  if (pieces) pieces->push_back(rest);
  out += rest;
  EXPECT_EQ(dec.text(), out);
  return out;
}

std::vector<int32_t> concat(std::vector<int32_t> a, const std::vector<int32_t>& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}

const char* const kLlamaTokenizer = "models/llama2-tokenizer/tokenizer.model";
const char* const kGolden = "models/llama2-tokenizer/expected_ids.json";

TEST(Tokenizer, GoldenIdsMatchSentencepiece) {
  CEPE_REQUIRE_SHARED(kGolden, golden);
  const Tokenizer tok(golden.parent_path() / "tokenizer.model");
  const auto cases = load_golden(golden);
  ASSERT_GE(cases.size(), 10u);
  for (const auto& c : cases) {
    SCOPED_TRACE("text: \"" + c.text + "\"");
    EXPECT_EQ(tok.encode(c.text, /*add_bos=*/false), c.ids);
    // LlamaTokenizer prepends BOS and nothing else.
    EXPECT_EQ(tok.encode(c.text), concat({1}, c.ids));
    ASSERT_EQ(c.pieces.size(), c.ids.size());
    for (size_t i = 0; i < c.ids.size(); ++i) EXPECT_EQ(tok.piece(c.ids[i]), c.pieces[i]) << i;
    EXPECT_EQ(tok.decode(c.ids), c.text);
    EXPECT_EQ(tok.decode(concat({1}, concat(c.ids, {2}))), c.text) << "BOS/EOS must not show";
  }
}

TEST(Tokenizer, VocabularyAndSpecialIds) {
  CEPE_REQUIRE_SHARED(kLlamaTokenizer, model);
  const Tokenizer tok(model);
  EXPECT_EQ(tok.vocab_size(), 32000);
  EXPECT_EQ(tok.bos_id(), 1);
  EXPECT_EQ(tok.eos_id(), 2);
  EXPECT_EQ(tok.piece(13), "<0x0A>");
  EXPECT_TRUE(tok.is_byte(13));
  EXPECT_EQ(tok.byte_value(13), 0x0A);
  EXPECT_EQ(tok.byte_value(3 + 0xF0), 0xF0);
  EXPECT_FALSE(tok.is_byte(306));
  EXPECT_EQ(tok.byte_value(306), -1);
  EXPECT_TRUE(tok.is_control(1));
  EXPECT_TRUE(tok.is_unknown(0));
  EXPECT_EQ(tok.encode(""), std::vector<int32_t>{1});
  EXPECT_TRUE(tok.encode("", false).empty());
  EXPECT_EQ(tok.decode({}), "");
}

TEST(Tokenizer, OutOfRangeIdsAreErrors) {
  CEPE_REQUIRE_SHARED(kLlamaTokenizer, model);
  const Tokenizer tok(model);
  EXPECT_THROW(tok.decode({1, 32000}), cepe::Error);
  EXPECT_THROW(tok.decode({-1}), cepe::Error);
  EXPECT_THROW(tok.piece(40000), cepe::Error);
  StreamDecoder dec(tok, {1});
  EXPECT_THROW(dec.push(32000), cepe::Error);
  EXPECT_EQ(dec.push(306), "I") << "a rejected id must leave the stream usable";
}

TEST(StreamDecoder, GoldenCasesStreamToTheOneShotDecode) {
  CEPE_REQUIRE_SHARED(kGolden, golden);
  const Tokenizer tok(golden.parent_path() / "tokenizer.model");
  for (const auto& c : load_golden(golden)) {
    SCOPED_TRACE("text: \"" + c.text + "\"");
    EXPECT_EQ(stream_all(tok, {1}, c.ids), tok.decode(c.ids));
    EXPECT_EQ(stream_all(tok, {}, c.ids), tok.decode(c.ids));
    // After a prompt the generated text keeps its leading space, as decode(prompt + ids) does.
    const auto prompt = tok.encode("Answer:");
    const std::string whole = tok.decode(concat(prompt, c.ids));
    EXPECT_EQ(stream_all(tok, prompt, c.ids), whole.substr(tok.decode(prompt).size()));
  }
}

TEST(StreamDecoder, EmojiIsHeldUntilComplete) {
  CEPE_REQUIRE_SHARED(kLlamaTokenizer, model);
  const Tokenizer tok(model);
  // "🦙" is ▁ <0xF0> <0x9F> <0xA6> <0x99>; nothing may come out before the last byte.
  std::vector<std::string> pieces;
  EXPECT_EQ(stream_all(tok, {1}, {29871, 243, 162, 169, 156, 237, 156, 141}, &pieces),
            "\xF0\x9F\xA6\x99\xEA\x99\x8A");
  const std::vector<std::string> expected = {
      "", "", "", "", "\xF0\x9F\xA6\x99", "", "", "\xEA\x99\x8A", ""};
  EXPECT_EQ(pieces, expected);
}

TEST(StreamDecoder, LeadingSpaceFollowsTheContext) {
  CEPE_REQUIRE_SHARED(kLlamaTokenizer, model);
  const Tokenizer tok(model);
  const auto paris = tok.encode("Paris", false);
  ASSERT_EQ(paris.size(), 1u);
  ASSERT_EQ(tok.piece(paris[0]), "\xE2\x96\x81Paris");
  StreamDecoder after_bos(tok, {1});
  EXPECT_EQ(after_bos.push(paris[0]), "Paris");
  StreamDecoder after_prompt(tok, tok.encode("Question: what is the capital of France?\nAnswer:"));
  EXPECT_EQ(after_prompt.push(paris[0]), " Paris");
  EXPECT_EQ(after_prompt.push(29889), ".");
  EXPECT_EQ(after_prompt.text(), " Paris.");
}

TEST(StreamDecoder, IncompleteTailIsFlushedAsReplacementCharacters) {
  CEPE_REQUIRE_SHARED(kLlamaTokenizer, model);
  const Tokenizer tok(model);
  StreamDecoder dec(tok, {1});
  EXPECT_EQ(dec.push(306), "I");
  EXPECT_EQ(dec.push(243), "");  // <0xF0>
  EXPECT_EQ(dec.push(162), "");  // <0x9F>
  EXPECT_EQ(dec.text(), tok.decode({306, 243, 162}).c_str());
  const std::string rest = dec.flush();
  EXPECT_EQ(rest, tok.decode({1, 306, 243, 162}).substr(1));
  EXPECT_NE(rest.find("\xEF\xBF\xBD"), std::string::npos) << "U+FFFD expected";
  EXPECT_TRUE(valid_utf8(rest));
  EXPECT_EQ(dec.flush(), "");
}

TEST(StreamDecoder, BrokenByteRunsComeOutAsTheyDecode) {
  CEPE_REQUIRE_SHARED(kLlamaTokenizer, model);
  const Tokenizer tok(model);
  // A stray continuation byte can never be completed, so it is not held back; a lead byte cut
  // short by a normal piece turns into U+FFFD as soon as that piece arrives.
  StreamDecoder dec(tok, {1, 306});
  EXPECT_EQ(dec.push(3 + 0x9F), "\xEF\xBF\xBD");
  EXPECT_EQ(dec.push(3 + 0xE2), "");
  EXPECT_EQ(dec.push(4658), "\xEF\xBF\xBD believe");
  EXPECT_EQ(dec.flush(), "");
}

TEST(StreamDecoder, PromptEndingMidCharacterLetsGenerationFinishIt) {
  CEPE_REQUIRE_SHARED(kLlamaTokenizer, model);
  const Tokenizer tok(model);
  StreamDecoder dec(tok, {1, 306, 29871, 243, 162});
  EXPECT_EQ(dec.push(169), "");
  EXPECT_EQ(dec.push(156), "\xF0\x9F\xA6\x99");
}

TEST(StreamDecoder, RandomSequencesMatchTheOneShotDecode) {
  CEPE_REQUIRE_SHARED(kLlamaTokenizer, model);
  const Tokenizer tok(model);
  std::mt19937 rng(1234);
  const std::vector<std::string> words = {
      "the",          " cat", "\n",  "\xE9\x95\x87",       "  ", "\t", "\xF0\x9F\x98\x81",
      "\xEA\x99\x8A", "é",    "ok.", " \xF0\x9F\xA6\x99x", "Z"};
  for (int trial = 0; trial < 200; ++trial) {
    std::string prompt_text, gen_text;
    for (int i = 0; i < 6; ++i) prompt_text += words[rng() % words.size()];
    for (int i = 0; i < 12; ++i) gen_text += words[rng() % words.size()];
    std::vector<int32_t> prompt = tok.encode(prompt_text);
    std::vector<int32_t> gen = tok.encode(gen_text, false);
    // Sprinkle raw bytes and control ids so broken UTF-8 and BOS/EOS are exercised too.
    for (int i = 0; i < 3; ++i) {
      const int32_t id =
          rng() % 4 == 0 ? static_cast<int32_t>(rng() % 3) : static_cast<int32_t>(3 + rng() % 256);
      gen.insert(gen.begin() + rng() % (gen.size() + 1), id);
    }
    SCOPED_TRACE("trial " + std::to_string(trial));
    const std::string whole = tok.decode(concat(prompt, gen));
    const std::string prompt_part = tok.decode(prompt);
    ASSERT_EQ(whole.compare(0, prompt_part.size(), prompt_part), 0);
    EXPECT_EQ(stream_all(tok, prompt, gen), whole.substr(prompt_part.size()));
  }
}

// token_bytes (what log-probabilities list per token): "▁" is a space, byte pieces their byte,
// control pieces their name. Joined over generated ids without control pieces and with each byte
// that makes no character read as U+FFFD, they are the text the stream decoder emits.
TEST(Tokenizer, TokenBytesJoinToTheGeneratedText) {
  CEPE_REQUIRE_SHARED(kLlamaTokenizer, model);
  const Tokenizer tok(model);
  const auto the = tok.encode("the", false);  // "▁the" (sentencepiece adds the word marker)
  ASSERT_EQ(the.size(), 1u);
  EXPECT_EQ(tok.token_bytes(the[0]), " the");
  EXPECT_EQ(tok.token_bytes(3 + 0x0A), "\n");
  EXPECT_EQ(tok.token_bytes(3 + 0xE9), "\xE9");
  EXPECT_EQ(tok.token_bytes(tok.eos_id()), "</s>");
  EXPECT_EQ(tok.token_bytes(0), " \xE2\x81\x87 ");  // <unk> decodes as " ⁇ "
  std::mt19937 rng(99);
  for (int trial = 0; trial < 300; ++trial) {
    SCOPED_TRACE("trial " + std::to_string(trial));
    const std::vector<int32_t> prompt = tok.encode("Question: where?");
    std::vector<int32_t> gen;
    std::string joined;
    for (int i = 0; i < 16; ++i) {
      // Ordinary pieces, byte pieces (which may or may not form characters) and <unk>.
      const int kind = static_cast<int>(rng() % 4);
      const int32_t id = kind == 0   ? static_cast<int32_t>(3 + rng() % 256)
                         : kind == 1 ? 0
                                     : static_cast<int32_t>(259 + rng() % (tok.vocab_size() - 259));
      gen.push_back(id);
      joined += tok.token_bytes(id);
    }
    EXPECT_EQ(cepe::sanitize_utf8(joined), stream_all(tok, prompt, gen));
  }
}

TEST(Utf8, CompletePrefix) {
  using cepe::utf8_complete_prefix;
  EXPECT_EQ(utf8_complete_prefix(""), 0u);
  EXPECT_EQ(utf8_complete_prefix("abc"), 3u);
  EXPECT_EQ(utf8_complete_prefix("a\xC3"), 1u);
  EXPECT_EQ(utf8_complete_prefix("a\xC3\xA9"), 3u);
  EXPECT_EQ(utf8_complete_prefix("a\xE2\x82"), 1u);
  EXPECT_EQ(utf8_complete_prefix("\xE2\x82\xAC"), 3u);
  EXPECT_EQ(utf8_complete_prefix("\xF0\x9F\xA6"), 0u);
  EXPECT_EQ(utf8_complete_prefix("\xF0\x9F\xA6\x99"), 4u);
  EXPECT_EQ(utf8_complete_prefix("x\xF0\x9F\xA6\x99\xF0"), 5u);
  // Bytes no continuation can complete are not held back.
  EXPECT_EQ(utf8_complete_prefix("\x80"), 1u);
  EXPECT_EQ(utf8_complete_prefix("a\xFF"), 2u);
  EXPECT_EQ(utf8_complete_prefix("a\xC0"), 2u);
  EXPECT_EQ(utf8_complete_prefix("\x80\x80\x80\x80\x80"), 5u);
}

TEST(Tokenizer, MissingFileIsNamed) {
  const auto dir = cepe::test::temp_dir("tok");
  try {
    Tokenizer tok(dir / "nope.model");
    FAIL() << "expected an error";
  } catch (const cepe::Error& e) {
    EXPECT_NE(std::string(e.what()).find("nope.model"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("no such file"), std::string::npos) << e.what();
  }
  std::filesystem::remove_all(dir);
}

TEST(Tokenizer, GarbageFileIsNotAModel) {
  const auto dir = cepe::test::temp_dir("tok");
  static const char kGarbage[] = "\xff\xfe this is not a protobuf \x00\x01\x02\x03";
  const std::vector<std::pair<std::string, std::string>> files = {
      {"garbage.model", std::string(kGarbage, sizeof kGarbage - 1)},
      {"empty.model", ""},
      {"text.model", "{\"model\": \"not sentencepiece\"}\n"}};
  for (const auto& [name, content] : files) {
    std::ofstream(dir / name, std::ios::binary) << content;
    try {
      Tokenizer tok(dir / name);
      ADD_FAILURE() << name << ": expected an error";
    } catch (const cepe::Error& e) {
      EXPECT_NE(std::string(e.what()).find(name), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find("not a sentencepiece model"), std::string::npos)
          << e.what();
    }
  }
  EXPECT_THROW(Tokenizer tok(dir), cepe::Error) << "a directory is not a model";
  std::filesystem::remove_all(dir);
}

}  // namespace
