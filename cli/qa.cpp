// `cepe qa`: answers a question file end to end through the QA pipeline (retrieve, plan, generate
// on the scheduler with continuous batching) and scores it with EM/F1 as CEPE's evaluation does.
// `cepe ask`: one question through the same pipeline.
#include <sys/resource.h>

#include <algorithm>
#include <csignal>
#include <cstdio>
#include <iostream>
#include <map>
#include <memory>

#include "cli/command.h"
#include "cli/model_flags.h"
#include "common/error.h"
#include "common/progress.h"
#include "index/open_index.h"
#include "qa/encoder_states.h"
#include "qa/pipeline.h"
#include "qa/question_file.h"
#include "qa/results.h"
#include "retriever/retriever.h"

namespace cepe::cli {
namespace {

std::atomic<bool> g_interrupted{false};

void on_sigint(int) {
  g_interrupted.store(true);
}

// Timing of one pass over the questions (cepe qa --passes).
struct PassStats {
  std::vector<double> first_token_ms;
  double seconds = 0;
  uint64_t store0 = 0, cache0 = 0, live0 = 0, store = 0, cache = 0, live = 0;
};

void print_pass(int pass, PassStats s) {
  std::sort(s.first_token_ms.begin(), s.first_token_ms.end());
  const size_t n = s.first_token_ms.size();
  double mean = 0;
  for (double v : s.first_token_ms) mean += v / std::max<size_t>(n, 1);
  const auto at = [&](double q) { return n ? s.first_token_ms[size_t(q * double(n - 1))] : 0.0; };
  std::printf(
      "pass %d: %zu questions in %.2f s (%.3f questions/s); time to first token mean %.1f ms, "
      "p50 %.1f ms, p90 %.1f ms; encoder states: %llu passages from the store, %llu from the "
      "cache, %llu encoded live\n",
      pass, n, s.seconds, s.seconds > 0 ? double(n) / s.seconds : 0.0, mean, at(0.5), at(0.9),
      static_cast<unsigned long long>(s.store), static_cast<unsigned long long>(s.cache),
      static_cast<unsigned long long>(s.live));
}

void add_reader_flags(Args& args) {
  args.option("index", "index directory (from cepe index build)")
      .option("k", "passages to retrieve per question", "10")
      .option("decoder-passages", "of those, how many go into the decoder prompt (rest: encoder)",
              "0")
      .option("chunk-tokens", "tokens per encoder chunk (one passage each)", "256")
      .option("max-prompt-tokens", "decoder prompt cap; lowest-ranked passages are dropped", "4096")
      .option("nprobe", "FAISS IVF lists to visit (0: index default)", "0")
      .option("ef-search", "FAISS HNSW search depth (0: index default)", "0")
      .option("bm25-weight", "hybrid indexes: weight of the BM25 ranking in rank fusion", "1")
      .option("dense-weight", "hybrid indexes: weight of the dense ranking in rank fusion", "1")
      .option("rrf-k", "hybrid indexes: reciprocal rank fusion constant", "60")
      .multi("bm25-shard",
             "search these BM25 databases (paths or tcp:HOST:PORT of xapian-tcpsrv) as one "
             "instead of the index's own")
      .option("encoder-store",
              "precomputed passage states: auto (the index's store for this model, if one "
              "matches), off, or a .ces file (from cepe index encode)",
              "auto");
}

// The index --index names, its BM25 side searched through --bm25-shard when given.
std::unique_ptr<index::IndexRetriever> open_reader_index(const Args& args) {
  index::OpenOptions o;
  o.bm25_shards = args.get_all("bm25-shard");
  return index::open_index(args.get("index"), o);
}

// Points the pipeline at the encoder-state store --encoder-store selects; a store that does not
// fit the model is reported (once) and not used.
void attach_encoder_store(const Args& args, const LoadedModel& lm, qa::Pipeline& pipeline,
                          int chunk_tokens) {
  const std::string mode = args.get("encoder-store");
  const std::filesystem::path index_dir = args.has("index") ? args.get("index") : "";
  auto store = qa::open_encoder_store(mode, index_dir, args.get("model"), lm.model->config(),
                                      chunk_tokens, lm.backend->device(),
                                      [](const std::string& line) { std::cerr << line << "\n"; });
  if (!store) return;
  std::cerr << "encoder store: " << store->path().string() << " ("
            << index::state_dtype_name(store->fingerprint().dtype) << ", "
            << index::store_layout_name(store->fingerprint().layout) << ", " << store->size()
            << " passages)\n";
  pipeline.scheduler().encoder_states().use_store(std::move(store));
}

qa::PlanOptions plan_options(const Args& args) {
  qa::PlanOptions o;
  o.decoder_passages = static_cast<int>(args.get_int("decoder-passages", 0, 1000));
  o.chunk_tokens = static_cast<int>(args.get_int("chunk-tokens", 1, 1 << 16));
  o.max_prompt_tokens = static_cast<int>(args.get_int("max-prompt-tokens", 1, 1 << 20));
  return o;
}

SamplingOptions qa_sampling_options(const Args& args) {
  SamplingOptions s = sampling_options(args);
  if (args.get_all("stop").empty()) s.stop = {"\n"};
  return s;
}

// The CLI has no streams to keep flowing, so a joining question is encoded whole (the fastest
// way through a file); every job of a block is queued at once.
qa::SchedulerOptions scheduler_options(int concurrency) {
  qa::SchedulerOptions o;
  o.max_batch = concurrency;
  o.max_queue = 1 << 30;
  o.encode_tokens_per_step = 0;
  return o;
}

retriever::SearchOptions search_options(const Args& args) {
  retriever::SearchOptions s;
  s.k = static_cast<int>(args.get_int("k", 0, 1000));
  s.nprobe = static_cast<int>(args.get_int("nprobe", 0, 1 << 20));
  s.ef_search = static_cast<int>(args.get_int("ef-search", 0, 1 << 20));
  s.bm25_weight = args.get_double("bm25-weight", 0, 1e6);
  s.dense_weight = args.get_double("dense-weight", 0, 1e6);
  s.rrf_k = static_cast<int>(args.get_int("rrf-k", 0, 1 << 20));
  retriever::check_search_options(s);
  return s;
}

int run_qa(const std::vector<std::string>& argv) {
  Args args;
  add_model_flags(args);
  add_reader_flags(args);
  add_sampling_flags(args, 25);
  args.option("questions",
              "question file (.jsonl/.json: question, answers|answer, id, ctxs; "
              ".tsv: question TAB answers)")
      .option("out", "answers, one JSON line per question (summary: <out>.summary.json)")
      .option("format", "question file format: auto, jsonl, json, tsv", "auto")
      .option("concurrency", "questions generated together (continuous batching)", "8")
      .option("limit", "answer only the first N questions (0: all)", "0")
      .flag("skip-invalid", "skip bad question lines (reported) instead of stopping")
      .flag("resume", "continue a partial --out file, skipping the questions it already has")
      .option("encoder-cache-mb",
              "LRU cache of encoded passages (MiB) for passages the store does not have (0: off)",
              "0")
      .option("passes",
              "answer the questions this many times (timing only: later passes re-use the "
              "cache; answers are written once)",
              "1");
  args.parse(argv);
  if (args.help_requested()) {
    std::cout << args.usage(
        "cepe qa --questions FILE --index DIR --model DIR --out answers.jsonl [flags]");
    return 0;
  }
  const std::filesystem::path out = args.get("out");
  qa::QuestionFileOptions qopts;
  qopts.format = qa::parse_question_format(args.get("format"));
  qopts.skip_invalid = args.is_set("skip-invalid");
  qa::QuestionSet set = qa::load_questions(args.get("questions"), qopts);
  for (const auto& e : set.errors) std::cerr << "skipped: " << e << "\n";
  const long long limit = args.get_int("limit", 0, 1LL << 40);
  if (limit > 0 && set.questions.size() > static_cast<size_t>(limit)) set.questions.resize(limit);

  qa::ResumeState resume;
  if (args.is_set("resume")) {
    resume = qa::load_for_resume(out);
    qa::check_resume_matches(resume, set.questions, out);
    if (resume.torn_bytes)
      std::cerr << "resume: cut a torn last line (" << resume.torn_bytes << " bytes)\n";
  }
  std::vector<const qa::Question*> todo;
  bool need_index = false;
  for (const auto& q : set.questions) {
    if (resume.done_ids.count(q.id)) continue;
    todo.push_back(&q);
    need_index = need_index || !q.ctxs.has_value();
  }
  const retriever::SearchOptions search = search_options(args);
  const int concurrency = static_cast<int>(args.get_int("concurrency", 1, 4096));

  std::unique_ptr<retriever::Retriever> retriever;
  if (need_index) {
    CEPE_CHECK(args.has("index"), "--index is required: some questions have no 'ctxs' passages");
    retriever = open_reader_index(args);
  }
  LoadedModel lm = load_model(args, /*need_tokenizer=*/true);
  const qa::PlanOptions popts = plan_options(args);
  // Each answer's log-probability (a log-softmax per generated token, ~13 us at a vocabulary of
  // 32000) ranks the answers by confidence in the summary (EM by coverage).
  SamplingOptions sampling = qa_sampling_options(args);
  sampling.logprobs = 0;
  qa::Pipeline pipeline(*lm.model, *lm.tokenizer, retriever.get(), popts, sampling,
                        scheduler_options(concurrency));
  attach_encoder_store(args, lm, pipeline, popts.chunk_tokens);
  qa::EncoderStates& states = pipeline.scheduler().encoder_states();
  const long long cache_mb = args.get_int("encoder-cache-mb", 0, 1 << 20);
  if (cache_mb > 0 && lm.model->config().is_cepe())
    states.use_cache(std::make_shared<qa::EncodedPassageCache>(static_cast<size_t>(cache_mb) << 20),
                     index::encoder_fingerprint(args.get("model"), lm.model->config(),
                                                popts.chunk_tokens, index::StateDType::F32)
                         .digest());
  const int passes = static_cast<int>(args.get_int("passes", 1, 100));

  qa::ResultWriter writer(out, /*append=*/args.is_set("resume"));
  std::vector<qa::QaRecord> records = resume.records;
  qa::RunStats run;
  std::signal(SIGINT, on_sigint);
  std::signal(SIGTERM, on_sigint);
  ProgressBar bar("qa", "questions", static_cast<int64_t>(todo.size()));
  const auto t0 = std::chrono::steady_clock::now();

  // Blocks of questions: retrieve them as one batch, then let the scheduler batch their
  // generation.
  const size_t block = std::max<size_t>(256, static_cast<size_t>(concurrency) * 8);
  std::vector<PassStats> pass_stats(passes);
  for (int pass = 0; pass < passes; ++pass) {
    PassStats& ps = pass_stats[pass];
    const auto pass_t0 = std::chrono::steady_clock::now();
    const qa::EncoderStateCounters& counters = states.counters();
    ps.store0 = counters.store_hits.load(), ps.cache0 = counters.cache_hits.load(),
    ps.live0 = counters.live_passages.load();
    for (size_t b = 0; b < todo.size() && !g_interrupted.load(); b += block) {
      const size_t n = std::min(block, todo.size() - b);
      std::vector<std::vector<qa::Passage>> passages(n);
      std::vector<std::string> queries;
      std::vector<size_t> query_of;
      for (size_t i = 0; i < n; ++i) {
        const qa::Question& q = *todo[b + i];
        if (q.ctxs) {
          passages[i] = *q.ctxs;
          if (passages[i].size() > static_cast<size_t>(search.k)) passages[i].resize(search.k);
        } else {
          queries.push_back(q.question);
          query_of.push_back(i);
        }
      }
      if (!queries.empty()) {
        auto found = pipeline.retrieve(queries, search);
        for (size_t j = 0; j < found.size(); ++j) passages[query_of[j]] = std::move(found[j]);
      }
      std::vector<qa::Plan> plans;
      for (size_t i = 0; i < n; ++i)
        plans.push_back(pipeline.plan(todo[b + i]->question, passages[i]));
      pipeline.answer(
          std::move(plans),
          [&](size_t i, const qa::Answer& answer) {
            ps.first_token_ms.push_back(answer.first_token_ms);
            if (pass > 0) return;  // a timing pass: the answers are already written
            const qa::Question& q = *todo[b + i];
            qa::QaRecord rec = qa::make_record(q);
            rec.answer = answer.text;
            std::vector<std::string> texts;
            for (const auto& p : passages[i]) {
              rec.passage_ids.push_back(p.id);
              texts.push_back(p.text);
            }
            rec.prompt_tokens = answer.prompt_tokens + answer.encoder_tokens;
            rec.generated_tokens = answer.generated_tokens;
            rec.answer_logprob = answer.logprob;
            qa::score_record(&rec, texts);
            writer.write(rec);
            records.push_back(rec);
            ++run.questions;
            run.generated_tokens += answer.generated_tokens;
            bar.update(static_cast<int64_t>(run.questions));
          },
          [] { return g_interrupted.load(); });
    }
    ps.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - pass_t0).count();
    ps.store = counters.store_hits.load() - ps.store0;
    ps.cache = counters.cache_hits.load() - ps.cache0;
    ps.live = counters.live_passages.load() - ps.live0;
  }
  bar.finish();
  writer.sync();
  run.elapsed_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  const qa::QaSummary summary = qa::summarize(records, run);
  qa::write_summary(qa::summary_path_for(out), summary);
  std::cout << qa::format_summary(summary);
  for (int p = 0; p < passes; ++p) print_pass(p + 1, pass_stats[p]);
  struct rusage usage;
  if (getrusage(RUSAGE_SELF, &usage) == 0)
    std::printf("peak RSS: %.1f MiB\n", static_cast<double>(usage.ru_maxrss) / 1024.0);
  if (g_interrupted.load()) {
    std::cerr << "interrupted: " << out.string() << " holds " << records.size()
              << " answers; run again with --resume to finish\n";
    return 130;
  }
  return 0;
}

int run_ask(const std::vector<std::string>& argv) {
  Args args;
  add_model_flags(args);
  add_reader_flags(args);
  add_sampling_flags(args, 25);
  args.positional("QUESTION").flag("quiet", "print only the answer");
  args.parse(argv);
  if (args.help_requested()) {
    std::cout << args.usage("cepe ask --index DIR --model DIR [flags] \"question\"");
    return 0;
  }
  CEPE_CHECK(args.positionals().size() == 1, "give exactly one question (quote it)");
  const std::string question = args.positionals()[0];
  CEPE_CHECK(!question.empty(), "the question is empty");
  auto retriever = open_reader_index(args);
  const auto hits = retriever->search(question, search_options(args));
  LoadedModel lm = load_model(args, /*need_tokenizer=*/true);
  const qa::PlanOptions popts = plan_options(args);
  qa::Pipeline pipeline(*lm.model, *lm.tokenizer, retriever.get(), popts, qa_sampling_options(args),
                        scheduler_options(1));
  attach_encoder_store(args, lm, pipeline, popts.chunk_tokens);
  qa::Plan plan = pipeline.plan(question, qa::passages_from_hits(hits));
  const int decoder_passages = plan.decoder_passages;
  const size_t chunks = plan.chunks.size();
  qa::Answer answer;
  std::vector<qa::Plan> plans;
  plans.push_back(std::move(plan));
  pipeline.answer(std::move(plans), [&](size_t, const qa::Answer& a) { answer = a; });
  if (!args.is_set("quiet")) {
    for (const auto& h : hits)
      std::printf("[%d] %.4f %s — %s\n", h.rank, h.score, h.id.c_str(), h.title.c_str());
    std::printf("(%d passages in the decoder prompt, %zu encoder chunks, %lld encoder tokens)\n",
                decoder_passages, chunks, static_cast<long long>(answer.encoder_tokens));
    std::printf("Answer: ");
  }
  std::printf("%s\n", answer.text.c_str());
  return 0;
}

}  // namespace

CEPE_REGISTER_COMMAND("qa", "answer a question file end to end and score it (EM/F1)", run_qa);
CEPE_REGISTER_COMMAND("ask", "answer one question from an index", run_ask);

}  // namespace cepe::cli
