// `cepe qa`: answers a question file end to end (retrieve, encode, generate with continuous
// batching) and scores it with EM/F1 as CEPE's evaluation does. `cepe ask`: one question.
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
#include "qa/encoder_states.h"
#include "qa/question_file.h"
#include "qa/reader.h"
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
      .option("encoder-store",
              "precomputed passage states: auto (the index's store for this model, if one "
              "matches), off, or a .ces file (from cepe index encode)",
              "auto");
}

// Points the reader at the encoder-state store --encoder-store selects; a store that does not
// fit the model is reported (once) and not used.
void attach_encoder_store(const Args& args, const LoadedModel& lm, qa::Reader& reader) {
  const std::string mode = args.get("encoder-store");
  const std::filesystem::path index_dir = args.has("index") ? args.get("index") : "";
  auto store = qa::open_encoder_store(mode, index_dir, args.get("model"), lm.model->config(),
                                      reader.options().chunk_tokens,
                                      [](const std::string& line) { std::cerr << line << "\n"; });
  if (!store) return;
  std::cerr << "encoder store: " << store->path().string() << " ("
            << index::state_dtype_name(store->fingerprint().dtype) << ", " << store->size()
            << " passages)\n";
  reader.encoder_states().use_store(std::move(store));
}

qa::ReaderOptions reader_options(const Args& args) {
  qa::ReaderOptions o;
  o.decoder_passages = static_cast<int>(args.get_int("decoder-passages", 0, 1000));
  o.chunk_tokens = static_cast<int>(args.get_int("chunk-tokens", 1, 1 << 16));
  o.max_prompt_tokens = static_cast<int>(args.get_int("max-prompt-tokens", 1, 1 << 20));
  o.sampling = sampling_options(args);
  if (args.get_all("stop").empty()) o.sampling.stop = {"\n"};
  return o;
}

retriever::SearchOptions search_options(const Args& args) {
  retriever::SearchOptions s;
  s.k = static_cast<int>(args.get_int("k", 0, 1000));
  s.nprobe = static_cast<int>(args.get_int("nprobe", 0, 1 << 20));
  s.ef_search = static_cast<int>(args.get_int("ef-search", 0, 1 << 20));
  return s;
}

std::vector<qa::Passage> to_passages(const std::vector<retriever::Hit>& hits) {
  std::vector<qa::Passage> out;
  for (const auto& h : hits) out.push_back({h.id, h.title, h.text, h.score});
  return out;
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
  qa::ReaderOptions ropts = reader_options(args);

  std::unique_ptr<retriever::Retriever> retriever;
  if (need_index) {
    CEPE_CHECK(args.has("index"), "--index is required: some questions have no 'ctxs' passages");
    retriever = retriever::Retriever::open(args.get("index"));
  }
  LoadedModel lm = load_model(args, /*need_tokenizer=*/true);
  qa::Reader reader(*lm.model, *lm.tokenizer, ropts);
  attach_encoder_store(args, lm, reader);
  const long long cache_mb = args.get_int("encoder-cache-mb", 0, 1 << 20);
  if (cache_mb > 0 && lm.model->config().is_cepe())
    reader.encoder_states().use_cache(
        std::make_shared<qa::EncodedPassageCache>(static_cast<size_t>(cache_mb) << 20),
        index::encoder_fingerprint(args.get("model"), lm.model->config(), ropts.chunk_tokens,
                                   index::StateDType::F32)
            .digest());
  const int passes = static_cast<int>(args.get_int("passes", 1, 100));

  qa::ResultWriter writer(out, /*append=*/args.is_set("resume"));
  std::vector<qa::QaRecord> records = resume.records;
  qa::RunStats run;
  std::signal(SIGINT, on_sigint);
  std::signal(SIGTERM, on_sigint);
  ProgressBar bar("qa", "questions", static_cast<int64_t>(todo.size()));
  const auto t0 = std::chrono::steady_clock::now();

  // Blocks of questions: retrieve them as one batch, then let the reader batch their generation.
  const size_t block = std::max<size_t>(256, static_cast<size_t>(concurrency) * 8);
  std::vector<PassStats> pass_stats(passes);
  for (int pass = 0; pass < passes; ++pass) {
    PassStats& ps = pass_stats[pass];
    const auto pass_t0 = std::chrono::steady_clock::now();
    const qa::EncoderStateCounters& counters = reader.encoder_states().counters();
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
        auto hits = retriever->search_batch(queries, search);
        for (size_t j = 0; j < hits.size(); ++j) passages[query_of[j]] = to_passages(hits[j]);
      }
      std::vector<qa::ReaderRequest> requests;
      for (size_t i = 0; i < n; ++i)
        requests.push_back(reader.prepare(todo[b + i]->question, passages[i]));
      reader.run(
          requests, concurrency,
          [&](size_t i, const qa::ReaderAnswer& answer) {
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
            qa::score_record(&rec, texts);
            writer.write(rec);
            records.push_back(rec);
            ++run.questions;
            run.generated_tokens += answer.generated_tokens;
            bar.update(static_cast<int64_t>(run.questions));
          },
          &g_interrupted);
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
  auto retriever = retriever::Retriever::open(args.get("index"));
  const auto hits = retriever->search(question, search_options(args));
  LoadedModel lm = load_model(args, /*need_tokenizer=*/true);
  qa::Reader reader(*lm.model, *lm.tokenizer, reader_options(args));
  attach_encoder_store(args, lm, reader);
  const auto passages = to_passages(hits);
  qa::ReaderRequest req = reader.prepare(question, passages);
  qa::ReaderAnswer answer;
  reader.run({req}, 1, [&](size_t, const qa::ReaderAnswer& a) { answer = a; });
  if (!args.is_set("quiet")) {
    for (const auto& h : hits)
      std::printf("[%d] %.4f %s — %s\n", h.rank, h.score, h.id.c_str(), h.title.c_str());
    std::printf("(%d passages in the decoder prompt, %zu encoder chunks, %lld encoder tokens)\n",
                req.decoder_passages, req.chunks.size(),
                static_cast<long long>(answer.encoder_tokens));
    std::printf("Answer: ");
  }
  std::printf("%s\n", answer.text.c_str());
  return 0;
}

}  // namespace

CEPE_REGISTER_COMMAND("qa", "answer a question file end to end and score it (EM/F1)", run_qa);
CEPE_REGISTER_COMMAND("ask", "answer one question from an index", run_ask);

}  // namespace cepe::cli
