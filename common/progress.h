// Progress reporting for long jobs: a redrawn bar with rate and ETA on a terminal, plain
// periodic log lines otherwise (so CI logs and pipes stay readable).
#pragma once

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <functional>
#include <string>

namespace cepe {

/// Reports progress of `total` units of work on stderr.
class ProgressBar {
 public:
  /// `label` names the job, `unit` the work item ("questions"); total 0 = unknown.
  ProgressBar(std::string label, std::string unit, int64_t total);
  /// Sets the number of finished units; redraws at most every 100 ms (terminal) or 10 s (log).
  void update(int64_t done);
  /// Sets the total when it is learnt after the start.
  void set_total(int64_t total) { total_ = total; }
  /// A callback taking (bytes done, bytes in all) that sets this bar in MB (a model load's
  /// progress); it refers to this bar, which must outlive it.
  std::function<void(uint64_t, uint64_t)> byte_counter() {
    return [this](uint64_t done, uint64_t total) {
      set_total(static_cast<int64_t>(total >> 20));
      update(static_cast<int64_t>(done >> 20));
    };
  }
  /// Draws the final state and ends the line (nothing while still quiet, see quiet_for).
  void finish();
  /// Draws nothing until `delay` has passed since the start: work that ends sooner (a small
  /// model's load) leaves no line at all.
  void quiet_for(std::chrono::milliseconds delay) { quiet_until_ = start_ + delay; }
  /// Units per second since the start.
  double rate() const;

 private:
  void draw(bool final_line);
  std::string label_, unit_;
  int64_t total_ = 0, done_ = 0;
  bool tty_ = false, finished_ = false;
  std::chrono::steady_clock::time_point start_, last_draw_, quiet_until_;
};

}  // namespace cepe
