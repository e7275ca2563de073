// The RoPE scaling law of Liu et al. 2023 ("Scaling Laws of RoPE-based Extrapolation",
// arXiv 2310.05209): which rotary dimensions a model has seen through a full period, how far a
// (re-)tuned base extrapolates, and which base a target context length needs. Also the dynamic NTK
// base HuggingFace applies at load time. See ../shared/reference/rope-scaling-law.md.
#pragma once

#include <optional>

namespace cepe::rope {

/// The base LLaMA and most RoPE models are pre-trained with (base0 in the paper).
inline constexpr double kDefaultBase = 10000.0;

/// A RoPE model as pre-trained: every function below validates these and names the bad one.
struct RopeSetup {
  int head_dim = 0;            ///< d: dimensions per attention head (even; RoPE rotates pairs)
  double train_len = 0;        ///< T_train: context length the model was trained at (> 2π)
  double base = kDefaultBase;  ///< base the model was trained with (> 1)
};

/// Throws cepe::Error naming the first bad field of `s`.
void validate(const RopeSetup& s);

/// Period in tokens of rotary pair j (0 <= j < d/2): 2π · base^(2j/d).
double pair_period(const RopeSetup& s, int pair);

/// Critical dimension d_extra = 2·ceil((d/2)·log_base(T_train/2π)), clamped to [0, d]: the
/// dimensions whose period fits within the training length; the remaining d - d_extra never
/// complete a period in training and are the ones at fault when extrapolating.
int critical_dimension(const RopeSetup& s);

/// Extrapolation upper bound T_extra = 2π·β^(d_extra/d) of a base β above the critical base,
/// with d_extra the critical dimension of the pre-trained setup `s`.
double extrapolation_bound(const RopeSetup& s, double tuned_base);

/// Base a model needs for a context of `target_len` tokens (>= T_train):
/// β = base^(log_{T_train/2π}(target_len/2π)). With target_len = T_tune this is the critical base
/// β0.
double base_for_length(const RopeSetup& s, double target_len);

/// Smallest base whose extrapolation bound reaches `target_len`: (target_len/2π)^(d/d_extra),
/// the exact inverse of extrapolation_bound (base_for_length ignores the rounding up of d_extra).
double smallest_base_for_bound(const RopeSetup& s, double target_len);

/// What fine-tuning with base β at T_tune tokens gives, per the law's two regimes.
struct TunedBound {
  double critical_base = 0;     ///< β0 = base_for_length(s, T_tune)
  bool above_critical = false;  ///< β > β0: the bound is T_extra; otherwise it is T_tune
  double bound = 0;             ///< extrapolation upper bound in tokens
  int critical_dim = 0;  ///< d_extra, or 2·ceil((d/2)·log_β(T_tune/2π)) (clamped) below β0
};

/// The bound of a base `tuned_base` fine-tuned at `tune_len` tokens (tune_len >= T_train).
TunedBound tuned_bound(const RopeSetup& s, double tuned_base, double tune_len);

/// Bases below which small-base tuning at `tune_len` extrapolates markedly better:
/// β1 = 2·T_tune/π, β2 = T_tune/π, β3 = T_tune/2π.
struct SmallBaseThresholds {
  double beta1 = 0;  ///< 2·T_tune/π
  double beta2 = 0;  ///< T_tune/π
  double beta3 = 0;  ///< T_tune/2π: every pair completes a period within T_tune
};

/// The three small-base thresholds for a tuning length (> 2π).
SmallBaseThresholds small_base_thresholds(double tune_len);

/// HuggingFace's dynamic NTK base at sequence length `seq_len`: unchanged up to T_train, then
/// base·((factor·seq_len/T_train) − (factor − 1))^(d/(d−2)). factor >= 1, head_dim > 2.
double dynamic_ntk_base(const RopeSetup& s, double seq_len, double factor);

}  // namespace cepe::rope
