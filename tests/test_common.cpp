// The bottom layer (common/). Its error type: every error names the source line that raised it,
// relative to the project root wherever the checkout and the build sit, so that messages read the
// same on every machine and point into the tree; what errors quote from their input stays one
// line. The JSON reader's edge cases, and a process's figures read from procfs.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdio>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <functional>
#include <regex>
#include <string>
#include <vector>

#include "common/error.h"
#include "common/fileio.h"
#include "common/json.h"
#include "common/system.h"
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

// The procfs parser on a fake tree: a command name with spaces and parentheses must not shift
// the fields of /proc/PID/stat.
TEST(ProcessStats, ReadsStatusStatLimitsAndFds) {
  namespace fs = std::filesystem;
  const fs::path proc = cepe::test::temp_dir("process_stats") / "proc";
  const fs::path dir = proc / "4242";
  fs::create_directories(dir / "fd");
  for (const char* fd : {"0", "1", "2"}) std::ofstream(dir / "fd" / fd);
  std::ofstream(dir / "status") << "Name:\tcepe\nVmPeak:\t  900 kB\nVmSize:\t  800 kB\n"
                                   "VmHWM:\t  300 kB\nVmRSS:\t  200 kB\nThreads:\t5\n";
  // Fields 14, 15 and 22: utime 250, stime 150 and starttime 1000 clock ticks.
  std::string stat = "4242 (a (b) c) S";
  for (int n = 4; n <= 30; ++n)
    stat.append(" ").append(std::to_string(n == 14 ? 250 : n == 15 ? 150 : n == 22 ? 1000 : n));
  std::ofstream(dir / "stat") << stat << "\n";
  std::ofstream(proc / "stat") << "cpu  1 2 3\nbtime 1700000000\nprocesses 9\n";
  std::ofstream(dir / "limits")
      << "Limit                     Soft Limit           Hard Limit  Units\n"
         "Max open files            1024                 4096        files\n";
  const cepe::ProcessStats st =
      cepe::process_stats(4242, cepe::SystemRoots{proc.string(), "/nonexistent"});
  EXPECT_EQ(st.resident_bytes, 200u * 1024);
  EXPECT_EQ(st.peak_resident_bytes, 300u * 1024);
  EXPECT_EQ(st.virtual_bytes, 800u * 1024);
  const double ticks = static_cast<double>(sysconf(_SC_CLK_TCK));
  EXPECT_DOUBLE_EQ(st.cpu_seconds, 400 / ticks);
  EXPECT_DOUBLE_EQ(st.start_time_unix, 1700000000 + 1000 / ticks);
  EXPECT_EQ(st.open_fds, 3);
  EXPECT_EQ(st.max_fds, 1024);
  // A process that is gone reads as zeros.
  const cepe::ProcessStats none =
      cepe::process_stats(99999999, cepe::SystemRoots{proc.string(), "/nonexistent"});
  EXPECT_EQ(none.resident_bytes, 0u);
  EXPECT_EQ(none.open_fds, 0);
}

// This process's figures move with what it does.
TEST(ProcessStats, FollowThisProcess) {
  const cepe::ProcessStats before = cepe::process_stats();
  EXPECT_GT(before.resident_bytes, 0u);
  EXPECT_GE(before.peak_resident_bytes, before.resident_bytes);
  EXPECT_GE(before.virtual_bytes, before.resident_bytes);
  const double now = static_cast<double>(std::time(nullptr));
  EXPECT_LE(before.start_time_unix, now + 1);
  EXPECT_GT(before.start_time_unix, now - 24 * 3600.0);  // started by this test run
  EXPECT_GT(before.max_fds, before.open_fds);
  // 64 MB written: that much more resident.
  std::vector<char> block(64 << 20);
  for (size_t i = 0; i < block.size(); i += 4096) block[i] = static_cast<char>(i);
  FILE* f = std::fopen("/proc/self/stat", "r");
  ASSERT_NE(f, nullptr);
  // CPU time: spin for 50 ms of it (clock() is this process's CPU time).
  const std::clock_t spin = std::clock();
  volatile double sink = 0;
  while (std::clock() - spin < CLOCKS_PER_SEC / 20) sink = sink + 1;
  const cepe::ProcessStats after = cepe::process_stats();
  std::fclose(f);
  EXPECT_GE(after.resident_bytes, before.resident_bytes + (60u << 20));
  EXPECT_GE(after.open_fds, before.open_fds + 1);
  EXPECT_GE(after.cpu_seconds, before.cpu_seconds + 0.04);
  EXPECT_DOUBLE_EQ(after.start_time_unix, before.start_time_unix);
  EXPECT_EQ(block[4096], static_cast<char>(4096));
}

}  // namespace
