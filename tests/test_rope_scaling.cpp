// The RoPE scaling law against the figures of ../shared/reference/rope-scaling-law.md (copied
// here so the test runs without ../shared), its monotonicity, its edge cases, and `cepe rope`.
#include "engine/rope_scaling.h"

#include <gtest/gtest.h>
#include <rapidjson/document.h>

#include <cmath>
#include <fstream>
#include <limits>
#include <numbers>

#include "common/error.h"
#include "tests/test_util.h"

using cepe::rope::RopeSetup;
namespace rope = cepe::rope;

namespace {

const RopeSetup kLlama2{128, 4096, 10000};
constexpr double kTwoPi = 2 * std::numbers::pi;

template <typename Fn>
std::string error_of(Fn&& fn) {
  try {
    fn();
  } catch (const cepe::Error& e) {
    return e.what();
  }
  ADD_FAILURE() << "expected cepe::Error";
  return "";
}

#define EXPECT_ERROR_MENTIONS(expr, text)                                   \
  do {                                                                      \
    const std::string msg_ = error_of([&] { (void)(expr); });               \
    EXPECT_NE(msg_.find(text), std::string::npos) << #expr << ": " << msg_; \
  } while (0)

}  // namespace

// "LLaMA-2: d = 128, T_train = 4096 -> d_extra = 92 (the last 36 dims are at fault)."
TEST(RopeScaling, Llama2CriticalDimension) {
  EXPECT_EQ(rope::critical_dimension(kLlama2), 92);
  // By definition: pair 45 completes a period within 4096 tokens, pair 46 does not.
  EXPECT_LE(rope::pair_period(kLlama2, 45), 4096.0);
  EXPECT_GT(rope::pair_period(kLlama2, 46), 4096.0);
  EXPECT_DOUBLE_EQ(rope::pair_period(kLlama2, 0), kTwoPi);
}

// "For LLaMA-2 (T_train 4096): about 7.2e4 for 16K, 1.4e6 for 128K, 2.7e7 for 1M."
TEST(RopeScaling, Llama2BaseForTargetLength) {
  // The reference rounds to two significant figures; the exact values are 7.174e4, 1.378e6 and
  // 2.649e7 (which the reference double-rounds, 2.65 -> 2.7), so "about" is checked as within 2%.
  EXPECT_NEAR(rope::base_for_length(kLlama2, 16384), 7.2e4, 0.02 * 7.2e4);
  EXPECT_NEAR(rope::base_for_length(kLlama2, 131072), 1.4e6, 0.02 * 1.4e6);
  EXPECT_NEAR(rope::base_for_length(kLlama2, 1048576), 2.7e7, 0.02 * 2.7e7);
  // And the exact values themselves, so a regression of a few percent cannot hide in the slack.
  EXPECT_NEAR(rope::base_for_length(kLlama2, 16384), 71738.4, 0.1);
  EXPECT_NEAR(rope::base_for_length(kLlama2, 131072) / 1.378414e6, 1.0, 1e-5);
  EXPECT_NEAR(rope::base_for_length(kLlama2, 1048576) / 2.648547e7, 1.0, 1e-5);
  // The law is exact at the training length: no change needed.
  EXPECT_NEAR(rope::base_for_length(kLlama2, 4096), 10000.0, 1e-6);
}

// "Conversely T_extra(β = 1e6) ≈ 129K, T_extra(5e5) ≈ 78K, T_extra(1e5) ≈ 24.7K."
TEST(RopeScaling, Llama2ExtrapolationBound) {
  EXPECT_NEAR(rope::extrapolation_bound(kLlama2, 1e6), 129e3, 500);
  EXPECT_NEAR(rope::extrapolation_bound(kLlama2, 5e5), 78e3, 500);
  EXPECT_NEAR(rope::extrapolation_bound(kLlama2, 1e5), 24.7e3, 50);
  // Closed form: 2π · β^(92/128).
  EXPECT_NEAR(rope::extrapolation_bound(kLlama2, 1e6), kTwoPi * std::pow(1e6, 92.0 / 128), 1e-6);
}

