// LLaMA's sentencepiece tokenizer, with BOS/EOS as HuggingFace's LlamaTokenizer adds them, and
// streaming detokenisation that only ever emits whole UTF-8 characters.
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "engine/config.h"

namespace sentencepiece {
class SentencePieceProcessor;
}

namespace cepe {

/// Sentencepiece tokenizer loaded from a `tokenizer.model` file.
class Tokenizer {
 public:
  /// Loads the model; throws naming the file when it is missing or not a sentencepiece model.
  explicit Tokenizer(const std::filesystem::path& model_file);
  /// Defined where SentencePieceProcessor is a complete type.
  ~Tokenizer();
  /// Not copyable: stream decoders keep a reference to the tokenizer they were given.
  Tokenizer(const Tokenizer&) = delete;
  /// Not copyable either way.
  Tokenizer& operator=(const Tokenizer&) = delete;

  /// Token ids of `text`; prepends BOS when `add_bos` (as LlamaTokenizer does by default).
  std::vector<int32_t> encode(const std::string& text, bool add_bos = true) const;
  /// Text of `ids` (BOS/EOS and other control tokens dropped, byte pieces joined into UTF-8).
  std::string decode(const std::vector<int32_t>& ids) const;
  /// Surface string of one piece ("▁the", "<0x0A>").
  std::string piece(int32_t id) const;
  /// The bytes one piece stands for, as listed with log-probabilities: "▁" as a space, a byte
  /// piece as its one byte (possibly part of a UTF-8 character), the unknown piece as decode()
  /// renders it (" ⁇ "), control pieces as their name ("</s>"), since they decode to nothing.
  std::string token_bytes(int32_t id) const;
  /// Number of pieces.
  int32_t vocab_size() const;
  /// Id of the beginning-of-sequence token.
  int32_t bos_id() const;
  /// Id of the end-of-sequence token.
  int32_t eos_id() const;
  /// True for byte-fallback pieces (`<0x41>`).
  bool is_byte(int32_t id) const;
  /// True for control pieces (`<s>`, `</s>`), which decode to nothing.
  bool is_control(int32_t id) const;
  /// True for the unknown piece (`<unk>`), which decodes to " ⁇ ".
  bool is_unknown(int32_t id) const;
  /// The byte a byte-fallback piece stands for, or -1 for any other piece.
  int byte_value(int32_t id) const;
  /// Path the model was loaded from (for error messages).
  const std::filesystem::path& path() const { return path_; }

 private:
  void check_id(int32_t id) const;

  std::filesystem::path path_;
  std::unique_ptr<sentencepiece::SentencePieceProcessor> sp_;
  std::vector<int16_t> byte_of_;  // byte value per id, -1 for pieces that are not bytes
};

/// Loads `model_dir`/tokenizer.model and checks it against the model's config (config.json)
/// before any weight is read: a tokenizer with more pieces than the model has embedding rows
/// would feed it ids past them, and a wrong pairing should not wait for a multi-gigabyte load.
std::unique_ptr<Tokenizer> load_model_tokenizer(const std::filesystem::path& model_dir,
                                                const ModelConfig& config);

/// Turns a stream of token ids into text pieces, never splitting a UTF-8 character.
/// Decodes the whole sequence each step (as HuggingFace's TextStreamer does) so that
/// sentencepiece's leading-space and byte-fallback rules are applied exactly: the concatenation
/// of everything push() and flush() return equals the generated part of decode(prompt + ids).
class StreamDecoder {
 public:
  /// Streams text for ids produced after `prompt_ids` (whose text is never emitted). The
  /// tokenizer must outlive the decoder.
  StreamDecoder(const Tokenizer& tokenizer, std::vector<int32_t> prompt_ids = {});
  /// Adds one generated id; returns the newly completed text (possibly empty).
  std::string push(int32_t id);
  /// Returns what remains held back (an incomplete UTF-8 tail is emitted as U+FFFD).
  std::string flush();
  /// All generated text so far as decode() renders it (an incomplete tail as U+FFFD).
  std::string text() const;

 private:
  // Number of trailing ids that are byte pieces forming an unfinished UTF-8 character.
  size_t incomplete_byte_tail() const;

  const Tokenizer& tokenizer_;
  std::vector<int32_t> ids_;  // prompt context (possibly trimmed) followed by generated ids
  size_t prefix_chars_ = 0;   // bytes of decoded text belonging to the prompt context
  size_t emitted_ = 0;        // bytes of generated text already returned
};

}  // namespace cepe
