// Flags shared by every subcommand that runs a model: where it is, which device, how to sample.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "cli/command.h"
#include "engine/generation.h"
#include "engine/models/model_loader.h"

namespace cepe::cli {

/// Declares --model, --device, --threads, --weights, --cross-attention, --kv-cache and
/// --stored-weights.
void add_model_flags(Args& args);
/// Loads what add_model_flags describes (cepe::load_model, errors naming the flags);
/// `need_tokenizer` makes a missing tokenizer an error.
LoadedModel load_model(const Args& args, bool need_tokenizer);

/// Declares --max-new-tokens, --temperature, --top-k, --top-p, --seed and --stop.
void add_sampling_flags(Args& args, int default_max_new_tokens);
/// Sampling options from the flags (range errors name the flag).
SamplingOptions sampling_options(const Args& args);

/// Splits token ids into chunks of at most `chunk_tokens` (the last may be shorter).
std::vector<std::vector<int32_t>> split_chunks(const std::vector<int32_t>& ids, int chunk_tokens);

}  // namespace cepe::cli
