// How long a running stream waits while a large request joins: one stream decodes on the QA
// scheduler (qa/scheduler.h); once it is in steady decode, a request with --passages encoder chunks
// of --chunk-tokens tokens each joins. Every decode step gives the stream one token, so the gaps
// between step ends are its inter-token gaps. For each --budgets value (encode_tokens_per_step;
// 0 = the joining request is encoded whole before the next step, as the engine loop did before
// slicing) it prints the median gap before the join, the longest gap while the request joins and
// the joining request's own latency, with the ratio of the longest gap to the budget-0 one.
//
//   bench_encode_stall --model DIR --tokenizer FILE [--passages 50] [--chunk-tokens 256]
//                      [--budgets 0,256,1024,4096] [--threads 0] [--repeats 3]
//                      [--cross-attention auto|cached|absorbed]
// (auto: absorbed on the CPU, as `cepe serve` runs; cached projects the request's keys and values
// for every cross layer when its sequence starts, a step this bench's slicing does not split.)
#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <mutex>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "common/args.h"
#include "common/error.h"
#include "engine/backend.h"
#include "engine/models/cepe_llama.h"
#include "engine/tokenizer.h"
#include "qa/scheduler.h"

namespace {

using cepe::qa::Clock;

double ms(Clock::duration d) {
  return std::chrono::duration<double, std::milli>(d).count();
}

// Records when each decode step ended.
class StepClock : public cepe::qa::SchedulerMetrics {
 public:
  void on_queue_depth(int64_t) override {}
  void on_batch(int64_t, int64_t) override {}
  void on_queue_wait(double) override {}
  void on_engine_step(int, double) override {
    std::lock_guard<std::mutex> lock(mu);
    ends.push_back(Clock::now());
    cv.notify_all();
  }
  void on_joined(int64_t, int64_t) override {}
  void on_ended(cepe::qa::JobOutcome, int64_t) override {}

  std::mutex mu;
  std::condition_variable cv;
  std::vector<Clock::time_point> ends;
};

struct Figures {
  double steady_ms = 0;   // median gap before the join
  double longest_ms = 0;  // longest gap from the join until the joining request finished
  double join_ms = 0;     // the joining request: submitted to answered
};

std::vector<int32_t> random_ids(std::mt19937& rng, int n, int vocab) {
  std::uniform_int_distribution<int32_t> pick(3, vocab - 1);
  std::vector<int32_t> ids(n);
  for (auto& id : ids) id = pick(rng);
  return ids;
}

Figures run_once(cepe::CepeModel& model, const cepe::Tokenizer& tokenizer, int64_t budget,
                 int passages, int chunk_tokens, unsigned seed) {
  const int vocab = static_cast<int>(
      std::min<int64_t>(model.config().decoder.vocab_size, tokenizer.vocab_size()));
  std::mt19937 rng(seed);
  StepClock clock;
  cepe::qa::SchedulerOptions so;
  so.max_batch = 8;
  so.encode_tokens_per_step = budget;
  cepe::qa::Scheduler scheduler(model, tokenizer, so, &clock);
  scheduler.start();

  std::mutex mu;
  std::condition_variable cv;
  bool stream_done = false, join_done = false;
  Clock::time_point join_answered;

  auto stream = std::make_shared<cepe::qa::Job>();
  stream->prompt_ids = random_ids(rng, 32, vocab);
  stream->prompt_ids[0] = 1;
  stream->sampling.max_new_tokens = 1500;
  stream->sampling.stop_at_eos = false;
  stream->on_done = [&](cepe::qa::JobResult) {
    std::lock_guard<std::mutex> lock(mu);
    stream_done = true;
    cv.notify_all();
  };
  scheduler.try_reserve();
  scheduler.submit(stream);
  {
    std::unique_lock<std::mutex> lock(clock.mu);
    clock.cv.wait(lock, [&] { return clock.ends.size() >= 20; });
  }

  auto join = std::make_shared<cepe::qa::Job>();
  join->prompt_ids = random_ids(rng, 16, vocab);
  join->prompt_ids[0] = 1;
  for (int i = 0; i < passages; ++i) join->chunks.push_back(random_ids(rng, chunk_tokens, vocab));
  join->sampling.max_new_tokens = 4;
  join->sampling.stop_at_eos = false;
  join->on_done = [&](cepe::qa::JobResult) {
    std::lock_guard<std::mutex> lock(mu);
    join_done = true;
    join_answered = Clock::now();
    cv.notify_all();
  };
  scheduler.try_reserve();
  const Clock::time_point joined = Clock::now();
  scheduler.submit(join);
  {
    std::unique_lock<std::mutex> lock(mu);
    cv.wait(lock, [&] { return join_done; });
  }
  bool cut_short = false;
  {
    std::lock_guard<std::mutex> lock(mu);
    cut_short = stream_done;  // the stream ended before the join did: the window is incomplete
  }
  stream->cancelled.store(true);
  scheduler.wake();
  {
    std::unique_lock<std::mutex> lock(mu);
    cv.wait(lock, [&] { return stream_done; });
  }
  scheduler.stop();
  if (cut_short) {
    std::cerr << "bench_encode_stall: the stream finished before the joining request; raise its "
                 "max_new_tokens\n";
    std::exit(1);
  }

  Figures f;
  std::vector<double> before;
  std::vector<Clock::time_point> ends;
  {
    std::lock_guard<std::mutex> lock(clock.mu);
    ends = clock.ends;
  }
  Clock::time_point last_before = ends.front();
  for (size_t i = 1; i < ends.size(); ++i) {
    if (ends[i] <= joined) {
      before.push_back(ms(ends[i] - ends[i - 1]));
      last_before = ends[i];
    }
  }
  std::sort(before.begin(), before.end());
  f.steady_ms = before.empty() ? 0 : before[before.size() / 2];
  // From the last step before the join to the step after the joining request was answered.
  Clock::time_point prev = last_before;
  for (const auto& t : ends) {
    if (t <= last_before) continue;
    f.longest_ms = std::max(f.longest_ms, ms(t - prev));
    prev = t;
    if (t > join_answered) break;
  }
  f.join_ms = ms(join_answered - joined);
  return f;
}

}  // namespace

