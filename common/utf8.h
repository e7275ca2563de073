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

/// Decodes the code point at `*pos` into `*cp` and advances past it; a malformed byte returns
/// false and advances by one (callers decide what stands for it).
bool utf8_decode(std::string_view s, size_t* pos, char32_t* cp);
/// Number of code points of valid UTF-8 `s` (bytes that are not continuation bytes).
size_t utf8_length(std::string_view s);
/// Appends the UTF-8 encoding of `cp`.
void utf8_append(std::string* out, char32_t cp);
/// Byte offset of the first byte that is not part of valid UTF-8, or nullopt when all of it is.
std::optional<size_t> find_invalid_utf8(std::string_view s);
/// `s` with every malformed sequence replaced by U+FFFD (valid input is returned unchanged).
std::string sanitize_utf8(std::string_view s);
/// `s` as an error message shows a name or value it did not choose (a JSON field, a header, a
/// file's key): control characters escaped (\n, \t, \x01), invalid UTF-8 replaced by U+FFFD,
/// and at most `max_chars` code points ("..." marks the cut), so the message stays one short
/// line whatever the input held.
std::string escaped_input(std::string_view s, size_t max_chars = 64);
/// escaped_input(s, max_chars) in single quotes.
std::string quoted_input(std::string_view s, size_t max_chars = 64);
/// Length of the longest prefix of `s` that does not end inside an unfinished UTF-8 character
/// (a lead byte followed by fewer continuation bytes than it announces). Invalid bytes are not
/// held back: no later byte could complete them.
size_t utf8_complete_prefix(std::string_view s);

}  // namespace cepe
