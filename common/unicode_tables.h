// The generated code-point tables (common/gen_unicode_tables.py, from Python's Unicode database)
// behind common/unicode.h; use that header's functions rather than the tables.
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

/// A code point whose NFD form minus nonspacing marks is other code points (0-padded).
struct StripEntry {
  uint32_t cp;      ///< the code point
  uint32_t out[3];  ///< what it becomes (unused slots 0)
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
/// General category C* (control, format, surrogate, private use, unassigned).
extern const CodeRange kControlRanges[];
/// Number of entries in kControlRanges.
extern const size_t kControlRangeCount;
/// General category P* (punctuation).
extern const CodeRange kPunctuationRanges[];
/// Number of entries in kPunctuationRanges.
extern const size_t kPunctuationRangeCount;
/// General category Zs (space separator).
extern const CodeRange kSpaceSeparatorRanges[];
/// Number of entries in kSpaceSeparatorRanges.
extern const size_t kSpaceSeparatorRangeCount;
/// General category Mn (nonspacing mark).
extern const CodeRange kNonspacingMarkRanges[];
/// Number of entries in kNonspacingMarkRanges.
extern const size_t kNonspacingMarkRangeCount;
/// NFD minus Mn for the code points it changes (Hangul syllables excluded: done in code).
extern const StripEntry kStripEntries[];
/// Number of entries in kStripEntries.
extern const size_t kStripEntryCount;

}  // namespace cepe::unicode
