#include "qa/reader.h"

#include <chrono>
#include <memory>

#include "common/error.h"

namespace cepe::qa {
namespace {

std::string trim(const std::string& s) {
  const char* ws = " \t\r\n";
  const size_t b = s.find_first_not_of(ws);
  if (b == std::string::npos) return "";
  return s.substr(b, s.find_last_not_of(ws) - b + 1);
}

}  // namespace

Reader::Reader(CepeModel& model, const Tokenizer& tokenizer, ReaderOptions options)
    : model_(model),
      tokenizer_(tokenizer),
      options_(std::move(options)),
      prompt_(options_.format),
      encoder_states_(model) {
  validate(options_.sampling);
  CEPE_CHECK(options_.decoder_passages >= 0, "decoder_passages must be >= 0");
  CEPE_CHECK(options_.chunk_tokens > 0, "chunk_tokens must be > 0");
  CEPE_CHECK(options_.max_prompt_tokens > 0, "max_prompt_tokens must be > 0");
}

ReaderRequest Reader::prepare(std::string_view question,
                              const std::vector<Passage>& passages) const {
  CEPE_CHECK(!question.empty(), "the question is empty");
  ReaderRequest req;
  // A plain decoder cannot take encoder chunks: every passage goes into its prompt.
  const size_t in_decoder =
      model_.config().is_cepe()
          ? std::min(passages.size(), static_cast<size_t>(options_.decoder_passages))
          : passages.size();
  std::vector<Passage> decoder_passages(passages.begin(), passages.begin() + in_decoder);
  // Drop the lowest-ranked decoder passages until the prompt fits the cap.
  for (;;) {
    req.prompt_ids = tokenizer_.encode(prompt_.render(question, decoder_passages), true);
    if (static_cast<int>(req.prompt_ids.size()) <= options_.max_prompt_tokens) break;
    CEPE_CHECK(!decoder_passages.empty(), "the question alone is "
                                              << req.prompt_ids.size()
                                              << " tokens, over the prompt limit of "
                                              << options_.max_prompt_tokens);
    decoder_passages.pop_back();
  }
  req.decoder_passages = static_cast<int>(decoder_passages.size());
  for (size_t i = in_decoder; i < passages.size(); ++i) {
    std::vector<int32_t> ids = encoder_chunk_ids(tokenizer_, passages[i], options_.chunk_tokens);
    if (ids.empty()) continue;
    req.chunks.push_back(std::move(ids));
    req.chunk_ids.push_back(passages[i].id);
  }
  return req;
}

void Reader::run(const std::vector<ReaderRequest>& requests, int max_batch,
                 const std::function<void(size_t, const ReaderAnswer&)>& on_done,
                 const std::atomic<bool>* stop) {
  CEPE_CHECK(max_batch >= 1, "the batch size must be >= 1");
  using Clock = std::chrono::steady_clock;
  struct Active {
    size_t index;
    std::unique_ptr<Sequence> seq;
    Clock::time_point joined;
    double first_token_ms = -1;
  };
  std::vector<Active> active;
  size_t next = 0;
  auto stopping = [&] { return stop && stop->load(); };
  while ((next < requests.size() || !active.empty()) && !stopping()) {
    // Join: new requests take the free slots; their context is encoded as they enter.
    while (static_cast<int>(active.size()) < max_batch && next < requests.size()) {
      const ReaderRequest& r = requests[next];
      const Clock::time_point joined = Clock::now();
      EncodedContext ctx;
      if (!r.chunks.empty()) ctx = encoder_states_.encode(r.chunk_ids, r.chunks);
      active.push_back(
          {next,
           std::make_unique<Sequence>(model_, &tokenizer_, r.prompt_ids, ctx, options_.sampling),
           joined});
      ++next;
    }
    std::vector<Sequence*> batch;
    for (auto& a : active) batch.push_back(a.seq.get());
    step_sequences(model_, batch);
    const Clock::time_point stepped = Clock::now();
    for (auto& a : active)
      if (a.first_token_ms < 0 && (!a.seq->tokens().empty() || a.seq->finished()))
        a.first_token_ms = std::chrono::duration<double, std::milli>(stepped - a.joined).count();
    // Leave: finished sequences report and free their slot (and caches) at once.
    for (size_t i = 0; i < active.size();) {
      Sequence& s = *active[i].seq;
      if (!s.finished()) {
        ++i;
        continue;
      }
      ReaderAnswer answer;
      answer.text = trim(s.text());
      answer.finish = s.finish_reason();
      answer.prompt_tokens = s.prompt_tokens();
      answer.encoder_tokens = s.encoder_tokens();
      answer.generated_tokens = static_cast<int64_t>(s.tokens().size());
      answer.first_token_ms = active[i].first_token_ms;
      const size_t index = active[i].index;
      active.erase(active.begin() + static_cast<long>(i));
      on_done(index, answer);
    }
  }
}

}  // namespace cepe::qa
