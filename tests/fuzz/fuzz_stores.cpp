// The files an index directory holds beside the FAISS index: the passage store (passages.bin)
// and the encoder store (encoder_states/*.bin). Either may be truncated, stale or damaged on disk;
// opening one checks its header and offsets, so every row it then hands out lies inside the
// mapping. The first byte picks the format (bit 0) and whether the header's checksums are
// recomputed over the mutated bytes (bit 1): both headers are checksummed, so without that most
// mutations of a header field stop at the checksum and never reach the check of the field itself.
#include <cstring>
#include <string>
#include <vector>

#include "common/hash.h"
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

// Writes hash64(bytes [begin, end), seed) at `end`, as the store writers sign their headers; the
// offsets and seeds are the on-disk formats' (index/passage_store.cpp, index/encoder_store.cpp).
void sign(std::string& bytes, size_t begin, size_t end, uint64_t seed) {
  if (bytes.size() < end + 8) return;
  const uint64_t sum = hash64(std::string_view(bytes).substr(begin, end - begin), seed);
  std::memcpy(bytes.data() + end, &sum, sizeof sum);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  std::string bytes(fuzz::as_text(data + 1, size - 1));
  const bool resign = data[0] & 2;
  if (data[0] % 2 == 0) {
    if (resign) sign(bytes, 0, 56, 0x48445221);  // passage store: header_checksum
    const auto path = fuzz::write_input(bytes, "passages.bin");
    fuzz::expect_clean([&] { read_passages(path); });
  } else {
    if (resign) {
      sign(bytes, 0, 112, 0x454e4348);    // encoder store: header_checksum
      sign(bytes, 120, 152, 0x45585432);  // and the version 2 extension's
    }
    const auto path = fuzz::write_input(bytes, "encoder_states.bin");
    fuzz::expect_clean([&] { read_encoder_states(path); });
  }
  return 0;
}
