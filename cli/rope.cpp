// `cepe rope`: what the RoPE scaling law (Liu et al. 2023) says about a model's context length —
// its critical dimension, how far a base extrapolates, and which base a target length needs.
#include <rapidjson/document.h>
#include <rapidjson/ostreamwrapper.h>
#include <rapidjson/prettywriter.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "cli/command.h"
#include "common/error.h"
#include "common/fileio.h"
#include "common/json.h"
#include "engine/rope_scaling.h"

namespace cepe::cli {
namespace {

namespace fs = std::filesystem;
using rope::RopeSetup;

// What config.json says about RoPE. Parsed here rather than through the model config loader so
// that `cepe rope` works on any HuggingFace RoPE model, not only the ones the engine can run.
struct RopeConfig {
  RopeSetup setup;
  std::string source;           // the config.json read
  bool base_defaulted = false;  // rope_theta absent: the HuggingFace default applies
  std::string scaling_type;     // rope_scaling.type / rope_type, empty when none
  double scaling_factor = 1.0;
};

RopeConfig read_rope_config(const fs::path& model) {
  // A directory (the usual case) or the config file itself.
  const fs::path path =
      model.extension() == ".json" && !fs::is_directory(model) ? model : model / "config.json";
  const std::string text = read_whole_file(path, "--model");
  rapidjson::Document doc;
  parse_json_or_throw(text, &doc, path.string());
  CEPE_CHECK(doc.IsObject(), path.string() << ": must be a JSON object");
  const std::string where = path.string();
  auto positive_int = [&](const char* key) -> std::optional<long long> {
    auto it = doc.FindMember(key);
    if (it == doc.MemberEnd() || it->value.IsNull()) return std::nullopt;
    CEPE_CHECK(it->value.IsInt64() && it->value.GetInt64() > 0,
               where << ": field '" << key << "' must be a positive integer");
    return it->value.GetInt64();
  };

  RopeConfig rc;
  rc.source = where;
  if (auto hd = positive_int("head_dim")) {  // explicit in configs whose heads are not hidden/heads
    rc.setup.head_dim = static_cast<int>(std::min<long long>(*hd, 1 << 30));
  } else {
    auto hidden = positive_int("hidden_size");
    auto heads = positive_int("num_attention_heads");
    CEPE_CHECK(hidden && heads,
               where << ": needs 'head_dim' or 'hidden_size' and 'num_attention_heads'");
    CEPE_CHECK(*hidden % *heads == 0, where << ": hidden_size " << *hidden
                                            << " is not a multiple of num_attention_heads "
                                            << *heads);
    rc.setup.head_dim = static_cast<int>(std::min<long long>(*hidden / *heads, 1 << 30));
  }
  auto max_pos = positive_int("max_position_embeddings");
  CEPE_CHECK(max_pos, where << ": field 'max_position_embeddings' is required");
  rc.setup.train_len = static_cast<double>(*max_pos);
  auto theta = doc.FindMember("rope_theta");
  if (theta == doc.MemberEnd() || theta->value.IsNull()) {
    rc.base_defaulted = true;
  } else {
    CEPE_CHECK(theta->value.IsNumber(), where << ": field 'rope_theta' must be a number");
    rc.setup.base = theta->value.GetDouble();
  }
  auto scaling = doc.FindMember("rope_scaling");
  if (scaling != doc.MemberEnd() && scaling->value.IsObject()) {
    for (const char* key : {"type", "rope_type"}) {
      auto t = scaling->value.FindMember(key);
      if (t != scaling->value.MemberEnd() && t->value.IsString())
        rc.scaling_type = t->value.GetString();
    }
    auto f = scaling->value.FindMember("factor");
    if (f != scaling->value.MemberEnd()) {
      CEPE_CHECK(f->value.IsNumber(), where << ": field 'rope_scaling.factor' must be a number");
      rc.scaling_factor = f->value.GetDouble();
    }
  }
  return rc;
}

// 1234567 -> "1,234,567"; lengths are whole tokens.
std::string fmt_tokens(double v) {
  if (!(v < 1e15)) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "%.3e", v);
    return buf;
  }
  const std::string digits = std::to_string(std::llround(v));
  std::string out;
  for (size_t i = 0; i < digits.size(); ++i) {
    if (i > 0 && (digits.size() - i) % 3 == 0) out += ',';
    out += digits[i];
  }
  return out;
}

