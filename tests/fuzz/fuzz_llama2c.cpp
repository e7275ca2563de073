// Legacy llama2.c files that `cepe convert llama2c` reads: the checkpoint header (seven int32
// fields that decide how many bytes of weights must follow) and the tokenizer .bin (scores and
// length-prefixed pieces). Lengths and counts come from the file; none may be trusted.
#include "engine/llama2c.h"
#include "tests/fuzz/fuzz_util.h"

using namespace cepe;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const std::string_view bytes = fuzz::as_text(data + 1, size - 1);
  if (data[0] & 1) {
    const auto path = fuzz::write_input(bytes, "model.bin");
    fuzz::expect_clean([&] { read_llama2c_header(path); });
  } else {
    const auto path = fuzz::write_input(bytes, "tokenizer.bin");
    fuzz::expect_clean([&] { llama2c_tokenizer_to_sentencepiece(path, 1 + data[0] / 2); });
  }
  return 0;
}