// "base 1e6 is fine to 128K": tuned at 16K, above the critical base, the bound covers 128K.
TEST(RopeScaling, Llama2TunedRegimes) {
  const auto tb = rope::tuned_bound(kLlama2, 1e6, 16384);
  EXPECT_TRUE(tb.above_critical);
  EXPECT_NEAR(tb.critical_base, 7.2e4, 0.05e4);
  EXPECT_EQ(tb.critical_dim, 92);
  EXPECT_GE(tb.bound, 128e3);
  EXPECT_LT(tb.bound, 256e3);  // "collapses beyond (76.8 at 256K)"

  // At or below β0 the bound is the tuning length and more dims see a full period.
  const auto low = rope::tuned_bound(kLlama2, 5e4, 16384);
  EXPECT_FALSE(low.above_critical);
  EXPECT_EQ(low.bound, 16384);
  EXPECT_GT(low.critical_dim, 92);
  EXPECT_EQ(low.critical_dim % 2, 0);
  // Base 500 (the paper's small base): every pair completes a period within 16K tokens.
  EXPECT_EQ(rope::tuned_bound(kLlama2, 500, 16384).critical_dim, 128);
}

TEST(RopeScaling, SmallBaseThresholds) {
  const auto t = rope::small_base_thresholds(16384);
  EXPECT_NEAR(t.beta1, 2 * 16384 / std::numbers::pi, 1e-9);
  EXPECT_NEAR(t.beta2, 16384 / std::numbers::pi, 1e-9);
  EXPECT_NEAR(t.beta3, 16384 / kTwoPi, 1e-9);
  EXPECT_GT(t.beta1, t.beta2);
  EXPECT_GT(t.beta2, t.beta3);
  // Below β3 a tuned base sees every pair through a full period within T_tune.
  EXPECT_EQ(rope::tuned_bound(kLlama2, t.beta3 * 0.999, 16384).critical_dim, 128);
}

TEST(RopeScaling, CriticalDimensionMonotone) {
  int prev = 0;
  for (double t = 8; t < 1e8; t *= 1.37) {
    const int d = rope::critical_dimension({128, t, 10000});
    EXPECT_GE(d, prev) << "train_len " << t;
    EXPECT_EQ(d % 2, 0);
    EXPECT_LE(d, 128);
    prev = d;
  }
  EXPECT_EQ(prev, 128);  // far beyond the slowest period every dim is covered (clamped)
  prev = 128;
  for (double b = 2; b < 1e12; b *= 1.9) {
    const int d = rope::critical_dimension({128, 4096, b});
    EXPECT_LE(d, prev) << "base " << b;
    prev = d;
  }
}

// Exact powers sit on a ceil() boundary: log() rounding must not add a pair.
TEST(RopeScaling, CriticalDimensionAtExactBoundaries) {
  for (int k = 1; k < 64; ++k) {
    const double t = kTwoPi * std::pow(10000.0, k / 64.0);
    EXPECT_EQ(rope::critical_dimension({128, t, 10000}), 2 * k) << "k = " << k;
    EXPECT_EQ(rope::critical_dimension({128, t * 1.001, 10000}), 2 * k + 2) << "k = " << k;
  }
}

TEST(RopeScaling, BaseAndBoundAreConsistent) {
  double prev = 0;
  for (double t = 4096; t <= 1 << 22; t *= 1.5) {
    const double b = rope::base_for_length(kLlama2, t);
    EXPECT_GT(b, prev);
    prev = b;
    // The law's base ignores the rounding up of d_extra, so its bound slightly exceeds the target;
    // the smallest base for the bound is the exact inverse.
    EXPECT_GE(rope::extrapolation_bound(kLlama2, b), t * (1 - 1e-12));
    const double m = rope::smallest_base_for_bound(kLlama2, t);
    EXPECT_LE(m, b);
    EXPECT_NEAR(rope::extrapolation_bound(kLlama2, m) / t, 1.0, 1e-9);
  }
  // Just above the critical base the bound starts at the tuning length, raised only by the
  // rounding up of d_extra (46 pairs for 45.03 here).
  const double b0 = rope::base_for_length(kLlama2, 16384);
  const double jump = rope::tuned_bound(kLlama2, b0 * (1 + 1e-12), 16384).bound / 16384;
  EXPECT_GE(jump, 1.0);
  EXPECT_LE(jump, 1.25);
}