int main(int argc, char** argv) {
  cepe::Args args;
  args.option("model", "CEPE model directory")
      .option("tokenizer", "tokenizer.model")
      .option("passages", "encoder chunks of the joining request", "50")
      .option("chunk-tokens", "tokens per chunk", "256")
      .option("budgets", "encode_tokens_per_step values, comma-separated (0 is always run)",
              "0,256,1024,4096")
      .option("threads", "CPU threads (0: all cores)", "0")
      .option("repeats", "runs per budget (best kept)", "3")
      .option("cross-attention", "auto, cached or absorbed", "auto");
  std::string model_dir, tokenizer_path, budgets_arg, cross;
  int passages = 0, chunk_tokens = 0, threads = 0, repeats = 0;
  try {
    args.parse(std::vector<std::string>(argv + 1, argv + argc));
    if (args.help_requested()) {
      std::cout << args.usage("bench_encode_stall --model DIR --tokenizer FILE [flags]");
      return 0;
    }
    CEPE_CHECK(args.has("model") && args.has("tokenizer"), "--model and --tokenizer are required");
    model_dir = args.get("model");
    tokenizer_path = args.get("tokenizer");
    budgets_arg = args.get("budgets");
    cross = args.get("cross-attention");
    passages = static_cast<int>(args.get_int("passages", 1, 1 << 16));
    chunk_tokens = static_cast<int>(args.get_int("chunk-tokens", 1, 1 << 16));
    threads = static_cast<int>(args.get_int("threads", 0, 4096));
    repeats = static_cast<int>(args.get_int("repeats", 1, 1000));
  } catch (const std::exception& e) {
    std::cerr << "bench_encode_stall: " << e.what() << "\n";
    return 2;
  }
  std::vector<int64_t> budgets;
  std::stringstream list(budgets_arg);
  for (std::string item; std::getline(list, item, ',');) budgets.push_back(std::stoll(item));
  if (budgets.empty() || budgets.front() != 0) budgets.insert(budgets.begin(), 0);

  try {
    cepe::BackendOptions bo;
    bo.threads = threads;
    auto backend = cepe::make_backend(cepe::Device::CPU, bo);
    auto model = cepe::CepeModel::load(model_dir, *backend);
    model->set_cross_attention_mode(
        cepe::parse_cross_attention_mode(cross, backend->device(), "--cross-attention"));
    cepe::Tokenizer tokenizer(tokenizer_path);
    std::printf(
        "stream decoding, then a request of %d x %d encoder tokens joins; best of %d; "
        "cross-attention %s\n",
        passages, chunk_tokens, repeats,
        cepe::cross_attention_mode_name(model->cross_attention_mode()));
    std::printf("%-22s %14s %16s %10s %14s\n", "encode_tokens_per_step", "steady gap ms",
                "longest gap ms", "vs whole", "join total ms");
    double baseline = 0;
    for (int64_t budget : budgets) {
      Figures best;
      best.longest_ms = 1e300;
      for (int r = 0; r < repeats; ++r) {
        Figures f = run_once(*model, tokenizer, budget, passages, chunk_tokens, 7u + r);
        if (f.longest_ms < best.longest_ms) best = f;
      }
      if (budget == 0) baseline = best.longest_ms;
      std::printf("%-22s %14.2f %16.2f %9.3fx %14.1f\n",
                  budget == 0 ? "0 (whole, as before)" : std::to_string(budget).c_str(),
                  best.steady_ms, best.longest_ms, best.longest_ms / baseline, best.join_ms);
    }
  } catch (const std::exception& e) {
    std::cerr << "bench_encode_stall: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
