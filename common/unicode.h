// Unicode character properties and case mappings as Python computes them (str.lower(),
// str.isspace(), re's \w, unicodedata categories and NFD), from the one set of generated tables
// (common/unicode_tables.cpp, written by common/gen_unicode_tables.py). Answer scoring (qa/) and
// BERT's basic tokenizer (retriever/) both use these, so they cannot disagree.
#pragma once

#include <string>

namespace cepe::unicode {

/// Unicode version of the tables.
const char* version();

/// Python's re `\w` on a str pattern (alphanumerics and `_`).
bool is_word(char32_t c);
/// str.isspace(): what str.split() splits on.
bool is_space(char32_t c);
/// The Cased property (Lowercase, Uppercase or Lt).
bool is_cased(char32_t c);
/// The Case_Ignorable property.
bool is_case_ignorable(char32_t c);
/// General category C* (control, format, surrogate, private use, unassigned).
bool is_other(char32_t c);
/// General category P* (punctuation).
bool is_punctuation(char32_t c);
/// General category Zs (space separator).
bool is_space_separator(char32_t c);
/// General category Mn (nonspacing mark).
bool is_nonspacing_mark(char32_t c);

/// str.lower() of one code point where it maps to one (U+0130 and the sigmas need context: see
/// lower()); other code points, and values past U+10FFFF, are returned unchanged.
char32_t simple_lower(char32_t c);
/// Whether the capital sigma at `s[i]` lower-cases to the final form: a cased letter precedes it
/// and none follows it, case-ignorable code points skipped on both sides.
bool sigma_is_final(const std::u32string& s, size_t i);
/// str.lower() in full: the simple mappings, U+0130 -> "i" U+0307, and final sigma.
std::u32string lower(const std::u32string& s);
/// NFD with nonspacing marks removed (BERT's strip_accents), Hangul syllables decomposed.
std::u32string strip_accents(const std::u32string& s);

}  // namespace cepe::unicode
