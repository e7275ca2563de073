// The JSON reader every file and request goes through: any bytes either parse, within the depth
// limit, or fail with a one-line message; never a stack overflow on deep nesting.
#include <algorithm>

#include "common/json.h"
#include "tests/fuzz/fuzz_util.h"

using namespace cepe;

namespace {

// Nesting of a parsed value (a scalar 0, [] 1); the parse bounds the recursion.
int depth_of(const rapidjson::Value& v) {
  int deepest = 0;
  if (v.IsArray())
    for (const auto& e : v.GetArray()) deepest = std::max(deepest, depth_of(e));
  else if (v.IsObject())
    for (const auto& m : v.GetObject()) deepest = std::max(deepest, depth_of(m.value));
  else
    return 0;
  return deepest + 1;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const int max_depth = 1 + data[0] % 80;
  const auto comments = data[0] & 0x80 ? JsonComments::Allowed : JsonComments::Rejected;
  const std::string_view text = fuzz::as_text(data + 1, size - 1);
  rapidjson::Document doc;
  std::string error;
  const bool parsed = parse_json(text, &doc, &error, max_depth, comments);
  if (parsed) {
    // The pre-parse scan sees exactly the document's brackets (not those in strings or comments).
    const int depth = depth_of(doc);
    if (depth > max_depth) fuzz::fail("a document deeper than the limit parsed");
    if (json_nesting_depth(text, max_depth + 1) != depth)
      fuzz::fail("json_nesting_depth differs from the parsed document's depth");
  } else if (error.empty() || error.find('\n') != std::string::npos) {
    fuzz::fail("parse error message empty or not one line: '" + error + "'");
  }
  if (fuzz::expect_clean([&] { parse_json_or_throw(text, &doc, "fuzz", max_depth, comments); }) !=
      parsed)
    fuzz::fail("parse_json and parse_json_or_throw disagree");
  return 0;
}
