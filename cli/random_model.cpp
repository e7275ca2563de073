// `cepe random-model`: a random-weight CEPE checkpoint (demos, benchmarks, smoke tests).
#include <filesystem>
#include <iostream>

#include "cli/command.h"
#include "common/error.h"
#include "engine/random_model.h"
#include "engine/tokenizer.h"

namespace cepe::cli {
namespace {

int run_random_model(const std::vector<std::string>& argv) {
  Args args;
  args.option("out", "output model directory")
      .option("preset", "tiny, small, bench100m or cepe-llama2-7b", "tiny")
      .option("dtype", "F32, F16 or BF16 weights", "")
      .option("seed", "random seed", "0")
      .option("tokenizer", "sentencepiece tokenizer.model to ship with it (sets vocab_size)");
  args.parse(argv);
  if (args.help_requested()) {
    std::cout << args.usage("cepe random-model --out DIR [--preset NAME] [--tokenizer FILE]");
    return 0;
  }
  RandomModelSpec spec = random_model_preset(args.get("preset"));
  if (args.has("dtype")) {
    CEPE_CHECK(parse_dtype(args.get("dtype"), &spec.dtype) && spec.dtype != DType::I32,
               "--dtype '" << args.get("dtype") << "' (expected F32, F16 or BF16)");
  }
  spec.seed = static_cast<uint64_t>(args.get_int("seed", 0, 1LL << 62));
  const std::filesystem::path out = args.get("out");
  if (args.has("tokenizer")) {
    Tokenizer tok(args.get("tokenizer"));
    spec.vocab_size = tok.vocab_size();
    std::filesystem::create_directories(out);
    std::filesystem::copy_file(args.get("tokenizer"), out / "tokenizer.model",
                               std::filesystem::copy_options::overwrite_existing);
  }
  const int64_t params = write_random_model(spec, out);
  std::cout << "wrote " << out.string() << ": " << params / 1e6 << "M parameters ("
            << dtype_name(spec.dtype) << ")\n";
  return 0;
}

}  // namespace

CEPE_REGISTER_COMMAND("random-model", "write a random-weight CEPE checkpoint", run_random_model);

}  // namespace cepe::cli
