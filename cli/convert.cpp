// `cepe convert llama2c`: turns a llama2.c checkpoint and tokenizer into a HuggingFace-layout
// model directory that every other subcommand can load.
#include <iostream>

#include "cli/command.h"
#include "common/error.h"
#include "engine/llama2c.h"

namespace cepe::cli {
namespace {

const char* const kUsage =
    "cepe convert llama2c --checkpoint MODEL.bin --tokenizer TOKENIZER.bin --out DIR";

int run_convert(const std::vector<std::string>& argv) {
  Args args;
  args.positional("FORMAT: the source format; only 'llama2c' (Karpathy's llama2.c, legacy .bin)")
      .option("checkpoint", "llama2.c checkpoint (.bin, legacy version 0 export)")
      .option("tokenizer", "llama2.c tokenizer (.bin, e.g. tokenizer.bin or tok512.bin)")
      .option("out",
              "output model directory (created; config.json, model.safetensors, "
              "tokenizer.model are replaced)");
  args.parse(argv);
  if (args.help_requested()) {
    std::cout << args.usage(kUsage);
    return 0;
  }
  const auto& pos = args.positionals();
  CEPE_CHECK(!pos.empty(), "missing FORMAT (usage: " << kUsage << ")");
  CEPE_CHECK(pos.size() == 1, "unexpected argument '" << pos[1] << "' (usage: " << kUsage << ")");
  CEPE_CHECK(pos[0] == "llama2c", "unknown format '" << pos[0] << "' (supported: llama2c)");

  const std::string checkpoint = args.get("checkpoint");
  const std::string tokenizer = args.get("tokenizer");
  const std::string out = args.get("out");
  const Llama2cHeader h = convert_llama2c(checkpoint, tokenizer, out);
  std::cout << "converted " << checkpoint << ": dim " << h.dim << ", " << h.n_layers << " layers, "
            << h.n_heads << " heads (" << h.n_kv_heads << " kv), hidden " << h.hidden_dim
            << ", vocab " << h.vocab_size << ", seq_len " << h.seq_len
            << (h.shared_classifier ? ", tied embeddings" : ", separate lm_head") << "\nwrote "
            << out << "/{config.json, model.safetensors, tokenizer.model}\n";
  return 0;
}

}  // namespace

CEPE_REGISTER_COMMAND("convert", "convert a llama2.c checkpoint into a model directory",
                      run_convert);

}  // namespace cepe::cli