// Powers of two as people say them: 16384 -> "16K", 1048576 -> "1M".
std::string length_label(double v) {
  const auto n = static_cast<long long>(v);
  if (static_cast<double>(n) != v || n <= 0) return "";
  if (n % (1 << 20) == 0) return std::to_string(n >> 20) + "M";
  if (n % 1024 == 0) return std::to_string(n >> 10) + "K";
  return "";
}

// Bases span many decades: four significant digits, compact exponent ("7.176e4", "1e6", "651.9").
std::string fmt_base(double v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.4g", v);
  std::string s = buf;
  if (auto e = s.find('e'); e != std::string::npos) {
    std::string mant = s.substr(0, e), exp = s.substr(e + 1);
    const bool neg = exp[0] == '-';
    exp = exp.substr(1);
    exp.erase(0, std::min(exp.find_first_not_of('0'), exp.size() - 1));
    s = mant + "e" + (neg ? "-" : "") + exp;
  }
  return s;
}

// A table cell: the value, or nothing where the law's result does not exist for these inputs
// (a double overflow at extreme bases, dynamic NTK for a 2-dim head), so one cell cannot abort
// the whole report.
template <typename Fn>
std::optional<double> cell(Fn&& fn) {
  try {
    return fn();
  } catch (const Error&) {
    return std::nullopt;
  }
}

std::string fmt_cell(const std::optional<double>& v) {
  return v ? fmt_base(*v) : "n/a";
}

void write_cell(rapidjson::PrettyWriter<rapidjson::OStreamWrapper>& w,
                const std::optional<double>& v) {
  if (v) {
    w.Double(*v);
  } else {
    w.Null();
  }
}

