// UTF-8 validation and decoding, shared by corpus ingestion and the tokenizers.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace cepe::index {

/// True when `s` is well-formed UTF-8 (no overlongs, surrogates or code points past U+10FFFF);
/// otherwise `bad_offset` (when given) receives the byte offset of the first bad sequence.
bool utf8_valid(std::string_view s, size_t* bad_offset = nullptr);

/// Decodes the code point at `*pos` and advances past it; a malformed byte decodes as U+FFFD and
/// advances by one, so callers never loop forever on bad input.
char32_t utf8_next(std::string_view s, size_t* pos);

/// Appends the UTF-8 encoding of `cp`.
void utf8_append(std::string* out, char32_t cp);

}  // namespace cepe::index
