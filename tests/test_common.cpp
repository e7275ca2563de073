// The bottom layer's error type: every error names the source line that raised it, relative to
// the project root wherever the checkout and the build sit, so that messages read the same on
// every machine and point into the tree.
#include <gtest/gtest.h>

#include <functional>
#include <regex>
#include <string>

#include "common/error.h"
#include "common/fileio.h"
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

}  // namespace
