// Code-point tables behind answer normalisation, generated from Python's Unicode database so that
// lower-casing, word boundaries and whitespace splitting agree with the official Python scorers.
#pragma once

#include <cstddef>
#include <cstdint>

namespace cepe::unicode {

/// A run of code points first, first+stride, ..., last whose lower case is cp + delta.
struct LowerRun {
  uint32_t first;   ///< first code point of the run
  uint32_t last;    ///< last code point of the run
  uint32_t stride;  ///< distance between mapped code points (1 or 2 in practice)
  int32_t delta;    ///< lower-case code point minus the code point
};

/// An inclusive range of code points.
struct CodeRange {
  uint32_t first;  ///< first code point
  uint32_t last;   ///< last code point (inclusive)
};

/// Unicode version the tables were generated from.
extern const char kUnicodeVersion[];
/// One-to-one lower-case mappings of str.lower() (U+0130 and final sigma are handled in code).
extern const LowerRun kLowerRuns[];
/// Number of entries in kLowerRuns.
extern const size_t kLowerRunCount;
/// Code points matched by Python's re `\w` (str patterns): alphanumerics and `_`.
extern const CodeRange kWordRanges[];
/// Number of entries in kWordRanges.
extern const size_t kWordRangeCount;
/// Code points for which str.isspace() holds (what str.split() splits on).
extern const CodeRange kSpaceRanges[];
/// Number of entries in kSpaceRanges.
extern const size_t kSpaceRangeCount;
/// The Cased property (Lowercase, Uppercase or Lt), used by the final-sigma rule.
extern const CodeRange kCasedRanges[];
/// Number of entries in kCasedRanges.
extern const size_t kCasedRangeCount;
/// The Case_Ignorable property, used by the final-sigma rule.
extern const CodeRange kCaseIgnorableRanges[];
/// Number of entries in kCaseIgnorableRanges.
extern const size_t kCaseIgnorableRangeCount;

}  // namespace cepe::unicode
