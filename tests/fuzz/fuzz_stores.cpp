// The files an index directory holds beside the FAISS index: the passage store (passages.bin)
// and the encoder store (encoder_states/*.bin). Either may be truncated, stale or damaged on disk;
// opening one checks its header and offsets, so every row it then hands out lies inside the
// mapping. The first byte picks the format.
#include <vector>

#include "index/encoder_store.h"
#include "index/passage_store.h"
#include "tests/fuzz/fuzz_util.h"

using namespace cepe;

namespace {

// Rows read per input: enough to reach the last rows of any file the fuzzer grows.
constexpr uint64_t kRowsRead = 64;

void read_passages(const std::filesystem::path& path) {
  const index::PassageStore store(path);
  for (uint64_t row = 0; row < store.size() && row < kRowsRead; ++row) {
    const auto p = store.get(row);
    for (std::string_view s : {p.id, p.title, p.text}) {
      volatile unsigned char sink = 0;  // every byte of the view is read
      for (char c : s) sink = sink + static_cast<unsigned char>(c);
    }
  }
  if (store.size() > kRowsRead) store.get(store.size() - 1);
  if (fuzz::expect_clean([&] { store.get(store.size()); }))  // past the end: an error, not a read
    fuzz::fail("the passage row past the end was read");
  store.verify();
}

void read_encoder_states(const std::filesystem::path& path) {
  const index::EncoderStore store(path);
  const int64_t token_values = store.fingerprint().token_values();
  std::vector<float> row;
  for (uint64_t r = 0; r < store.size() && r < kRowsRead; ++r) {
    const uint64_t values = uint64_t{store.tokens(r)} * static_cast<uint64_t>(token_values);
    if (values > (uint64_t{1} << 24)) fuzz::fail("a row larger than its file was accepted");
    row.resize(values);
    store.read(r, row.data());
  }
  store.find("p1", 3, 0);
  if (fuzz::expect_clean([&] { store.tokens(store.size()); }))
    fuzz::fail("the encoder row past the end was read");
  store.verify();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const std::string_view bytes = fuzz::as_text(data + 1, size - 1);
  if (data[0] % 2 == 0) {
    const auto path = fuzz::write_input(bytes, "passages.bin");
    fuzz::expect_clean([&] { read_passages(path); });
  } else {
    const auto path = fuzz::write_input(bytes, "encoder_states.bin");
    fuzz::expect_clean([&] { read_encoder_states(path); });
  }
  return 0;
}
