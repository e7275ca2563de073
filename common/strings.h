// Small string helpers shared by the parsers.
#pragma once

#include <cctype>
#include <string_view>

namespace cepe {

/// `s` without ASCII whitespace on either side.
inline std::string_view trim_ascii(std::string_view s) {
  constexpr std::string_view kSpace = " \t\n\r\f\v";
  const size_t b = s.find_first_not_of(kSpace);
  if (b == std::string_view::npos) return {};
  return s.substr(b, s.find_last_not_of(kSpace) - b + 1);
}

/// Whether `s` starts with `lower_prefix` (lower-case ASCII) in any letter case, as HTTP compares
/// schemes and auth schemes.
inline bool starts_with_ascii_nocase(std::string_view s, std::string_view lower_prefix) {
  if (s.size() < lower_prefix.size()) return false;
  for (size_t i = 0; i < lower_prefix.size(); ++i)
    if (std::tolower(static_cast<unsigned char>(s[i])) != lower_prefix[i]) return false;
  return true;
}

}  // namespace cepe
