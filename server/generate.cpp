#include "server/generate.h"

#include <boost/asio/post.hpp>
#include <ctime>

#include "server/ask.h"
#include "server/router.h"

namespace cepe::server {

namespace {

// One generating request from its parsed body to its answer. Held by whatever works on it next
// (the retrieval pool, the scheduler's job, a handler posted to the connection's strand); its
// members are used on the strand only, except st_, which the pool fills before posting back.
class Generation : public std::enable_shared_from_this<Generation> {
 public:
  Generation(std::shared_ptr<Exchange> ex, Server::Impl& srv) : ex_(std::move(ex)), srv_(srv) {}
  // Nobody waits for the answer any more: stop preparing or generating it.
  ~Generation() {
    st_->gone.store(true);
    if (job_) job_->cancelled.store(true);
  }

  void start(Api api, std::string_view body);

 private:
  void prepare();
  void on_prepared();
  void on_token(std::string piece, const std::vector<TokenLogprob>& logprobs);
  void on_done(JobResult r);
  void client_left();
  void begin_stream();
  void end_stream(const JobResult& r);
  void reply_deadline() { ex_->reply_error(504, "deadline_exceeded", deadline_message()); }
  std::string deadline_message() const {
    return "the request took longer than " + std::to_string(srv_.cfg.request_timeout_ms) +
           " ms; its generation was cancelled";
  }

