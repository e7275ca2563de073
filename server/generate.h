// The generating routes (/ask, OpenAI chat and completions) over the QA pipeline: parse the
// body, reserve a place in the scheduler's queue, prepare on the retrieval pool (retrieve, plan
// the prompt and the encoder chunks: ask.h), submit the job, and answer whole or stream its
// tokens as events. No Beast: the answer leaves through Exchange.
#pragma once

#include <memory>
#include <string_view>

#include "server/exchange.h"
#include "server/openai.h"
#include "server/server_impl.h"

namespace cepe::server {

/// Starts answering a generating request in `api`'s shape; the answer, or the error, reaches the
/// client through `ex` later (or at once for requests refused up front). A client that hangs up
/// cancels its generation.
void start_generation(const std::shared_ptr<Exchange>& ex, Server::Impl& srv, Api api,
                      std::string_view body);

}  // namespace cepe::server
