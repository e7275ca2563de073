// The LLaMA tokenizer on what clients send and what models generate. Two promises are checked:
// after a prompt encoded from text, streamed text (StreamDecoder's pieces) is exactly the
// generated part of decode(prompt + ids), never splitting a UTF-8 character, for any ids a model
// could sample; and any text encodes to ids in range. The tokenizer is ../shared's LLaMA-2
// tokenizer.model (or the file CEPE_FUZZ_TOKENIZER names); without it the target does nothing and
// says so once.
#include <memory>
#include <vector>

#include "common/utf8.h"
#include "engine/tokenizer.h"
#include "tests/fuzz/fuzz_util.h"

using namespace cepe;

namespace {

const Tokenizer* tokenizer() {
  static const std::unique_ptr<Tokenizer> tok = []() -> std::unique_ptr<Tokenizer> {
    const std::filesystem::path file = fuzz::shared_tokenizer("fuzz_tokenizer");
    return file.empty() ? nullptr : std::make_unique<Tokenizer>(file);
  }();
  return tok.get();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const Tokenizer* tok = tokenizer();
  if (!tok || size == 0) return 0;
  const int32_t vocab = tok->vocab_size();

  // The prompt is text, encoded as requests are (the first byte says how many of the next bytes,
  // and whether BOS leads); the generated ids follow, two bytes each, small ids (control and byte
  // pieces, where UTF-8 is assembled) made likely.
  const size_t prompt_bytes = std::min<size_t>(data[0] % 16, size - 1);
  const std::vector<int32_t> prompt_ids =
      tok->encode(sanitize_utf8(fuzz::as_text(data + 1, prompt_bytes)), data[0] & 0x10);
  std::vector<int32_t> ids = prompt_ids;
  for (size_t i = 1 + prompt_bytes; i + 1 < size; i += 2) {
    const int32_t raw = data[i] | (data[i + 1] << 8);
    ids.push_back(raw & 0x8000 ? (raw & 0x7fff) % vocab : (raw & 0xff) % vocab);
  }
  StreamDecoder stream(*tok, prompt_ids);
  std::string streamed;
  for (size_t i = prompt_ids.size(); i < ids.size(); ++i) {
    const std::string piece = stream.push(ids[i]);
    if (utf8_complete_prefix(piece) != piece.size())
      fuzz::fail("a streamed piece ends inside a UTF-8 character");
    streamed += piece;
  }
  streamed += stream.flush();
  if (streamed != stream.text()) fuzz::fail("streamed pieces differ from the decoder's text()");
  const std::string whole = tok->decode(ids), before = tok->decode(prompt_ids);
  if (whole.compare(0, before.size(), before) != 0 || whole.substr(before.size()) != streamed)
    fuzz::fail("streamed text differs from the generated part of decode(prompt + ids)");

  // Text: the bytes themselves, repaired (requests are UTF-8 checked before they get here).
  const std::string text = sanitize_utf8(fuzz::as_text(data, size));
  for (int32_t id : tok->encode(text))
    if (id < 0 || id >= vocab) fuzz::fail("encode gave an id out of range");
  return 0;
}
