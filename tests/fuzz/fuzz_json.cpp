// The JSON reader every file and request goes through: any bytes either parse, within the depth
// limit, or fail with a one-line message; never a stack overflow on deep nesting.
#include "common/json.h"
#include "tests/fuzz/fuzz_util.h"

using namespace cepe;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const int max_depth = 1 + data[0] % 80;
  const auto comments = data[0] & 0x80 ? JsonComments::Allowed : JsonComments::Rejected;
  const std::string_view text = fuzz::as_text(data + 1, size - 1);
  rapidjson::Document doc;
  std::string error;
  const bool parsed = parse_json(text, &doc, &error, max_depth, comments);
  if (parsed) {
    if (comments == JsonComments::Rejected && json_nesting_depth(text, max_depth + 1) > max_depth)
      fuzz::fail("a document deeper than the limit parsed");
  } else if (error.empty() || error.find('\n') != std::string::npos) {
    fuzz::fail("parse error message empty or not one line: '" + error + "'");
  }
  if (fuzz::expect_clean([&] { parse_json_or_throw(text, &doc, "fuzz", max_depth, comments); }) !=
      parsed)
    fuzz::fail("parse_json and parse_json_or_throw disagree");
  return 0;
}
