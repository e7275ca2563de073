// The bottom layer's error type: every error names the source line that raised it, relative to
// the project root wherever the checkout and the build sit, so that messages read the same on
// every machine and point into the tree; and what errors quote from their input stays one line.
#include <gtest/gtest.h>

#include <functional>
#include <regex>
#include <string>

#include "common/error.h"
#include "common/fileio.h"
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

}  // namespace