  std::shared_ptr<Exchange> ex_;
  Server::Impl& srv_;
  std::shared_ptr<AskState> st_ = std::make_shared<AskState>();
  std::shared_ptr<Job> job_;  // the scheduler's job, from submission to its end
  bool ended_ = false;        // the job ended: late token events are dropped
  int64_t text_offset_ = 0;   // completions' text_offset of the next streamed token
};

void Generation::start(Api api, std::string_view body) {
  EngineLoop* engine = serving_engine(*ex_, srv_);
  if (!engine) return;
  AskState& st = *st_;
  st.api = api;
  try {
    if (api == Api::Ask) {
      st.req = parse_ask_request(body, srv_.limits);
    } else {
      OpenAiRequest o = parse_openai_request(api, body, srv_.limits);
      st.req = std::move(o.ask);
      st.include_usage = o.include_usage;
      st.ids.api = api;
      st.ids.id = (api == Api::Chat ? "chatcmpl-" : "cmpl-") + ex_->request_id();
      st.ids.created = static_cast<int64_t>(std::time(nullptr));
      st.ids.model = srv_.res.model_name;
    }
  } catch (const ApiError& e) {
    return ex_->reply_api_error(e);
  }
  ex_->log_stream(st.req.stream);
  if (!st.req.passages && !srv_.retriever()) {
    return ex_->reply_error(400, "missing_field", "this server has no index: send 'passages'");
  }
  if (!engine->try_reserve()) {
    return reply_queue_full(
        *ex_, srv_,
        "the request queue is full (" + std::to_string(srv_.cfg.max_queue) + " waiting)");
  }
  st.request_id = ex_->request_id();
  st.t0 = ex_->arrived();
  st.deadline = st.t0 + std::chrono::milliseconds(srv_.cfg.request_timeout_ms);
  // Weak: the connection keeps the callback, and this keeps the connection.
  ex_->watch_hangup([weak = weak_from_this()] {
    if (auto self = weak.lock()) self->client_left();
  });
  boost::asio::post(*srv_.pool, [self = shared_from_this()] { self->prepare(); });
}

// On the retrieval pool: retrieval, prompt and tokenisation, never on an IO thread.
void Generation::prepare() {
  AskState& st = *st_;
  try {
    if (st.gone.load()) throw ApiError(499, "client_closed", "the client closed the connection");
    prepare_ask(st, srv_.res, srv_.retriever().get(), srv_.cfg, srv_.metrics);
  } catch (const ApiError& e) {
    st.error = e;
  } catch (const std::exception& e) {
    st.error = ApiError(500, "internal", std::string("preparing the request failed: ") + e.what());
  }
  ex_->post([self = shared_from_this()] { self->on_prepared(); });
}

void Generation::on_prepared() {
  EngineLoop* engine = srv_.engine();
  AskState& st = *st_;
  const bool late = Clock::now() >= st.deadline;
  if (ex_->gone() || st.error || late) engine->release();  // the place try_reserve() took
  if (ex_->gone()) return ex_->hang_up();
  if (st.error) return ex_->reply_api_error(*st.error);
  if (late) {
    srv_.metrics.deadlines.fetch_add(1);
    return reply_deadline();
  }
  job_ = std::move(st.job);  // held here alone: its callbacks hold this
  if (st.req.stream) {
    job_->on_text = [self = shared_from_this()](std::string piece,
                                                std::vector<TokenLogprob> logprobs) {
      self->ex_->post([self, p = std::move(piece), l = std::move(logprobs)]() mutable {
        self->on_token(std::move(p), l);
      });
    };
  }
  job_->on_done = [self = shared_from_this()](JobResult r) {
    self->ex_->post([self, r = std::move(r)]() mutable { self->on_done(std::move(r)); });
  };
  if (st.req.stream) begin_stream();
  engine->submit(job_);
}

void Generation::client_left() {
  st_->gone.store(true);
  if (job_) {
    job_->cancelled.store(true);
    if (EngineLoop* e = srv_.engine()) e->wake();
  }
}

void Generation::on_done(JobResult r) {
  job_.reset();
  ended_ = true;
  const AskState& st = *st_;
  ex_->log_result(r.finish_reason, r.completion_tokens);
  if (ex_->gone() || r.outcome == JobOutcome::Cancelled) return ex_->hang_up();
  if (st.req.stream) return end_stream(r);
  switch (r.outcome) {
    case JobOutcome::Finished: {
      std::string body;
      if (st.api == Api::Ask) {
        body =
            ask_answer_json(st, r, srv_.res.model_name, /*with_passages=*/true, srv_.res.tokenizer);
      } else {
        std::string logprobs;
        if (st.req.logprobs >= 0) {
          int64_t text_offset = 0;
          logprobs = openai_logprobs_json(st.api, r.logprobs, *srv_.res.tokenizer, text_offset);
        }
        body = openai_response_json(st.ids, answer_text(r), r.finish_reason, usage_of(r),
                                    passages_json(st.hits), logprobs);
      }
      return ex_->reply_json(200, std::move(body));
    }
    case JobOutcome::Deadline:
      return reply_deadline();
    case JobOutcome::Shutdown:
      return ex_->reply_error(503, "shutting_down",
                              "the server stopped before the answer was complete", {}, true);
    default:
      return ex_->reply_error(500, "internal", "generation failed: " + r.error);
  }
}

// ---- streaming ----
// /ask streams named events (passages, token, done or error); the OpenAI routes stream data-only
// chunks in OpenAI's shape and end with [DONE].

void Generation::begin_stream() {
  const AskState& st = *st_;
  ex_->begin_events();
  if (st.api != Api::Ask) {
    // The role (chat) and the passages come first, before any text, as /ask's passages event.
    return ex_->send_event(
        nullptr, openai_chunk_json(st.ids, "", true, std::nullopt, passages_json(st.hits)));
  }
  ex_->send_event("passages", ask_passages_json(st));
}

void Generation::on_token(std::string piece, const std::vector<TokenLogprob>& logprobs) {
  if (ex_->gone() || ended_) return;
  const AskState& st = *st_;
  const Tokenizer& tokenizer = *srv_.res.tokenizer;
  const bool with_logprobs = st.req.logprobs >= 0;
  if (st.api != Api::Ask) {
    std::string lp;
    if (with_logprobs) lp = openai_logprobs_json(st.api, logprobs, tokenizer, text_offset_);
    return ex_->send_event(nullptr, openai_chunk_json(st.ids, piece, false, std::nullopt, "", lp));
  }
  std::string event = "{\"text\":" + json_quote(sanitize_utf8(piece));
  if (with_logprobs)
    event.append(",\"logprobs\":").append(logprob_content_json(logprobs, tokenizer));
  ex_->send_event("token", event + "}");
}

void Generation::end_stream(const JobResult& r) {
  const AskState& st = *st_;
  if (r.outcome == JobOutcome::Finished) {
    if (st.api == Api::Ask) {
      ex_->send_event("done", ask_answer_json(st, r, srv_.res.model_name,
                                              /*with_passages=*/false));
    } else {
      ex_->send_event(nullptr, openai_chunk_json(st.ids, "", false, r.finish_reason));
      if (st.include_usage) ex_->send_event(nullptr, openai_usage_chunk_json(st.ids, usage_of(r)));
      ex_->send_event(nullptr, "[DONE]");
    }
    return ex_->end_events("");
  }
  std::string code = "internal", message = "generation failed: " + r.error;
  int status = 500;
  if (r.outcome == JobOutcome::Deadline) {
    code = "deadline_exceeded";
    message = deadline_message();
    status = 504;
  } else if (r.outcome == JobOutcome::Shutdown) {
    code = "shutting_down";
    message = "the server stopped before the answer was complete";
    status = 503;
  }
  if (st.api == Api::Ask) {
    ex_->send_event("error", error_json(code, message));
  } else {
    // As OpenAI-compatible servers do: the error as a data event, then the end marker.
    ex_->send_event(nullptr, openai_error_json(status, code, message));
    ex_->send_event(nullptr, "[DONE]");
  }
  ex_->end_events(code);
}

}  // namespace

void start_generation(const std::shared_ptr<Exchange>& ex, Server::Impl& srv, Api api,
                      std::string_view body) {
  std::make_shared<Generation>(ex, srv)->start(api, body);
}

}  // namespace cepe::server
