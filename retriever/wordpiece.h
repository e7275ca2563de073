// BERT's WordPiece tokenizer with HuggingFace BertTokenizer semantics: the basic tokenizer (text
// cleanup, CJK characters split off, lower-casing and accent stripping, punctuation split), then
// greedy longest-match-first WordPiece with "##" continuations and [UNK] for unmatched words.
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace cepe::retriever {

/// Settings of the basic tokenizer and WordPiece (tokenizer_config.json's names).
struct WordPieceOptions {
  bool lower_case = true;              ///< do_lower_case: str.lower() every word
  std::optional<bool> strip_accents;   ///< strip_accents; unset: follows lower_case
  bool tokenize_chinese_chars = true;  ///< tokenize_chinese_chars: CJK ideographs alone
  int max_input_chars_per_word = 100;  ///< longer words become [UNK]
  std::string unk_token = "[UNK]";     ///< unknown-word token
  std::string cls_token = "[CLS]";     ///< first token of every encoded text
  std::string sep_token = "[SEP]";     ///< last token of every encoded text
  int64_t model_max_length = 0;        ///< model_max_length (0: none given)
};

/// A WordPiece vocabulary with the tokenizer settings that go with it. Immutable, thread-safe.
class WordPiece {
 public:
  /// Reads `dir`/vocab.txt and, when present, `dir`/tokenizer_config.json; throws naming the file.
  static WordPiece load(const std::filesystem::path& dir);
  /// A tokenizer over `vocab` (token i has id i); throws when a special token is missing.
  WordPiece(std::vector<std::string> vocab, WordPieceOptions options);

  /// The basic tokenizer's words (cleaned, split, lower-cased and accent-stripped as configured).
  std::vector<std::string> basic_tokenize(std::string_view text) const;
  /// WordPiece strings of `text` (no [CLS]/[SEP]).
  std::vector<std::string> tokenize(std::string_view text) const;
  /// [CLS] ids [SEP], truncated to at most `max_tokens` ids in all (>= 2).
  std::vector<int32_t> encode(std::string_view text, size_t max_tokens) const;
  /// Id of a token, or -1 when it is not in the vocabulary.
  int32_t id(std::string_view token) const;
  /// Token of an id (throws when out of range).
  const std::string& token(int32_t id) const;
  /// Vocabulary size.
  int32_t size() const { return static_cast<int32_t>(vocab_.size()); }
  /// Settings in use.
  const WordPieceOptions& options() const { return options_; }
  /// Id of the unknown-word token.
  int32_t unk_id() const { return unk_id_; }
  /// Id of the [CLS] token.
  int32_t cls_id() const { return cls_id_; }
  /// Id of the [SEP] token.
  int32_t sep_id() const { return sep_id_; }

 private:
  void wordpiece(const std::string& word, std::vector<int32_t>* ids) const;

  std::vector<std::string> vocab_;
  std::unordered_map<std::string, int32_t> ids_;
  WordPieceOptions options_;
  int32_t unk_id_ = -1, cls_id_ = -1, sep_id_ = -1;
};

}  // namespace cepe::retriever
