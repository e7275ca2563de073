#include "engine/generation.h"

#include <algorithm>
#include <chrono>
#include <cmath>

#include "common/error.h"
#include "engine/cpu/kernels.h"

namespace cepe {
namespace {

double ms_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
}

// The largest of x[0, n), n a positive multiple of 16, kept in 16 independent lanes that the
// compiler holds in vector registers (a running index, as std::max_element keeps, would serialise
// every comparison). NaN is never the largest.
float lanes_max(const float* x, int n) {
  constexpr int kLanes = 16;
  float lane[kLanes];
  for (int j = 0; j < kLanes; ++j) lane[j] = x[j];
  for (int i = kLanes; i < n; i += kLanes)
    for (int j = 0; j < kLanes; ++j) lane[j] = x[i + j] > lane[j] ? x[i + j] : lane[j];
  return *std::max_element(lane, lane + kLanes);
}

// Index of the first largest of n floats (as torch.argmax): the maximum in lanes, then the first
// element equal to it; half the time of std::max_element over a vocabulary of 32000 (bench_ops
// BM_SampleGreedy).
int32_t first_argmax(const float* x, int n) {
  const int full = n / 16 * 16;
  if (full == 0) return static_cast<int32_t>(std::max_element(x, x + n) - x);
  float mx = lanes_max(x, full);
  for (int i = full; i < n; ++i) mx = x[i] > mx ? x[i] : mx;
  const float* at = std::find(x, x + n, mx);
  return at == x + n ? 0 : static_cast<int32_t>(at - x);  // all NaN: the first
}

// token_logprob passes over whole blocks of this many logits below its threshold with one test.
constexpr int kBlock = 64;

}  // namespace

void validate(const SamplingOptions& o) {
  CEPE_CHECK(std::isfinite(o.temperature) && o.temperature >= 0.0f,
             "temperature must be >= 0, got " << o.temperature);
  CEPE_CHECK(o.top_k >= 0, "top_k must be >= 0, got " << o.top_k);
  CEPE_CHECK(std::isfinite(o.top_p) && o.top_p > 0.0f && o.top_p <= 1.0f,
             "top_p must be in (0, 1], got " << o.top_p);
  CEPE_CHECK(o.max_new_tokens >= 0, "max_new_tokens must be >= 0, got " << o.max_new_tokens);
  CEPE_CHECK(o.logprobs >= -1, "logprobs must be >= -1 (-1: none), got " << o.logprobs);
}

TokenLogprob token_logprob(const float* logits, int vocab, int32_t id, int top) {
  CEPE_CHECK(vocab > 0 && id >= 0 && id < vocab,
             "token " << id << " is outside the vocabulary of " << vocab);
  // The normaliser through the CPU kernels' vectorised e^x (~2 ulp, summed in 8 or 16 float
  // lanes): a vocabulary of 32000 costs ~10x less than a scalar exp loop, which matters when every
  // sequence of a batch asks for log-probabilities at every step.
  thread_local std::vector<float> scratch;
  scratch.assign(logits, logits + vocab);
  float mx = 0.0f;
  const float sum = cpu::active_kernels().softmax_exp(scratch.data(), vocab, &mx);
  const double log_z = static_cast<double>(mx) + std::log(static_cast<double>(sum));
  TokenLogprob out;
  out.id = id;
  out.logprob = static_cast<float>(logits[id] - log_z);
  const int n = std::min(std::max(top, 0), vocab);
  if (n == 0) return out;
  // A bounded selection: keep the n best seen so far, sorted, most likely first. Once n are held,
  // a token must beat the n-th logit (a tie loses: ids ascend), one compare per token.
  auto better = [&](int32_t a, int32_t b) {
    return logits[a] > logits[b] || (logits[a] == logits[b] && a < b);
  };
  std::vector<int32_t> best;
  best.reserve(n + 1);
  float threshold = -INFINITY;
  for (int32_t i = 0; i < vocab; ++i) {
    if (static_cast<int>(best.size()) == n) {
      // Whole blocks below the threshold are passed over in one test.
      if (i % kBlock == 0 && i + kBlock <= vocab && !(lanes_max(logits + i, kBlock) > threshold)) {
        i += kBlock - 1;
        continue;
      }
      if (!(logits[i] > threshold)) continue;
    }
    best.insert(std::upper_bound(best.begin(), best.end(), i, better), i);
    if (static_cast<int>(best.size()) > n) best.pop_back();
    if (static_cast<int>(best.size()) == n) threshold = logits[best.back()];
  }
  out.top.reserve(n);
  for (int32_t i : best) out.top.emplace_back(i, static_cast<float>(logits[i] - log_z));
  return out;
}

