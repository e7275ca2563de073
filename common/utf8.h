// UTF-8 validation, decoding and repair: the one UTF-8 decoder of the project (corpus ingestion,
// tokenizers, scoring, JSON, logs and HTTP all use it).
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace cepe {

/// True when `s` is well-formed UTF-8 (no overlongs, surrogates or code points past U+10FFFF);
/// otherwise `bad_offset` (when given) receives the byte offset of the first bad sequence.
bool utf8_valid(std::string_view s, size_t* bad_offset = nullptr);

/// Decodes the code point at `*pos` and advances past it; a malformed byte decodes as U+FFFD and
/// advances by one, so callers never loop forever on bad input.
char32_t utf8_next(std::string_view s, size_t* pos);

/// Appends the UTF-8 encoding of `cp`.
void utf8_append(std::string* out, char32_t cp);
/// Byte offset of the first byte that is not part of valid UTF-8, or nullopt when all of it is.
std::optional<size_t> find_invalid_utf8(std::string_view s);
/// `s` with every malformed sequence replaced by U+FFFD (valid input is returned unchanged).
std::string sanitize_utf8(std::string_view s);
/// Length of the longest prefix of `s` that ends on a code-point boundary (an incomplete
/// multi-byte sequence at the end is left for the next piece of a stream).
size_t utf8_complete_prefix(std::string_view s);

}  // namespace cepe
