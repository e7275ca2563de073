// LLaMA's sentencepiece tokenizer, with BOS/EOS as HuggingFace's LlamaTokenizer adds them, and
// streaming detokenisation that only ever emits whole UTF-8 characters.
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

namespace sentencepiece {
class SentencePieceProcessor;
}

namespace cepe {

/// Sentencepiece tokenizer loaded from a `tokenizer.model` file.
class Tokenizer {
 public:
  /// Loads the model; throws naming the file when it is missing or not a sentencepiece model.
  explicit Tokenizer(const std::filesystem::path& model_file);
  ~Tokenizer();

  /// Token ids of `text`; prepends BOS when `add_bos` (as LlamaTokenizer does by default).
  std::vector<int32_t> encode(const std::string& text, bool add_bos = true) const;
  /// Text of `ids` (BOS/EOS and other control tokens dropped, byte pieces joined into UTF-8).
  std::string decode(const std::vector<int32_t>& ids) const;
  /// Surface string of one piece ("▁the", "<0x0A>").
  std::string piece(int32_t id) const;
  /// Number of pieces.
  int32_t vocab_size() const;
  /// Id of the beginning-of-sequence token.
  int32_t bos_id() const;
  /// Id of the end-of-sequence token.
  int32_t eos_id() const;

 private:
  std::unique_ptr<sentencepiece::SentencePieceProcessor> sp_;
};

/// Turns a stream of token ids into text pieces, never splitting a UTF-8 character.
/// Decodes the whole sequence each step (as HuggingFace's TextStreamer does) so that
/// sentencepiece's leading-space and byte-fallback rules are applied exactly.
class StreamDecoder {
 public:
  /// Streams text for ids produced after `prompt_ids` (whose text is never emitted).
  StreamDecoder(const Tokenizer& tokenizer, std::vector<int32_t> prompt_ids = {});
  /// Adds one generated id; returns the newly completed text (possibly empty).
  std::string push(int32_t id);
  /// Returns what remains held back (an incomplete UTF-8 tail is emitted as U+FFFD).
  std::string flush();
  /// All generated text so far, including held-back bytes.
  std::string text() const;

 private:
  const Tokenizer& tokenizer_;
  std::vector<int32_t> ids_;
  size_t prefix_len_ = 0;    // ids of the prompt, decoded only for context
  size_t prefix_chars_ = 0;  // bytes of text belonging to the prompt
  size_t emitted_ = 0;       // bytes of generated text already returned
};

/// Length of the longest prefix of `s` that ends on a complete UTF-8 character boundary.
size_t utf8_complete_prefix(const std::string& s);

}  // namespace cepe