const char* finish_reason_name(FinishReason r) {
  switch (r) {
    case FinishReason::None:
      return "";
    case FinishReason::Length:
      return "length";
    case FinishReason::Eos:
      return "eos";
    case FinishReason::Stop:
      return "stop";
    case FinishReason::Cancelled:
      return "cancelled";
  }
  return "";
}

Sampler::Sampler(const SamplingOptions& options) : options_(options), rng_(options.seed) {}

int32_t Sampler::sample(const float* logits, int vocab) {
  CEPE_CHECK(vocab > 0, "sampling from an empty vocabulary");
  if (options_.temperature == 0.0f) {
    return first_argmax(logits, vocab);
  }
  candidates_.resize(vocab);
  for (int i = 0; i < vocab; ++i) candidates_[i] = {logits[i] / options_.temperature, i};
  auto by_logit = [](const auto& a, const auto& b) {
    return a.first > b.first || (a.first == b.first && a.second < b.second);
  };
  size_t keep = candidates_.size();
  if (options_.top_k > 0 && static_cast<size_t>(options_.top_k) < keep) {
    keep = options_.top_k;
    std::partial_sort(candidates_.begin(), candidates_.begin() + keep, candidates_.end(), by_logit);
  } else {
    std::sort(candidates_.begin(), candidates_.end(), by_logit);
  }
  candidates_.resize(keep);
  // Softmax over the survivors (max-subtracted, in double for the cumulative sum).
  const double mx = candidates_[0].first;
  std::vector<double> probs(keep);
  double total = 0.0;
  for (size_t i = 0; i < keep; ++i) total += probs[i] = std::exp(candidates_[i].first - mx);
  if (options_.top_p < 1.0f) {
    // Smallest prefix whose mass reaches top_p (always at least one token).
    double cumulative = 0.0;
    size_t cut = keep;
    for (size_t i = 0; i < keep; ++i) {
      cumulative += probs[i] / total;
      if (cumulative >= options_.top_p) {
        cut = i + 1;
        break;
      }
    }
    keep = cut;
    total = 0.0;
    for (size_t i = 0; i < keep; ++i) total += probs[i];
  }
  std::uniform_real_distribution<double> uniform(0.0, total);
  double r = uniform(rng_);
  for (size_t i = 0; i < keep; ++i) {
    r -= probs[i];
    if (r < 0.0) return candidates_[i].second;
  }
  return candidates_[keep - 1].second;
}

StopMatcher::StopMatcher(std::vector<std::string> stops) {
  for (auto& s : stops)
    if (!s.empty()) stops_.push_back(std::move(s));
}

std::string StopMatcher::push(const std::string& text) {
  if (stopped_) return "";
  pending_ += text;
  size_t first = std::string::npos;
  for (const auto& s : stops_) first = std::min(first, pending_.find(s));
  if (first != std::string::npos) {
    stopped_ = true;
    std::string out = pending_.substr(0, first);
    pending_.clear();
    return out;
  }
  // Hold back the longest tail that is a proper prefix of some stop string.
  size_t hold = 0;
  for (const auto& s : stops_) {
    for (size_t len = std::min(s.size() - 1, pending_.size()); len > hold; --len) {
      if (pending_.compare(pending_.size() - len, len, s, 0, len) == 0) {
        hold = len;
        break;
      }
    }
  }
  std::string out = pending_.substr(0, pending_.size() - hold);
  pending_.erase(0, pending_.size() - hold);
  return out;
}

std::string StopMatcher::flush() {
  std::string out;
  if (!stopped_) out.swap(pending_);
  pending_.clear();
  return out;
}

Sequence::Sequence(CepeModel& model, const Tokenizer* tokenizer, std::vector<int32_t> prompt_ids,
                   const EncodedContext& context, const SamplingOptions& options)
    : model_(model),
      prompt_(std::move(prompt_ids)),
      options_(options),
      sampler_(options),
      stop_(options.stop) {
  if (tokenizer) decoder_.emplace(*tokenizer, prompt_);
  validate(options_);
  CEPE_CHECK(!prompt_.empty(), "the prompt is empty: at least one token is needed");
  state_ = model.new_state(static_cast<int64_t>(prompt_.size()) + options_.max_new_tokens);
  model.set_context(*state_, context);
  if (options_.max_new_tokens == 0) finish_ = FinishReason::Length;
}

