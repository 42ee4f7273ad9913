#include "base/log_limiter.h"

#include <spdlog/spdlog.h>

namespace vhost_vsock::base {

LogLimiter::~LogLimiter() {
  summarize();
}

bool LogLimiter::allow(Clock::time_point now) {
  if (now - window_start_ >= window_) {
    summarize();
    window_start_ = now;
    in_window_ = 0;
  }
  if (in_window_ < per_window_) {
    ++in_window_;
    return true;
  }
  ++suppressed_;
  return false;
}

void LogLimiter::summarize() {
  if (suppressed_ == 0) return;
  if (window_ % std::chrono::seconds(1) == std::chrono::milliseconds::zero()) {
    spdlog::warn("{} more {} suppressed in the last {}s", suppressed_, what_,
                 std::chrono::duration_cast<std::chrono::seconds>(window_).count());
  } else {
    spdlog::warn("{} more {} suppressed in the last {} ms", suppressed_, what_, window_.count());
  }
  suppressed_ = 0;
}

}  // namespace vhost_vsock::base
