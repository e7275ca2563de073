// Request bodies of POST /ask, /v1/chat/completions, /v1/completions and /search: the first byte
// picks the API (3: /search; otherwise its value mod 3, as before /search, so the corpus keeps its
// meaning), the rest is the body. A body either parses into a request inside the limits or is a 400
// (server::ApiError) naming the field.
#include "server/openai.h"
#include "server/request.h"
#include "tests/fuzz/fuzz_util.h"

using namespace cepe;

namespace {

void check_limits(const server::AskRequest& r, const server::AskLimits& limits) {
  if (r.question.empty() || !utf8_valid(r.question)) fuzz::fail("question empty or not UTF-8");
  if (static_cast<int64_t>(utf8_length(r.question)) > limits.max_question_chars)
    fuzz::fail("question over max_question_chars");
  if (r.k < 0 || r.k > limits.max_k) fuzz::fail("k outside [0, max_k]");
  if (r.max_new_tokens < 0 || r.max_new_tokens > limits.max_new_tokens)
    fuzz::fail("max_new_tokens outside [0, limit]");
  if (static_cast<int>(r.stop.size()) > limits.max_stop) fuzz::fail("more stop strings than max");
  for (const auto& s : r.stop)
    if (static_cast<int>(s.size()) > limits.max_stop_chars) fuzz::fail("stop string too long");
  if (r.passages && static_cast<int>(r.passages->size()) > limits.max_k)
    fuzz::fail("more caller passages than max_k");
  if (r.decoder_passages < 0 || (r.decoder_passages > r.k && !r.passages))
    fuzz::fail("decoder_passages outside [0, k]");
  if (r.logprobs < -1 || r.logprobs > limits.max_logprobs)
    fuzz::fail("logprobs outside [-1, max_logprobs]");
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const server::AskLimits limits;
  const std::string_view body = fuzz::as_text(data + 1, size - 1);
  fuzz::expect_clean<server::ApiError>([&] {
    switch (data[0] == 3 ? 3 : data[0] % 3) {
      case 3: {
        const server::AskRequest r = server::parse_search_request(body, limits);
        check_limits(r, limits);
        if (r.k < 1) fuzz::fail("search k below 1");
        break;
      }
      case 0:
        check_limits(server::parse_ask_request(body, limits), limits);
        break;
      case 1:
        check_limits(server::parse_openai_request(server::Api::Chat, body, limits).ask, limits);
        break;
      default:
        check_limits(server::parse_openai_request(server::Api::Completion, body, limits).ask,
                     limits);
    }
  });
  return 0;
}
