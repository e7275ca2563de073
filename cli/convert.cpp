// `cepe convert llama2c`: turns a llama2.c checkpoint and tokenizer into a HuggingFace-layout
// model directory that every other subcommand can load. `cepe convert weights`: re-types the
// floating-point tensors of a model directory (f32, bf16 or f16).
#include <rapidjson/document.h>
#include <rapidjson/prettywriter.h>
#include <rapidjson/stringbuffer.h>

#include <filesystem>
#include <iostream>
#include <thread>

#include "cli/command.h"
#include "common/error.h"
#include "common/fileio.h"
#include "common/json.h"
#include "common/progress.h"
#include "engine/llama2c.h"
#include "engine/quant.h"
#include "engine/safetensors.h"

namespace cepe::cli {
namespace {

const char* const kUsage =
    "cepe convert llama2c --checkpoint MODEL.bin --tokenizer TOKENIZER.bin --out DIR\n"
    "       cepe convert weights --model IN --out OUT --weights f32|bf16|f16";

// Re-types every F32/F16/BF16 tensor of IN (single file or shards) into OUT/model.safetensors;
// config.json gets the new torch_dtype and tokenizer.model is copied. Each file is written
// atomically. The converted tensors are held in memory until the file is written (the sources
// stay memory-mapped), so OUT's size in RAM is needed.
int convert_weights(const Args& args) {
  namespace fs = std::filesystem;
  const fs::path in = args.get("model");
  const fs::path out = args.get("out");
  const std::string kind_name = args.get("weights");
  const WeightKind kind = parse_weight_kind(kind_name, "--weights");
  CEPE_CHECK(kind == WeightKind::F32 || kind == WeightKind::BF16 || kind == WeightKind::F16,
             "--weights " << kind_name
                          << ": a checkpoint can be re-typed to f32, bf16 or f16 only (q8_0 and "
                             "q4_0 are applied at load time: pass --weights to the model command)");
  CEPE_CHECK(fs::is_directory(in), "--model " << in.string() << ": not a directory");
  CEPE_CHECK(fs::absolute(in).lexically_normal() != fs::absolute(out).lexically_normal(),
             "--out " << out.string() << " is the input directory; write to a new one");
  const DType target = weight_kind_dtype(kind, DType::F32);
  const int threads_flag = static_cast<int>(args.get_int("threads", 0, 1024));
  const int threads =
      threads_flag > 0 ? threads_flag : static_cast<int>(std::thread::hardware_concurrency());
  const WeightStore store = WeightStore::open(in);
  for (const auto& f : store.files())
    CEPE_CHECK(f->unsupported().empty(), f->path().string()
                                             << ": tensor '" << f->unsupported().begin()->first
                                             << "' has dtype " << f->unsupported().begin()->second
                                             << ", which cannot be re-typed");
  // Streamed: each tensor is converted when the file reaches it and dropped once written (its
  // mapped source pages released as it goes), so a 7B checkpoint re-typed to F32 never needs
  // its 27 GB in memory.
  std::vector<SafeTensorsEntry> entries;
  size_t converted = 0;
  for (const std::string& name : store.names()) {
    const Tensor t = store.get(name);
    const DType to = t.dtype() == DType::I32 ? DType::I32 : target;
    converted += to != DType::I32;
    entries.push_back({name, to, t.shape(), [&store, name, to, threads] {
                         return convert_weight(store.get(name), to, threads);
                       }});
  }
  // config.json: the same keys with the new torch_dtype.
  const fs::path config_path = in / "config.json";
  const std::string config_text = read_whole_file(config_path);
  rapidjson::Document doc;
  parse_json_or_throw(config_text, &doc, config_path.string());
  CEPE_CHECK(doc.IsObject(), config_path.string() << ": not a JSON object");
  const char* torch_dtype = kind == WeightKind::F32    ? "float32"
                            : kind == WeightKind::BF16 ? "bfloat16"
                                                       : "float16";
  if (doc.HasMember("torch_dtype"))
    doc["torch_dtype"].SetString(torch_dtype, doc.GetAllocator());
  else
    doc.AddMember("torch_dtype", rapidjson::StringRef(torch_dtype), doc.GetAllocator());
  rapidjson::StringBuffer buffer;
  rapidjson::PrettyWriter<rapidjson::StringBuffer> writer(buffer);
  doc.Accept(writer);

  fs::create_directories(out);
  ProgressBar progress("re-typing " + in.filename().string(), "tensors",
                       static_cast<int64_t>(entries.size()));
  write_safetensors_streamed(out / "model.safetensors", entries, {{"format", "pt"}},
                             [&](size_t i) { progress.update(static_cast<int64_t>(i) + 1); });
  progress.finish();
  write_file_atomic(out / "config.json", std::string(buffer.GetString()) + "\n");
  if (fs::exists(in / "tokenizer.model"))
    write_file_atomic(out / "tokenizer.model", read_whole_file(in / "tokenizer.model"));
  std::cout << "re-typed " << converted << " tensors of " << in.string() << " to "
            << dtype_name(target) << "\nwrote " << out.string()
            << "/{config.json, model.safetensors"
            << (fs::exists(in / "tokenizer.model") ? ", tokenizer.model" : "") << "}\n";
  return 0;
}

int run_convert(const std::vector<std::string>& argv) {
  Args args;
  args.positional(
          "FORMAT: 'llama2c' (Karpathy's llama2.c, legacy .bin) or 'weights' (re-type a model "
          "directory)")
      .option("checkpoint", "llama2c: llama2.c checkpoint (.bin, legacy version 0 export)")
      .option("tokenizer", "llama2c: llama2.c tokenizer (.bin, e.g. tokenizer.bin or tok512.bin)")
      .option("model", "weights: the model directory to re-type")
      .option("weights", "weights: the new dtype of every floating tensor: f32, bf16 or f16")
      .option("threads", "weights: CPU threads converting each tensor (0 = all cores)", "0")
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
  CEPE_CHECK(pos[0] == "llama2c" || pos[0] == "weights",
             "unknown format '" << pos[0] << "' (supported: llama2c, weights)");
  if (pos[0] == "weights") {
    return convert_weights(args);
  }

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

CEPE_REGISTER_COMMAND("convert",
                      "convert a llama2.c checkpoint into a model directory, or re-type a "
                      "model's weights",
                      run_convert);

}  // namespace cepe::cli
