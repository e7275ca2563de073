// One question's way through the server apart from HTTP: the state shared by the IO strand, the
// retrieval pool and the engine thread; its preparation (retrieve or take the caller's passages,
// then plan the prompt and encoder chunks through qa::Planner, the pipeline's planner); and the
// JSON an /ask answer is rendered as.
#pragma once

#include <atomic>
#include <chrono>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "config/server_config.h"
#include "server/metrics.h"
#include "server/openai.h"
#include "server/request.h"
#include "server/server.h"

namespace cepe::server {

/// State of one generating request between the IO strand, the retrieval pool and the engine.
struct AskState {
  Api api = Api::Ask;                ///< which API the client speaks
  OpenAiIds ids;                     ///< OpenAI routes: id, created, model
  bool include_usage = false;        ///< OpenAI streams: a usage chunk before [DONE]
  AskRequest req;                    ///< the parsed request
  std::string request_id;            ///< X-Request-Id
  Clock::time_point t0;              ///< when the request arrived
  Clock::time_point deadline;        ///< when its generation is cancelled
  std::vector<retriever::Hit> hits;  ///< passages as reported (retrieved or the caller's)
  std::shared_ptr<Job> job;          ///< the scheduler job, once prepared
  double retrieve_ms = 0;            ///< retrieval time
  std::optional<ApiError> error;     ///< set when preparation failed
  std::atomic<bool> gone{false};     ///< the client left while preparing
};

/// Milliseconds from `t0` to now (request timings).
inline double ms_since(Clock::time_point t0) {
  return std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
}

/// Retrieves from `retriever` (the index now served; null without one) or takes the caller's
/// passages, plans the prompt and chunks, and sets st.hits to the passages the answer is
/// conditioned on and st.job to the scheduler job. Runs on the retrieval pool. Throws ApiError
/// (400) for requests the planner refuses.
void prepare_ask(AskState& st, const Resources& res, const index::IndexRetriever* retriever,
                 const config::ServerConfig& cfg, Metrics& metrics);

/// The body of a /search answer: {"passages": [...] (the top k for the request's question, listed
/// as /ask lists them), "timings": {"retrieve_ms"}, "request_id"}. Runs on the retrieval pool.
std::string search_json(const AskRequest& req, const index::IndexRetriever& retriever,
                        const config::ServerConfig& cfg, Metrics& metrics,
                        const std::string& request_id);

/// A job's answer text without surrounding whitespace.
std::string answer_text(const JobResult& r);
/// OpenAI usage of a finished job.
OpenAiUsage usage_of(const JobResult& r);
/// The /ask answer object: answer, finish_reason, usage, timings, model, request_id, and the
/// passages when `with_passages` (the stream's done event leaves them out: they came first), and
/// the tokens' log-probabilities when the request asked for them and `logprob_tokenizer` is set
/// (the stream's done event leaves them out too: they came with the token events).
std::string ask_answer_json(const AskState& st, const JobResult& r, const std::string& model_name,
                            bool with_passages, const Tokenizer* logprob_tokenizer = nullptr);
/// The /ask stream's first event: {"passages": [...]}.
std::string ask_passages_json(const AskState& st);

}  // namespace cepe::server