TEST(RopeScaling, DynamicNtk) {
  EXPECT_EQ(rope::dynamic_ntk_base(kLlama2, 2048, 2.0), 10000);
  EXPECT_EQ(rope::dynamic_ntk_base(kLlama2, 4096, 2.0), 10000);
  EXPECT_NEAR(rope::dynamic_ntk_base(kLlama2, 16384, 1.0), 10000 * std::pow(4.0, 128.0 / 126),
              1e-6);
  EXPECT_NEAR(rope::dynamic_ntk_base(kLlama2, 16384, 2.0), 10000 * std::pow(7.0, 128.0 / 126),
              1e-6);
  EXPECT_GT(rope::dynamic_ntk_base(kLlama2, 8192, 1.0), 10000);
}

TEST(RopeScaling, BadParametersNameTheParameter) {
  EXPECT_ERROR_MENTIONS(rope::critical_dimension({0, 4096, 1e4}), "head_dim");
  EXPECT_ERROR_MENTIONS(rope::critical_dimension({-2, 4096, 1e4}), "head_dim");
  EXPECT_ERROR_MENTIONS(rope::critical_dimension({127, 4096, 1e4}),
                        "head_dim must be a positive even");
  EXPECT_ERROR_MENTIONS(rope::critical_dimension({128, 0, 1e4}), "train_len");
  EXPECT_ERROR_MENTIONS(rope::critical_dimension({128, 6, 1e4}), "train_len");
  EXPECT_ERROR_MENTIONS(rope::critical_dimension({128, std::nan(""), 1e4}), "train_len");
  EXPECT_ERROR_MENTIONS(
      rope::critical_dimension({128, std::numeric_limits<double>::infinity(), 1e4}), "train_len");
  EXPECT_ERROR_MENTIONS(rope::critical_dimension({128, 4096, 1}), "base");
  EXPECT_ERROR_MENTIONS(rope::critical_dimension({128, 4096, 0.5}), "base");
  EXPECT_ERROR_MENTIONS(rope::critical_dimension({128, 4096, std::nan("")}), "base");
  EXPECT_ERROR_MENTIONS(rope::extrapolation_bound(kLlama2, 1.0), "tuned_base");
  EXPECT_ERROR_MENTIONS(rope::extrapolation_bound(kLlama2, -5), "tuned_base");
  EXPECT_ERROR_MENTIONS(rope::base_for_length(kLlama2, 2048), "target_len (2048) must be at least");
  EXPECT_ERROR_MENTIONS(rope::base_for_length(kLlama2, std::nan("")), "target_len");
  EXPECT_ERROR_MENTIONS(rope::smallest_base_for_bound(kLlama2, 3), "target_len");
  EXPECT_ERROR_MENTIONS(rope::tuned_bound(kLlama2, 1e6, 1024), "target_len");
  EXPECT_ERROR_MENTIONS(rope::tuned_bound(kLlama2, 0.9, 16384), "tuned_base");
  EXPECT_ERROR_MENTIONS(rope::small_base_thresholds(1), "tune_len");
  EXPECT_ERROR_MENTIONS(rope::dynamic_ntk_base(kLlama2, 8192, 0.5), "factor");
  EXPECT_ERROR_MENTIONS(rope::dynamic_ntk_base(kLlama2, -1, 1), "seq_len");
  EXPECT_ERROR_MENTIONS(rope::dynamic_ntk_base({2, 4096, 1e4}, 8192, 1), "head_dim");
  EXPECT_ERROR_MENTIONS(rope::pair_period(kLlama2, 64), "pair");
  // Results that do not fit a double are refused rather than returned as inf.
  EXPECT_ERROR_MENTIONS(rope::base_for_length({128, 7, 1e300}, 1e15), "overflows");
}

// ---- the CLI ----

namespace {

std::string cepe_rope(const std::string& args, int* status) {
  std::string out;
  *status = cepe::test::run_command(cepe::test::cepe_binary().string() + " rope " + args, &out);
  return out;
}

}  // namespace

