// What a retriever needs from a passage store, without knowing its format: the index layer
// implements PassageLookup with its memory-mapped store.
#pragma once

#include <cstdint>
#include <string_view>

namespace cepe::retriever {

/// One passage as read from a store; views valid while the store lives.
struct PassageView {
  std::string_view id;     ///< corpus id
  std::string_view title;  ///< title (may be empty)
  std::string_view text;   ///< passage text
};

/// Read access to passages by row (row = the id every search backend stores).
class PassageLookup {
 public:
  virtual ~PassageLookup() = default;
  /// Number of passages.
  virtual uint64_t size() const = 0;
  /// Passage at `row`; throws when the row is out of range or the record is corrupt.
  virtual PassageView get(uint64_t row) const = 0;
};

}  // namespace cepe::retriever
