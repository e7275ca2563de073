#include "common/utf8.h"

#include <cstdio>

namespace cepe {

namespace {
// Length of the sequence at s[i] and its code point, or 0 when malformed (RFC 3629 table).
size_t decode(std::string_view s, size_t i, char32_t* cp) {
  const auto b = [&](size_t k) { return static_cast<unsigned char>(s[i + k]); };
  const size_t n = s.size() - i;
  const unsigned char c = b(0);
  if (c < 0x80) {
    *cp = c;
    return 1;
  }
  const auto cont = [&](size_t k) { return k < n && (b(k) & 0xC0) == 0x80; };
  if (c >= 0xC2 && c <= 0xDF) {
    if (!cont(1)) return 0;
    *cp = ((c & 0x1Fu) << 6) | (b(1) & 0x3Fu);
    return 2;
  }
  if (c >= 0xE0 && c <= 0xEF) {
    if (!cont(1) || !cont(2)) return 0;
    // E0 needs A0..BF (no overlongs); ED needs 80..9F (no surrogates).
    if (c == 0xE0 && b(1) < 0xA0) return 0;
    if (c == 0xED && b(1) > 0x9F) return 0;
    *cp = ((c & 0x0Fu) << 12) | ((b(1) & 0x3Fu) << 6) | (b(2) & 0x3Fu);
    return 3;
  }
  if (c >= 0xF0 && c <= 0xF4) {
    if (!cont(1) || !cont(2) || !cont(3)) return 0;
    // F0 needs 90..BF (no overlongs); F4 needs 80..8F (nothing past U+10FFFF).
    if (c == 0xF0 && b(1) < 0x90) return 0;
    if (c == 0xF4 && b(1) > 0x8F) return 0;
    *cp = ((c & 0x07u) << 18) | ((b(1) & 0x3Fu) << 12) | ((b(2) & 0x3Fu) << 6) | (b(3) & 0x3Fu);
    return 4;
  }
  return 0;
}
}  // namespace

bool utf8_valid(std::string_view s, size_t* bad_offset) {
  size_t i = 0;
  while (i < s.size()) {
    // ASCII runs are the common case; skip them eight bytes at a time.
    while (i + 8 <= s.size()) {
      uint64_t w = 0;
      for (int k = 0; k < 8; ++k) w |= static_cast<uint64_t>(static_cast<unsigned char>(s[i + k]));
      if (w & 0x80) break;
      i += 8;
    }
    if (i >= s.size()) break;
    char32_t cp;
    const size_t len = decode(s, i, &cp);
    if (len == 0) {
      if (bad_offset) *bad_offset = i;
      return false;
    }
    i += len;
  }
  return true;
}

char32_t utf8_next(std::string_view s, size_t* pos) {
  char32_t cp = 0xFFFD;
  return utf8_decode(s, pos, &cp) ? cp : 0xFFFD;
}

void utf8_append(std::string* out, char32_t cp) {
  if (cp < 0x80) {
    out->push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out->push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out->push_back(static_cast<char>(0xE0 | (cp >> 12)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    out->push_back(static_cast<char>(0xF0 | (cp >> 18)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
}

std::optional<size_t> find_invalid_utf8(std::string_view s) {
  size_t bad = 0;
  if (utf8_valid(s, &bad)) return std::nullopt;
  return bad;
}

std::string sanitize_utf8(std::string_view s) {
  size_t bad = 0;
  if (utf8_valid(s, &bad)) return std::string(s);
  std::string out(s.substr(0, bad));
  for (size_t i = bad; i < s.size();) {
    char32_t cp;
    const size_t len = decode(s, i, &cp);
    if (len == 0) {
      utf8_append(&out, 0xFFFD);
      ++i;
    } else {
      out.append(s.substr(i, len));
      i += len;
    }
  }
  return out;
}

std::string quoted_input(std::string_view s, size_t max_chars) {
  std::string out = "'";
  out += escaped_input(s, max_chars);
  out += '\'';
  return out;
}

std::string escaped_input(std::string_view s, size_t max_chars) {
  std::string out;
  size_t chars = 0;
  for (size_t i = 0; i < s.size(); ++chars) {
    if (chars == max_chars) {
      out += "...";
      break;
    }
    char32_t cp;
    const size_t len = decode(s, i, &cp);
    if (len == 0) cp = 0xFFFD;
    i += len == 0 ? 1 : len;
    switch (cp) {
      case '\0':
        out += "\\0";
        break;
      case '\t':
        out += "\\t";
        break;
      case '\n':
        out += "\\n";
        break;
      case '\r':
        out += "\\r";
        break;
      default:
        // C0 and C1 controls, DEL, and the Unicode line and paragraph separators.
        if (cp < 0x20 || (cp >= 0x7F && cp < 0xA0) || cp == 0x2028 || cp == 0x2029) {
          char escape[8];
          std::snprintf(escape, sizeof escape, cp > 0xFF ? "\\u%04X" : "\\x%02X",
                        static_cast<unsigned>(cp));
          out += escape;
        } else {
          utf8_append(&out, cp);
        }
    }
  }
  return out;
}

size_t utf8_complete_prefix(std::string_view s) {
  // A character is at most 4 bytes, so the lead of an unfinished one is among the last 4. Bytes
  // that cannot start a sequence (continuations, C0/C1, F5..FF) are complete on their own.
  for (size_t back = 1; back <= s.size() && back <= 4; ++back) {
    const auto b = static_cast<unsigned char>(s[s.size() - back]);
    if ((b & 0xC0) == 0x80) continue;
    const size_t announced = b >= 0xC2 && b <= 0xDF   ? 2
                             : b >= 0xE0 && b <= 0xEF ? 3
                             : b >= 0xF0 && b <= 0xF4 ? 4
                                                      : 1;
    return announced > back ? s.size() - back : s.size();
  }
  return s.size();
}

bool utf8_decode(std::string_view s, size_t* pos, char32_t* cp) {
  const size_t len = decode(s, *pos, cp);
  *pos += len ? len : 1;
  return len != 0;
}

size_t utf8_length(std::string_view s) {
  size_t n = 0;
  for (unsigned char c : s) n += (c & 0xC0) != 0x80;
  return n;
}

}  // namespace cepe
