// Small string helpers shared by the parsers.
#pragma once

#include <string_view>

namespace cepe {

/// `s` without ASCII whitespace on either side.
inline std::string_view trim_ascii(std::string_view s) {
  constexpr std::string_view kSpace = " \t\n\r\f\v";
  const size_t b = s.find_first_not_of(kSpace);
  if (b == std::string_view::npos) return {};
  return s.substr(b, s.find_last_not_of(kSpace) - b + 1);
}

}  // namespace cepe