void Sequence::cancel() {
  if (!finished()) finish_ = FinishReason::Cancelled;
  state_.reset(new DecoderState());  // frees the caches now, not when the request object dies
}

std::vector<TokenLogprob> Sequence::take_logprobs() {
  std::vector<TokenLogprob> out(logprobs_.begin() + static_cast<std::ptrdiff_t>(logprobs_taken_),
                                logprobs_.end());
  logprobs_taken_ = logprobs_.size();
  return out;
}

std::string Sequence::take_text() {
  std::string out;
  out.swap(unread_);
  return out;
}

void Sequence::accept(const float* logits, int vocab) {
  const int32_t id = sampler_.sample(logits, vocab);
  const auto& eos = model_.config().decoder.eos_token_ids;
  std::string piece;
  const auto& extra = options_.stop_token_ids;
  if ((options_.stop_at_eos && std::find(eos.begin(), eos.end(), id) != eos.end()) ||
      std::find(extra.begin(), extra.end(), id) != extra.end()) {
    finish_ = FinishReason::Eos;
  } else {
    generated_.push_back(id);
    if (options_.logprobs >= 0)
      logprobs_.push_back(token_logprob(logits, vocab, id, options_.logprobs));
    if (decoder_) piece = stop_.push(decoder_->push(id));
    if (stop_.stopped()) {
      finish_ = FinishReason::Stop;
    } else if (static_cast<int>(generated_.size()) >= options_.max_new_tokens) {
      finish_ = FinishReason::Length;
    }
  }
  if (finished() && finish_ != FinishReason::Stop && decoder_)
    piece += stop_.push(decoder_->flush()) + stop_.flush();
  text_ += piece;
  unread_ += piece;
}

void step_sequences(CepeModel& model, const std::vector<Sequence*>& sequences) {
  std::vector<Sequence*> active;
  std::vector<DecoderState*> states;
  std::vector<std::vector<int32_t>> tokens;
  for (Sequence* s : sequences) {
    if (s->finished()) continue;
    active.push_back(s);
    states.push_back(s->state_.get());
    tokens.push_back(s->needs_prefill() ? s->prompt_ : std::vector<int32_t>{s->generated_.back()});
  }
  if (active.empty()) return;
  const auto t0 = std::chrono::steady_clock::now();
  Tensor logits = model.forward_batch(states, tokens, /*all_logits=*/false);
  const double ms = ms_since(t0);
  const int vocab = static_cast<int>(logits.dim(1));
  for (size_t i = 0; i < active.size(); ++i) {
    (tokens[i].size() > 1 || active[i]->generated_.empty() ? active[i]->prefill_ms
                                                           : active[i]->decode_ms) += ms;
    active[i]->accept(logits.data<float>() + i * vocab, vocab);
  }
}

GenerationResult generate(CepeModel& model, const Tokenizer& tokenizer,
                          const std::vector<int32_t>& prompt_ids,
                          const std::vector<std::vector<int32_t>>& context_chunks,
                          const SamplingOptions& options,
                          const std::function<bool(const std::string&)>& on_text) {
  GenerationResult result;
  EncodedContext context;
  if (!context_chunks.empty()) {
    const auto t0 = std::chrono::steady_clock::now();
    context = model.encode(context_chunks);
    result.encode_ms = ms_since(t0);
  }
  Sequence seq(model, &tokenizer, prompt_ids, context, options);
  while (!seq.finished()) {
    step_sequences(model, {&seq});
    std::string piece = seq.take_text();
    if (!piece.empty() && on_text && !on_text(piece)) seq.cancel();
  }
  result.text = seq.text();
  result.tokens = seq.tokens();
  result.logprobs = seq.logprobs();
  result.finish = seq.finish_reason();
  result.prompt_tokens = seq.prompt_tokens();
  result.encoder_tokens = context.tokens();
  result.prefill_ms = seq.prefill_ms;
  result.decode_ms = seq.decode_ms;
  return result;
}

}  // namespace cepe
