// `cepe generate`: text from a prompt, with optional encoder context, streamed as it is made.
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <iostream>

#include "cli/command.h"
#include "cli/model_flags.h"
#include "common/error.h"
#include "common/fileio.h"
#include "common/utf8.h"

namespace cepe::cli {
namespace {

// One line per generated token: its log-probability, the token (quoted, control characters
// escaped), then the most likely tokens at its step; first the sum, the answer's log-probability.
void print_logprobs(const std::vector<TokenLogprob>& logprobs, const Tokenizer& tok) {
  double sum = 0;
  for (const auto& lp : logprobs) sum += lp.logprob;
  std::fprintf(stderr, "[logprobs] %zu tokens, sum %.4f (mean %.4f per token)\n", logprobs.size(),
               sum, logprobs.empty() ? 0.0 : sum / static_cast<double>(logprobs.size()));
  for (const auto& lp : logprobs) {
    std::string line = quoted_input(tok.token_bytes(lp.id), 32);
    if (!lp.top.empty()) line += "  |";
    for (const auto& [id, logprob] : lp.top) {
      char figure[32];
      std::snprintf(figure, sizeof figure, " %.4f", logprob);
      line.append(" ").append(quoted_input(tok.token_bytes(id), 32)).append(figure);
    }
    std::fprintf(stderr, "%10.4f %s\n", lp.logprob, line.c_str());
  }
}

int run_generate(const std::vector<std::string>& argv) {
  Args args;
  add_model_flags(args);
  add_sampling_flags(args, 128);
  args.option("prompt", "decoder prompt text (BOS is prepended)")
      .multi("context", "encoder context text; split into --chunk-tokens chunks")
      .multi("context-file", "file whose text is encoder context")
      .option("chunk-tokens", "tokens per encoder chunk", "256")
      .option("max-context-tokens", "refuse more encoder tokens than this", "131072")
      .option("max-tokens",
              "refuse prompt + max-new-tokens above this (default: the model's "
              "max_position_embeddings, times the rope_scaling factor)",
              "0")
      .multi("stop-id", "token id that ends generation, besides EOS")
      .flag("unconditional", "generate from BOS alone (no prompt text)")
      .flag("echo", "print the prompt before the generated text")
      .option("logprobs",
              "print each generated token's log-probability and this many most likely "
              "alternatives to stderr after the text (-1: none)",
              "-1")
      .flag("stats", "print token counts and timings to stderr");
  args.parse(argv);
  if (args.help_requested()) {
    std::cout << args.usage("cepe generate --model DIR --prompt TEXT [--context TEXT]... [flags]");
    return 0;
  }
  SamplingOptions sampling = sampling_options(args);
  for (const auto& id : args.get_all("stop-id")) {
    try {
      sampling.stop_token_ids.push_back(std::stoi(id));
    } catch (const std::exception&) {
      CEPE_THROW("--stop-id '" << id << "' is not an integer");
    }
  }
  sampling.logprobs = static_cast<int>(args.get_int("logprobs", -1, 1000));
  const bool unconditional = args.is_set("unconditional");
  std::string prompt;
  if (!unconditional) {
    CEPE_CHECK(args.has("prompt"), "--prompt is required (or --unconditional)");
    prompt = args.get("prompt");
    CEPE_CHECK(!prompt.empty(),
               "--prompt is empty: give some text, or --unconditional to start from BOS alone");
  }
  const int chunk_tokens = static_cast<int>(args.get_int("chunk-tokens", 1, 1 << 20));
  const long long max_context = args.get_int("max-context-tokens", 0, 1LL << 40);

  LoadedModel lm = load_model(args, /*need_tokenizer=*/true);
  const Tokenizer& tok = *lm.tokenizer;
  const ModelConfig& cfg = lm.model->config();

  std::vector<int32_t> prompt_ids =
      unconditional ? std::vector<int32_t>{tok.bos_id()} : tok.encode(prompt, /*add_bos=*/true);
  long long max_tokens = args.get_int("max-tokens", 0, 1LL << 40);
  if (max_tokens == 0) {
    double factor =
        cfg.decoder.rope_scaling == RopeScalingType::None ? 1.0 : cfg.decoder.rope_scaling_factor;
    max_tokens = static_cast<long long>(cfg.decoder.max_position_embeddings * factor);
  }
  const long long needed = static_cast<long long>(prompt_ids.size()) + sampling.max_new_tokens;
  CEPE_CHECK(needed <= max_tokens, "the prompt (" << prompt_ids.size()
                                                  << " tokens) plus --max-new-tokens ("
                                                  << sampling.max_new_tokens << ") is " << needed
                                                  << " tokens, over the limit of " << max_tokens
                                                  << " (--max-tokens; the model was trained on "
                                                  << cfg.decoder.max_position_embeddings << ")");

  std::vector<std::string> contexts = args.get_all("context");
  for (const auto& f : args.get_all("context-file"))
    contexts.push_back(read_whole_file(f, "--context-file"));
  std::vector<std::vector<int32_t>> chunks;
  long long context_tokens = 0;
  for (size_t i = 0; i < contexts.size(); ++i) {
    CEPE_CHECK(!contexts[i].empty(), "context " << i + 1 << " is empty");
    // Encoder chunks carry no BOS: CEPE's encoder reads plain slices of tokenized documents.
    std::vector<int32_t> ids = tok.encode(contexts[i], /*add_bos=*/false);
    context_tokens += static_cast<long long>(ids.size());
    CEPE_CHECK(context_tokens <= max_context,
               "encoder context is over the limit: " << context_tokens << " tokens after context "
                                                     << i + 1 << ", --max-context-tokens is "
                                                     << max_context);
    for (auto& c : split_chunks(ids, chunk_tokens)) chunks.push_back(std::move(c));
  }
  CEPE_CHECK(chunks.empty() || cfg.is_cepe(),
             "--context given but " << args.get("model")
                                    << " is a plain decoder (no CEPE encoder in config.json)");

  if (args.is_set("echo")) std::cout << prompt << std::flush;
  GenerationResult result =
      generate(*lm.model, tok, prompt_ids, chunks, sampling, [](const std::string& piece) {
        std::cout << piece << std::flush;
        return true;
      });
  std::cout << "\n" << std::flush;
  if (sampling.logprobs >= 0) print_logprobs(result.logprobs, tok);
  if (args.is_set("stats")) {
    const double tps = result.decode_ms > 0 && result.tokens.size() > 1
                           ? (result.tokens.size() - 1) * 1000.0 / result.decode_ms
                           : 0.0;
    std::fprintf(stderr,
                 "[%s] prompt %lld tokens, encoder %lld tokens in %zu chunks, generated %zu "
                 "tokens (%s); encode %.1f ms, prefill %.1f ms, decode %.1f ms (%.1f tokens/s)\n",
                 lm.backend->describe().c_str(), static_cast<long long>(result.prompt_tokens),
                 static_cast<long long>(result.encoder_tokens), chunks.size(), result.tokens.size(),
                 finish_reason_name(result.finish), result.encode_ms, result.prefill_ms,
                 result.decode_ms, tps);
  }
  return 0;
}

}  // namespace

CEPE_REGISTER_COMMAND("generate", "generate text from a prompt and optional encoder context",
                      run_generate);

}  // namespace cepe::cli
