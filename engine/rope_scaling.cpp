#include "engine/rope_scaling.h"

#include <cfloat>
#include <cmath>
#include <numbers>

#include "common/error.h"

namespace cepe::rope {

namespace {

constexpr double kTwoPi = 2.0 * std::numbers::pi;

// The law's inputs are often exact powers (a length that is exactly base^(k/(d/2))·2π), where
// log() rounding lands a hair above the integer and ceil() would count one pair too many. Values
// within a relative 1e-9 of an integer are treated as that integer.
double snapped_ceil(double x) {
  const double r = std::round(x);
  if (std::fabs(x - r) <= 1e-9 * std::fmax(1.0, std::fabs(x))) return r;
  return std::ceil(x);
}

// 2·ceil((d/2)·log_b(len/2π)), clamped to [0, d]: a log above 1 means every pair completes a
// period.
int dims_with_full_period(int head_dim, double len, double base) {
  const double x = (head_dim / 2) * (std::log(len / kTwoPi) / std::log(base));
  const double pairs = std::fmin(std::fmax(snapped_ceil(x), 0.0), head_dim / 2);
  return 2 * static_cast<int>(pairs);
}

// exp(e) with a check that the result is a finite double; `what` names the quantity.
double checked_exp(double e, const char* what, double input) {
  CEPE_CHECK(std::isfinite(e) && e < std::log(DBL_MAX),
             what << " " << input << " overflows a double");
  return std::exp(e);
}

void check_length(const char* name, double len) {
  CEPE_CHECK(std::isfinite(len) && len > kTwoPi,
             name << " must be a finite length greater than 2π ≈ 6.283 tokens (one rotation), got "
                  << len);
}

void check_base(const char* name, double base) {
  CEPE_CHECK(std::isfinite(base) && base > 1.0,
             name << " must be a finite number greater than 1, got " << base);
}

}  // namespace

void validate(const RopeSetup& s) {
  // The upper limit only keeps the arithmetic in int range; real heads are 64-256 wide.
  CEPE_CHECK(s.head_dim > 0 && s.head_dim % 2 == 0 && s.head_dim <= (1 << 20),
             "head_dim must be a positive even number (RoPE rotates pairs), got " << s.head_dim);
  check_length("train_len", s.train_len);
  check_base("base", s.base);
}

double pair_period(const RopeSetup& s, int pair) {
  validate(s);
  CEPE_CHECK(pair >= 0 && pair < s.head_dim / 2,
             "pair must be in [0, " << s.head_dim / 2 << "), got " << pair);
  return kTwoPi * std::pow(s.base, 2.0 * pair / s.head_dim);
}

int critical_dimension(const RopeSetup& s) {
  validate(s);
  return dims_with_full_period(s.head_dim, s.train_len, s.base);
}

double extrapolation_bound(const RopeSetup& s, double tuned_base) {
  const int d_extra = critical_dimension(s);
  check_base("tuned_base", tuned_base);
  const double e = static_cast<double>(d_extra) / s.head_dim * std::log(tuned_base);
  return kTwoPi * checked_exp(e, "extrapolation bound of tuned_base", tuned_base);
}

double base_for_length(const RopeSetup& s, double target_len) {
  validate(s);
  check_length("target_len", target_len);
  CEPE_CHECK(target_len >= s.train_len, "target_len (" << target_len
                                                       << ") must be at least train_len ("
                                                       << s.train_len << ")");
  const double e =
      std::log(s.base) * (std::log(target_len / kTwoPi) / std::log(s.train_len / kTwoPi));
  return checked_exp(e, "base needed for target_len", target_len);
}

double smallest_base_for_bound(const RopeSetup& s, double target_len) {
  const int d_extra = critical_dimension(s);
  check_length("target_len", target_len);
  CEPE_CHECK(d_extra > 0,
             "no base reaches target_len " << target_len << ": the critical dimension is 0");
  const double e = std::log(target_len / kTwoPi) * s.head_dim / d_extra;
  return checked_exp(e, "smallest base for target_len", target_len);
}

TunedBound tuned_bound(const RopeSetup& s, double tuned_base, double tune_len) {
  check_base("tuned_base", tuned_base);
  TunedBound r;
  r.critical_base = base_for_length(s, tune_len);  // validates s and tune_len >= train_len
  r.above_critical = tuned_base > r.critical_base;
  if (r.above_critical) {
    r.critical_dim = critical_dimension(s);
    r.bound = extrapolation_bound(s, tuned_base);
  } else {
    r.critical_dim = dims_with_full_period(s.head_dim, tune_len, tuned_base);
    r.bound = tune_len;
  }
  return r;
}

SmallBaseThresholds small_base_thresholds(double tune_len) {
  check_length("tune_len", tune_len);
  return {2.0 * tune_len / std::numbers::pi, tune_len / std::numbers::pi, tune_len / kTwoPi};
}

double dynamic_ntk_base(const RopeSetup& s, double seq_len, double factor) {
  validate(s);
  CEPE_CHECK(s.head_dim > 2, "head_dim must be greater than 2 for dynamic NTK, got " << s.head_dim);
  CEPE_CHECK(std::isfinite(seq_len) && seq_len > 0,
             "seq_len must be a positive length, got " << seq_len);
  CEPE_CHECK(std::isfinite(factor) && factor >= 1.0, "factor must be at least 1, got " << factor);
  if (seq_len <= s.train_len) return s.base;
  // factor·T/T_max − (factor − 1) >= 1 whenever T > T_max and factor >= 1, so the power is safe.
  const double ratio = factor * seq_len / s.train_len - (factor - 1.0);
  const double e =
      std::log(s.base) + static_cast<double>(s.head_dim) / (s.head_dim - 2) * std::log(ratio);
  return checked_exp(e, "dynamic NTK base at seq_len", seq_len);
}

}  // namespace cepe::rope
