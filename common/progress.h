// Progress reporting for long jobs: a redrawn bar with rate and ETA on a terminal, plain
// periodic log lines otherwise (so CI logs and pipes stay readable).
#pragma once

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <string>

namespace cepe {

/// Reports progress of `total` units of work on stderr.
class ProgressBar {
 public:
  /// `label` names the job, `unit` the work item ("questions"); total 0 = unknown.
  ProgressBar(std::string label, std::string unit, int64_t total);
  /// Sets the number of finished units; redraws at most every 100 ms (terminal) or 10 s (log).
  void update(int64_t done);
  /// Draws the final state and ends the line.
  void finish();
  /// Units per second since the start.
  double rate() const;

 private:
  void draw(bool final_line);
  std::string label_, unit_;
  int64_t total_ = 0, done_ = 0;
  bool tty_ = false, finished_ = false;
  std::chrono::steady_clock::time_point start_, last_draw_;
};

}  // namespace cepe