TEST(RopeCli, Llama2Table) {
  int status = 0;
  const std::string out = cepe_rope("--head-dim 128 --train-len 4096 --target-len 16384", &status);
  ASSERT_EQ(status, 0) << out;
  EXPECT_NE(out.find("d_extra = 92 of 128"), std::string::npos) << out;
  EXPECT_NE(out.find("the last 36 dims"), std::string::npos) << out;
  EXPECT_NE(out.find("7.174e4"), std::string::npos) << out;  // base for 16K
  EXPECT_NE(out.find("1.378e6"), std::string::npos) << out;  // base for 128K
  EXPECT_NE(out.find("129,027"), std::string::npos) << out;  // T_extra(1e6)
  EXPECT_NE(out.find("<- --target-len"), std::string::npos) << out;
}

TEST(RopeCli, JsonFromModelConfig) {
  const auto dir = cepe::test::temp_dir("rope-cli");
  std::ofstream(dir / "config.json") << R"({"hidden_size": 4096, "num_attention_heads": 32,
      "max_position_embeddings": 4096, "rope_theta": 10000.0, "rope_scaling": null})";
  int status = 0;
  const std::string out = cepe_rope("--model " + dir.string() + " --json --tune-base 1e6", &status);
  std::filesystem::remove_all(dir);
  ASSERT_EQ(status, 0) << out;
  rapidjson::Document doc;
  doc.Parse(out.c_str());
  ASSERT_FALSE(doc.HasParseError()) << out;
  EXPECT_EQ(doc["head_dim"].GetInt(), 128);
  EXPECT_EQ(doc["train_len"].GetDouble(), 4096);
  EXPECT_EQ(doc["critical_dim"].GetInt(), 92);
  EXPECT_EQ(doc["dims_at_fault"].GetInt(), 36);
  bool saw_128k = false;
  for (const auto& t : doc["targets"].GetArray()) {
    if (t["target_len"].GetDouble() != 131072) continue;
    saw_128k = true;
    EXPECT_NEAR(t["base"].GetDouble(), 1.4e6, 0.05e6);
  }
  EXPECT_TRUE(saw_128k);
  bool saw_1e6 = false;
  for (const auto& b : doc["tuning"]["bases"].GetArray()) {
    if (b["base"].GetDouble() != 1e6) continue;
    saw_1e6 = true;
    EXPECT_NEAR(b["bound"].GetDouble(), 129e3, 500);
  }
  EXPECT_TRUE(saw_1e6);
}

TEST(RopeCli, BadInputsExitNonZeroWithAMessage) {
  struct Case {
    const char* args;
    const char* expect;
  } cases[] = {
      {"--head-dim 127 --train-len 4096", "head_dim"},
      {"--head-dim 128 --train-len 4096 --base 0.5", "base"},
      {"--head-dim 128 --train-len 4096 --target-len 100", "target_len"},
      {"--head-dim 128", "--head-dim and --train-len"},
      {"--head-dim 128 --train-len x", "--train-len"},
      {"--head-dim 128 --train-len 4096 --tune-base 1", "--tune-base"},
      {"--model /nonexistent-cepe-model", "/nonexistent-cepe-model/config.json"},
      {"--bogus", "--bogus"},
  };
  for (const auto& c : cases) {
    int status = 0;
    const std::string out = cepe_rope(c.args, &status);
    EXPECT_EQ(status, 1) << c.args << ": " << out;
    EXPECT_NE(out.find(c.expect), std::string::npos) << c.args << ": " << out;
  }
  const auto dir = cepe::test::temp_dir("rope-cli-bad");
  std::ofstream(dir / "config.json") << R"({"hidden_size": 4096, "num_attention_heads": 33,
      "max_position_embeddings": 4096})";
  int status = 0;
  std::string out = cepe_rope("--model " + dir.string(), &status);
  EXPECT_EQ(status, 1);
  EXPECT_NE(out.find("not a multiple of num_attention_heads"), std::string::npos) << out;
  std::ofstream(dir / "config.json") << R"({"hidden_size": 4096, "num_attention_heads": 32})";
  out = cepe_rope("--model " + dir.string(), &status);
  EXPECT_EQ(status, 1);
  EXPECT_NE(out.find("max_position_embeddings"), std::string::npos) << out;
  std::filesystem::remove_all(dir);
}
