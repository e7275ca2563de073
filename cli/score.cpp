// `cepe score`: the verification interface. Reads token ids (and context chunks) as JSON, prints
// the logits of every position and the mean negative log-likelihood. Other checks call it, so its
// input and output formats stay stable.
#include <rapidjson/document.h>
#include <rapidjson/ostreamwrapper.h>
#include <rapidjson/writer.h>

#include <cmath>
#include <fstream>
#include <iostream>

#include "cli/command.h"
#include "cli/model_flags.h"
#include "common/error.h"
#include "common/fileio.h"
#include "common/json.h"

namespace cepe::cli {
namespace {

std::vector<int32_t> read_ids(const rapidjson::Value& v, const std::string& field, int vocab) {
  CEPE_CHECK(v.IsArray(), "field '" << field << "' must be an array of token ids");
  std::vector<int32_t> ids;
  for (rapidjson::SizeType i = 0; i < v.Size(); ++i) {
    CEPE_CHECK(v[i].IsInt(), "field '" << field << "[" << i << "]' must be an integer");
    const int id = v[i].GetInt();
    CEPE_CHECK(id >= 0 && id < vocab, "field '" << field << "[" << i << "]' = " << id
                                                << " is outside the vocabulary [0, " << vocab
                                                << ")");
    ids.push_back(id);
  }
  CEPE_CHECK(!ids.empty(), "field '" << field << "' is empty");
  return ids;
}

int run_score(const std::vector<std::string>& argv) {
  Args args;
  add_model_flags(args);
  args.option("input", "JSON file {\"input_ids\": [...], \"context_ids\": [[...], ...]}")
      .option("output", "write the JSON result here instead of stdout");
  args.parse(argv);
  if (args.help_requested()) {
    std::cout << args.usage("cepe score --model DIR --input FILE");
    return 0;
  }
  const std::string input_path = args.get("input");
  const std::string text = read_whole_file(input_path, "--input");
  rapidjson::Document doc;
  parse_json_or_throw(text, &doc, input_path);
  CEPE_CHECK(doc.IsObject(), input_path << ": expected a JSON object");
  for (auto it = doc.MemberBegin(); it != doc.MemberEnd(); ++it) {
    const std::string key = it->name.GetString();
    CEPE_CHECK(key == "input_ids" || key == "context_ids",
               input_path << ": unknown field " << quoted_input(key)
                          << " (expected input_ids, context_ids)");
  }
  CEPE_CHECK(doc.HasMember("input_ids"), input_path << ": field 'input_ids' is required");

  LoadedModel lm = load_model(args, /*need_tokenizer=*/false);
  CepeModel& model = *lm.model;
  const int vocab = model.config().decoder.vocab_size;
  const std::vector<int32_t> ids = read_ids(doc["input_ids"], "input_ids", vocab);

  std::vector<std::vector<int32_t>> chunks;
  if (doc.HasMember("context_ids") && !doc["context_ids"].IsNull()) {
    const auto& ctx = doc["context_ids"];
    CEPE_CHECK(ctx.IsArray(), input_path << ": field 'context_ids' must be an array of arrays");
    const int enc_vocab = model.config().is_cepe() ? model.config().encoder->vocab_size : vocab;
    for (rapidjson::SizeType c = 0; c < ctx.Size(); ++c)
      chunks.push_back(read_ids(ctx[c], "context_ids[" + std::to_string(c) + "]", enc_vocab));
    CEPE_CHECK(chunks.empty() || model.config().is_cepe(),
               input_path << ": 'context_ids' given but the model has no CEPE encoder");
  }

  auto state = model.new_state(static_cast<int64_t>(ids.size()));
  if (!chunks.empty()) model.set_context(*state, model.encode(chunks));
  Tensor logits = model.forward(*state, ids, /*all_logits=*/true);

  // Mean NLL of ids[1:] (each predicted from the positions before it), in double.
  double nll = 0.0;
  for (size_t i = 0; i + 1 < ids.size(); ++i) {
    const float* row = logits.data<float>() + i * vocab;
    double mx = row[0];
    for (int j = 1; j < vocab; ++j) mx = std::max(mx, static_cast<double>(row[j]));
    double sum = 0.0;
    for (int j = 0; j < vocab; ++j) sum += std::exp(row[j] - mx);
    nll += mx + std::log(sum) - row[ids[i + 1]];
  }
  const size_t predicted = ids.size() - 1;

  std::ofstream file;
  if (args.has("output")) {
    file.open(args.get("output"), std::ios::binary | std::ios::trunc);
    CEPE_CHECK(file, "--output " << args.get("output") << ": cannot write");
  }
  std::ostream& out = args.has("output") ? static_cast<std::ostream&>(file) : std::cout;
  rapidjson::OStreamWrapper os(out);
  rapidjson::Writer<rapidjson::OStreamWrapper> w(os);
  w.StartObject();
  w.Key("logits");
  w.StartArray();
  for (size_t i = 0; i < ids.size(); ++i) {
    w.StartArray();
    const float* row = logits.data<float>() + i * vocab;
    for (int j = 0; j < vocab; ++j) w.Double(row[j]);
    w.EndArray();
  }
  w.EndArray();
  w.Key("nll");
  if (predicted > 0)
    w.Double(nll / static_cast<double>(predicted));
  else
    w.Null();
  w.EndObject();
  out << "\n";
  out.flush();
  CEPE_CHECK(out.good(), "writing the result failed");
  return 0;
}

}  // namespace

CEPE_REGISTER_COMMAND("score", "logits and NLL of token ids (the verification interface)",
                      run_score);

}  // namespace cepe::cli
