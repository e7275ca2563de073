// A passage as the QA layer sees it: pre-retrieved `ctxs` entries of a question file, or
// retriever hits converted by the pipeline.
#pragma once

#include <optional>
#include <string>

namespace cepe::qa {

/// One passage: identity, title and text, and the retriever's score when known.
struct Passage {
  std::string id;               ///< passage id ("" when the source gave none)
  std::string title;            ///< title ("" when unknown)
  std::string text;             ///< passage text
  std::optional<double> score;  ///< retrieval score, when the source gave one
};

}  // namespace cepe::qa
