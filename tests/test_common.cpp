// The bottom layer's error type: every error names the source line that raised it, relative to
// the project root wherever the checkout and the build sit, so that messages read the same on
// every machine and point into the tree; and what errors quote from their input stays one line.
#include <gtest/gtest.h>

#include <functional>
#include <regex>
#include <string>

#include "common/error.h"
#include "common/fileio.h"
#include "common/json.h"
#include "common/utf8.h"
#include "engine/quant.h"
#include "test_util.h"

namespace {

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const cepe::Error& e) {
    return e.what();
  }
  return "";
}

TEST(Error, NamesTheSourceLineRelativeToTheProjectRoot) {
  const struct {
    const char* layer;
    std::function<void()> raise;
    const char* location;
  } cases[] = {
      {"common", [] { cepe::read_whole_file("/nonexistent/file", "test input"); },
       R"(\[common/fileio\.cpp:[0-9]+\]$)"},
      {"engine", [] { cepe::parse_weight_kind("f33", "--weights"); },
       R"(\[engine/quant\.cpp:[0-9]+\]$)"},
  };
  for (const auto& c : cases) {
    const std::string msg = error_of(c.raise);
    EXPECT_TRUE(std::regex_search(msg, std::regex(c.location))) << c.layer << ": " << msg;
    EXPECT_EQ(msg.find(cepe::test::source_dir().string()), std::string::npos) << msg;
  }
}

TEST(Quoted, KeepsAMessageOnOneShortLine) {
  using cepe::quoted_input;
  EXPECT_EQ(quoted_input("max_tokens"), "'max_tokens'");
  EXPECT_EQ(quoted_input("Köln 東京"), "'Köln 東京'");  // printable text as it is
  EXPECT_EQ(quoted_input(std::string("a\nb\tc\rd\0e", 9)), R"('a\nb\tc\rd\0e')");
  EXPECT_EQ(quoted_input("\x01\x7f\xc2\x85"), R"('\x01\x7F\x85')");  // C0, DEL, C1 (NEL)
  EXPECT_EQ(quoted_input("a\u2028b"), R"('a\u2028b')");              // line separator
  EXPECT_EQ(quoted_input("\xff\xc3"), "'\uFFFD\uFFFD'");             // invalid UTF-8 replaced
  EXPECT_EQ(quoted_input("abcdef", 3), "'abc...'");
  EXPECT_EQ(quoted_input("abc", 3), "'abc'");
  EXPECT_EQ(quoted_input(""), "''");
}

TEST(Json, StringsFromEscapesAreValidUtf8) {
  rapidjson::Document doc;
  std::string error;
  // A lone low surrogate escape would decode to bytes that are not UTF-8 (RapidJSON 1.1.0 lets
  // it through); the error names the escape and its column.
  EXPECT_FALSE(cepe::parse_json(R"({"q": "ab\uDE0E"})", &doc, &error));
  EXPECT_NE(error.find("\\uDE0E"), std::string::npos) << error;
  EXPECT_NE(error.find("column 10"), std::string::npos) << error;
  EXPECT_FALSE(cepe::parse_json(R"(["\uDC00\uD83D\uDE00"])", &doc, &error));  // low before high
  // What stays valid: a whole pair, an escaped backslash before "uDC00", and quotes and
  // escape-like text inside comments.
  ASSERT_TRUE(cepe::parse_json(R"(["\uD83D\uDE00", "\\uDC00"])", &doc, &error)) << error;
  EXPECT_EQ(cepe::json_string(doc[0]), "\U0001F600");
  EXPECT_EQ(cepe::json_string(doc[1]), "\\uDC00");
  EXPECT_TRUE(cepe::parse_json("{ // say \"hi\n \"a\": /* \" \\uDC00 */ \"\\u00e9\"}", &doc, &error,
                               cepe::kJsonMaxDepth, cepe::JsonComments::Allowed))
      << error;
  EXPECT_EQ(cepe::json_string(doc["a"]), "é");
}

TEST(Json, ANulByteEndsNothing) {
  // RapidJSON takes a NUL for the end of the text; what follows it must not be ignored.
  rapidjson::Document doc;
  std::string error;
  EXPECT_FALSE(cepe::parse_json(std::string("{\"a\": 1}\0{", 9), &doc, &error));
  EXPECT_EQ(error, "invalid JSON: a NUL byte (at column 9)");
  EXPECT_FALSE(cepe::parse_json(std::string("[\"a\0b\"]", 7), &doc, &error));
  ASSERT_TRUE(cepe::parse_json(R"(["a\u0000b"])", &doc, &error)) << error;
  EXPECT_EQ(cepe::json_string(doc[0]), std::string("a\0b", 3));
}

}  // namespace
