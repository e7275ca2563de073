#include "server/ask.h"

#include <rapidjson/stringbuffer.h>
#include <rapidjson/writer.h>

#include <cmath>
#include <limits>

#include "common/error.h"
#include "common/json.h"
#include "common/utf8.h"
#include "qa/pipeline.h"

namespace cepe::server {
namespace {

using Writer = rapidjson::Writer<rapidjson::StringBuffer>;

std::string_view trim(std::string_view s) {
  const size_t b = s.find_first_not_of(" \t\r\n");
  if (b == std::string_view::npos) return {};
  return s.substr(b, s.find_last_not_of(" \t\r\n") - b + 1);
}

void put_passages(Writer& w, const std::vector<retriever::Hit>& hits) {
  w.Key("passages");
  const std::string array = passages_json(hits);
  w.RawValue(array.data(), array.size(), rapidjson::kArrayType);
}

// A timing in milliseconds, to the microsecond.
void put_ms(Writer& w, const char* key, double ms) {
  w.Key(key);
  w.Double(std::round(ms * 1000.0) / 1000.0);
}

// The request's retrieval settings, the server's where it leaves them unset.
retriever::SearchOptions search_options(const AskRequest& req, const config::ServerConfig& cfg) {
  retriever::SearchOptions so;
  so.k = req.k;
  so.nprobe = req.nprobe >= 0 ? req.nprobe : cfg.nprobe;
  so.ef_search = req.ef_search >= 0 ? req.ef_search : cfg.ef_search;
  so.bm25_weight = req.bm25_weight;
  so.dense_weight = req.dense_weight;
  so.rrf_k = req.rrf_k;
  return so;
}

}  // namespace

void prepare_ask(AskState& st, const Resources& res, const index::IndexRetriever* retriever,
                 const config::ServerConfig& cfg, Metrics& metrics) {
  std::vector<qa::Passage> passages;
  if (st.req.passages) {
    passages = *st.req.passages;
    for (size_t i = 0; i < passages.size(); ++i) {
      retriever::Hit h;
      h.id = passages[i].id;
      h.title = passages[i].title;
      h.text = passages[i].text;
      h.rank = static_cast<int>(i) + 1;
      h.score = std::numeric_limits<float>::quiet_NaN();
      st.hits.push_back(std::move(h));
    }
  } else if (st.req.k > 0 && retriever) {
    const auto t0 = Clock::now();
    st.hits = retriever->search(st.req.question, search_options(st.req, cfg));
    st.retrieve_ms = ms_since(t0);
    metrics.retrieval(st.retrieve_ms / 1000.0);
    for (const auto& h : st.hits) passages.push_back({h.id, h.title, h.text, h.score});
  }
  qa::PlanOptions po;
  po.decoder_passages = st.req.decoder_passages;
  po.chunk_tokens = cfg.chunk_tokens;
  po.max_prompt_tokens = cfg.max_prompt_tokens;
  po.format = cfg.prompt;
  SamplingOptions s = qa::qa_sampling();
  s.temperature = st.req.temperature;
  s.top_p = st.req.top_p;
  s.top_k = st.req.top_k;
  s.seed = st.req.seed;
  s.max_new_tokens = st.req.max_new_tokens;
  s.stop = st.req.stop;
  s.logprobs = st.req.logprobs;
  qa::Plan plan;
  try {
    // The planner reads only the model's config; the model itself stays on the scheduler.
    validate(s);
    plan = qa::Planner(res.model->config(), *res.tokenizer, po).plan(st.req.question, passages);
  } catch (const Error& e) {
    throw ApiError(400, "invalid_request", e.message());
  }
  // Report only what the answer is conditioned on: decoder passages dropped to fit the prompt
  // cap (or empty encoder chunks) are not.
  std::vector<retriever::Hit> used;
  for (size_t i : plan.used_passages)
    if (i < st.hits.size()) used.push_back(std::move(st.hits[i]));
  st.hits = std::move(used);
  st.job = qa::make_job(std::move(plan), s, st.deadline);
}

std::string search_json(const AskRequest& req, const index::IndexRetriever& retriever,
                        const config::ServerConfig& cfg, Metrics& metrics,
                        const std::string& request_id) {
  const auto t0 = Clock::now();
  const std::vector<retriever::Hit> hits = retriever.search(req.question, search_options(req, cfg));
  const double retrieve_ms = ms_since(t0);
  metrics.retrieval(retrieve_ms / 1000.0);
  rapidjson::StringBuffer sb;
  Writer w(sb);
  w.StartObject();
  put_passages(w, hits);
  w.Key("timings");
  w.StartObject();
  put_ms(w, "retrieve_ms", retrieve_ms);
  w.EndObject();
  w.Key("request_id");
  write_json_text(w, request_id);
  w.EndObject();
  return std::string(sb.GetString(), sb.GetSize());
}

std::string answer_text(const JobResult& r) {
  return std::string(trim(r.text));
}

OpenAiUsage usage_of(const JobResult& r) {
  OpenAiUsage u;
  u.prompt_tokens = r.prompt_tokens;
  u.completion_tokens = r.completion_tokens;
  u.encoder_tokens = r.encoder_tokens;
  return u;
}

std::string ask_answer_json(const AskState& st, const JobResult& r, const std::string& model_name,
                            bool with_passages, const Tokenizer* logprob_tokenizer) {
  rapidjson::StringBuffer sb;
  Writer w(sb);
  w.StartObject();
  w.Key("answer");
  write_json_text(w, answer_text(r));
  w.Key("finish_reason");
  w.String(r.finish_reason.c_str());
  w.Key("usage");
  w.StartObject();
  w.Key("prompt_tokens");
  w.Int64(r.prompt_tokens);
  w.Key("encoder_tokens");
  w.Int64(r.encoder_tokens);
  w.Key("completion_tokens");
  w.Int64(r.completion_tokens);
  w.EndObject();
  w.Key("timings");
  w.StartObject();
  put_ms(w, "retrieve_ms", st.retrieve_ms);
  put_ms(w, "queue_ms", r.queue_ms);
  put_ms(w, "encode_ms", r.encode_ms);
  put_ms(w, "prefill_ms", r.prefill_ms);
  put_ms(w, "decode_ms", r.decode_ms);
  put_ms(w, "total_ms", ms_since(st.t0));
  w.EndObject();
  w.Key("model");
  write_json_text(w, model_name);
  w.Key("request_id");
  write_json_text(w, st.request_id);
  if (with_passages) put_passages(w, st.hits);
  if (logprob_tokenizer && st.req.logprobs >= 0) {
    w.Key("logprobs");
    const std::string content = logprob_content_json(r.logprobs, *logprob_tokenizer);
    w.RawValue(content.data(), content.size(), rapidjson::kArrayType);
  }
  w.EndObject();
  return std::string(sb.GetString(), sb.GetSize());
}

std::string ask_passages_json(const AskState& st) {
  rapidjson::StringBuffer sb;
  Writer w(sb);
  w.StartObject();
  put_passages(w, st.hits);
  w.EndObject();
  return std::string(sb.GetString(), sb.GetSize());
}

}  // namespace cepe::server
