#include "common/progress.h"

#include <unistd.h>

namespace cepe {

ProgressBar::ProgressBar(std::string label, std::string unit, int64_t total)
    : label_(std::move(label)), unit_(std::move(unit)), total_(total) {
  tty_ = isatty(STDERR_FILENO) != 0;
  start_ = last_draw_ = quiet_until_ = std::chrono::steady_clock::now();
}

double ProgressBar::rate() const {
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  return s > 0 ? done_ / s : 0.0;
}

void ProgressBar::update(int64_t done) {
  done_ = done;
  const auto now = std::chrono::steady_clock::now();
  const auto every = tty_ ? std::chrono::milliseconds(100) : std::chrono::milliseconds(10000);
  if (now >= quiet_until_ && now - last_draw_ >= every) {
    last_draw_ = now;
    draw(false);
  }
}

void ProgressBar::finish() {
  if (finished_) return;
  finished_ = true;
  if (std::chrono::steady_clock::now() >= quiet_until_) draw(true);
}

void ProgressBar::draw(bool final_line) {
  const double r = rate();
  char eta[32] = "--:--";
  if (total_ > 0 && r > 0 && done_ < total_) {
    const long s = static_cast<long>((total_ - done_) / r);
    std::snprintf(eta, sizeof eta, "%ld:%02ld", s / 60, s % 60);
  } else if (done_ >= total_ && total_ > 0) {
    std::snprintf(eta, sizeof eta, "0:00");
  }
  if (tty_) {
    constexpr int kWidth = 30;
    const int filled = total_ > 0 ? static_cast<int>(kWidth * done_ / total_) : 0;
    std::string bar(filled, '#');
    bar.resize(kWidth, '.');
    std::fprintf(stderr, "\r%s [%s] %lld/%lld %s  %.2f %s/s  ETA %s%s", label_.c_str(), bar.c_str(),
                 static_cast<long long>(done_), static_cast<long long>(total_), unit_.c_str(), r,
                 unit_.c_str(), eta, final_line ? "\n" : "");
  } else {
    std::fprintf(stderr, "%s: %lld/%lld %s, %.2f %s/s, ETA %s\n", label_.c_str(),
                 static_cast<long long>(done_), static_cast<long long>(total_), unit_.c_str(), r,
                 unit_.c_str(), eta);
  }
  std::fflush(stderr);
}

}  // namespace cepe
