// BM25 over any text: a corpus passage is indexed with the analyzer (tokenizer, stemmer, stop
// words) that later reads questions, and Xapian refuses some terms (longer than 245 bytes) and
// throws its own error types. The input, split at its first NUL into passage and question, is
// indexed as a one-passage database and then searched; both must succeed or fail with a
// cepe::Error, and a question equal to the passage must find it unless it has no terms.
#include <filesystem>
#include <vector>

#include "retriever/bm25.h"
#include "tests/fuzz/fuzz_util.h"

using namespace cepe;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view text = fuzz::as_text(data, size);
  const size_t nul = text.find('\0');
  const std::string_view passage = text.substr(0, nul);
  const std::string question(nul == std::string_view::npos ? passage : text.substr(nul + 1));
  const auto file = fuzz::write_input("", "bm25.xapian");
  std::filesystem::remove(file);
  const retriever::Bm25Config config;
  fuzz::expect_clean([&] {
    {
      retriever::Bm25Writer writer(file, config);
      writer.add(0, "", passage);
      writer.finish();
    }
    const retriever::Bm25Searcher searcher({file.string()}, config);
    std::vector<int64_t> rows;
    std::vector<float> scores;
    searcher.search(question, 3, &rows, &scores);
    if (rows.size() != scores.size() || rows.size() > 1) fuzz::fail("search returned bad rows");
    for (int64_t row : rows)
      if (row != 0) fuzz::fail("search returned a row the database does not hold");
    if (nul == std::string_view::npos && !searcher.query_terms(question).empty() && rows.empty())
      fuzz::fail("a passage's own text does not find it");
  });
  return 0;
}