int run_rope(const std::vector<std::string>& argv) {
  Args args;
  args.option("model",
              "model directory (or config.json): head_dim, max_position_embeddings, "
              "rope_theta are read from its config.json")
      .option("head-dim", "dimensions per attention head (even)")
      .option("train-len", "context length the model was trained at (tokens)")
      .option("base", "RoPE base the model was trained with (default 10000, or rope_theta)")
      .option("target-len", "context length to reach (tokens); also the fine-tuning length")
      .multi("tune-base", "a base to evaluate for fine-tuning at --target-len")
      .flag("json", "print JSON instead of tables");
  args.parse(argv);
  if (args.help_requested()) {
    std::cout << args.usage(
        "cepe rope (--model DIR | --head-dim D --train-len T [--base B]) [--target-len L] "
        "[--tune-base B]... [--json]");
    std::cout << "\nApplies the RoPE scaling law of Liu et al. 2023 (arXiv 2310.05209): the "
                 "critical dimension, the\nextrapolation bound of a base, and the base a target "
                 "context length needs.\n";
    return 0;
  }
  CEPE_CHECK(args.positionals().empty(),
             "unexpected argument '" << args.positionals().front() << "' (see --help)");

  std::optional<RopeConfig> cfg;
  RopeSetup s;
  if (args.is_set("model")) {
    cfg = read_rope_config(args.get("model"));
    s = cfg->setup;
  } else {
    CEPE_CHECK(args.is_set("head-dim") && args.is_set("train-len"),
               "give --model DIR, or --head-dim and --train-len (see --help)");
  }
  // Explicit flags override the config, e.g. to ask "what if this model had base B".
  if (args.is_set("head-dim")) s.head_dim = static_cast<int>(args.get_int("head-dim", 1, 1 << 20));
  if (args.is_set("train-len"))
    s.train_len = static_cast<double>(args.get_int("train-len", 1, 1LL << 50));
  if (args.is_set("base")) s.base = args.get_double("base", 0, 1e300);
  rope::validate(s);
  std::optional<double> target;
  if (args.is_set("target-len"))
    target = static_cast<double>(args.get_int("target-len", 1, 1LL << 50));
  std::vector<double> tune_bases;
  for (const auto& b : args.get_all("tune-base")) {
    char* end = nullptr;
    const double v = std::strtod(b.c_str(), &end);
    CEPE_CHECK(!b.empty() && end && *end == '\0' && std::isfinite(v) && v > 1,
               "flag --tune-base: '" << b << "' is not a number greater than 1");
    tune_bases.push_back(v);
  }

  const int d_extra = rope::critical_dimension(s);
  const double own_bound = rope::extrapolation_bound(s, s.base);
  const double ntk_factor =
      cfg && cfg->scaling_type == "dynamic" && cfg->scaling_factor >= 1 ? cfg->scaling_factor : 1.0;

  // Targets: the usual powers of two beyond the training length, plus the one asked for.
  std::set<double> targets;
  for (double t = 8192; t <= (1 << 20); t *= 2)
    if (t > s.train_len) targets.insert(t);
  if (target) targets.insert(*target);
  const double tune_len = target.value_or(s.train_len);
  const auto tuned_critical = rope::base_for_length(s, tune_len);  // validates --target-len
  std::set<double> bases = {500, 1e4, 5e4, 1e5, 5e5, 1e6, 1e7, s.base};
  bases.insert(tune_bases.begin(), tune_bases.end());
  const auto thresholds = rope::small_base_thresholds(tune_len);

  if (args.is_set("json")) {
    rapidjson::OStreamWrapper os(std::cout);
    rapidjson::PrettyWriter<rapidjson::OStreamWrapper> w(os);
    w.SetIndent(' ', 2);
    w.StartObject();
    if (cfg) {
      w.Key("source");
      w.String(cfg->source.c_str());
      w.Key("rope_scaling");
      if (cfg->scaling_type.empty()) {
        w.Null();
      } else {
        w.StartObject();
        w.Key("type");
        w.String(cfg->scaling_type.c_str());
        w.Key("factor");
        w.Double(cfg->scaling_factor);
        w.EndObject();
      }
    }
    w.Key("head_dim");
    w.Int(s.head_dim);
    w.Key("train_len");
    w.Double(s.train_len);
    w.Key("base");
    w.Double(s.base);
    w.Key("critical_dim");
    w.Int(d_extra);
    w.Key("dims_at_fault");
    w.Int(s.head_dim - d_extra);
    w.Key("extrapolation_bound");
    w.Double(own_bound);
    w.Key("targets");
    w.StartArray();
    for (double t : targets) {
      w.StartObject();
      w.Key("target_len");
      w.Double(t);
      w.Key("base");
      write_cell(w, cell([&] { return rope::base_for_length(s, t); }));
      w.Key("smallest_base_for_bound");
      write_cell(w, cell([&] { return rope::smallest_base_for_bound(s, t); }));
      w.Key("dynamic_ntk_base");
      write_cell(w, cell([&] { return rope::dynamic_ntk_base(s, t, ntk_factor); }));
      w.Key("dynamic_ntk_factor");
      w.Double(ntk_factor);
      w.EndObject();
    }
    w.EndArray();
    w.Key("tuning");
    w.StartObject();
    w.Key("tune_len");
    w.Double(tune_len);
    w.Key("critical_base");
    w.Double(tuned_critical);
    w.Key("small_base_thresholds");
    w.StartObject();
    w.Key("beta1");
    w.Double(thresholds.beta1);
    w.Key("beta2");
    w.Double(thresholds.beta2);
    w.Key("beta3");
    w.Double(thresholds.beta3);
    w.EndObject();
    w.Key("bases");
    w.StartArray();
    for (double b : bases) {
      const auto tb = rope::tuned_bound(s, b, tune_len);
      w.StartObject();
      w.Key("base");
      w.Double(b);
      w.Key("bound");
      w.Double(tb.bound);
      w.Key("above_critical_base");
      w.Bool(tb.above_critical);
      w.Key("critical_dim");
      w.Int(tb.critical_dim);
      w.EndObject();
    }
    w.EndArray();
    w.EndObject();
    w.EndObject();
    std::cout << "\n";
    return std::cout.good() ? 0 : 1;
  }

  auto with_label = [](double t) {
    const std::string l = length_label(t);
    return fmt_tokens(t) + (l.empty() ? "" : " (" + l + ")");
  };
  std::printf(
      "RoPE scaling law (Liu et al. 2023): head_dim %d, trained at %s tokens, base %s%s\n",
      s.head_dim, with_label(s.train_len).c_str(), fmt_base(s.base).c_str(),
      cfg && cfg->base_defaulted && !args.is_set("base") ? " (rope_theta absent: default)" : "");
  if (cfg) {
    std::printf("  from %s", cfg->source.c_str());
    if (!cfg->scaling_type.empty())
      std::printf("; rope_scaling %s, factor %g", cfg->scaling_type.c_str(), cfg->scaling_factor);
    std::printf("\n");
  }
  std::printf("\nCritical dimension d_extra = %d of %d\n", d_extra, s.head_dim);
  if (d_extra > 0)
    std::printf("  pairs 0-%d (periods up to %s tokens) complete a full period in training\n",
                d_extra / 2 - 1, fmt_tokens(rope::pair_period(s, d_extra / 2 - 1)).c_str());
  if (d_extra < s.head_dim)
    std::printf(
        "  the last %d dims (periods %s to %s tokens) never do: they cause extrapolation "
        "failure\n",
        s.head_dim - d_extra, fmt_tokens(rope::pair_period(s, d_extra / 2)).c_str(),
        fmt_tokens(rope::pair_period(s, s.head_dim / 2 - 1)).c_str());
  std::printf("Extrapolation bound of base %s: T_extra = 2pi * base^(d_extra/d) = %s tokens\n",
              fmt_base(s.base).c_str(), fmt_tokens(own_bound).c_str());

  std::printf("\nBase needed for a target length: base^(log_{T_train/2pi}(T/2pi))\n");
  std::printf("  %-20s %12s %20s %20s\n", "target", "base (law)", "min base T_extra>=T",
              ("dynamic NTK x" + fmt_base(ntk_factor)).c_str());
  for (double t : targets) {
    std::printf("  %-20s %12s %20s %20s%s\n", with_label(t).c_str(),
                fmt_cell(cell([&] { return rope::base_for_length(s, t); })).c_str(),
                fmt_cell(cell([&] { return rope::smallest_base_for_bound(s, t); })).c_str(),
                fmt_cell(cell([&] { return rope::dynamic_ntk_base(s, t, ntk_factor); })).c_str(),
                target && t == *target ? "  <- --target-len" : "");
  }

  std::printf(
      "\nFine-tuning at %s tokens: critical base beta0 = %s; small bases extrapolate "
      "markedly better\n  below beta1 = %s, beta2 = %s, beta3 = %s\n",
      with_label(tune_len).c_str(), fmt_base(tuned_critical).c_str(),
      fmt_base(thresholds.beta1).c_str(), fmt_base(thresholds.beta2).c_str(),
      fmt_base(thresholds.beta3).c_str());
  std::printf("  %-10s %20s  %s\n", "base", "bound (tokens)", "regime");
  for (double b : bases) {
    const auto tb = rope::tuned_bound(s, b, tune_len);
    std::string regime;
    if (tb.above_critical) {
      regime = "above beta0: T_extra, d_extra " + std::to_string(tb.critical_dim);
    } else {
      regime =
          "at/below beta0: bound = tuning length, critical dim " + std::to_string(tb.critical_dim);
      if (b <= thresholds.beta3)
        regime += " (below beta3)";
      else if (b <= thresholds.beta2)
        regime += " (below beta2)";
      else if (b <= thresholds.beta1)
        regime += " (below beta1)";
    }
    std::printf("  %-10s %20s  %s\n", fmt_base(b).c_str(), with_label(tb.bound).c_str(),
                regime.c_str());
  }
  std::fflush(stdout);
  return std::ferror(stdout) ? 1 : 0;
}

}  // namespace

CEPE_REGISTER_COMMAND("rope",
                      "RoPE scaling law: critical dimension, extrapolation bound, base "
                      "for a target length",
                      run_rope);

}  // namespace cepe::cli
