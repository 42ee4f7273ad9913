// Lets a hostile peer cost us a counter, not a disk: the first `per_window`
// messages of each window are logged, the rest are only counted and
// summarized ("N more ... suppressed") when the window ends or the limiter
// goes away, so one flood writes a bounded number of lines.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>
#include <utility>

namespace vhost_vsock::base {

class LogLimiter {
 public:
  using Clock = std::chrono::steady_clock;
  static constexpr std::chrono::seconds kWindow{10};

  // `what` names the messages in the summary, e.g. "guest warnings".
  LogLimiter(std::string what, uint32_t per_window, std::chrono::milliseconds window = kWindow)
      : what_(std::move(what)), per_window_(per_window), window_(window) {}
  ~LogLimiter();  // summarizes what the last window suppressed
  LogLimiter(const LogLimiter&) = delete;
  LogLimiter& operator=(const LogLimiter&) = delete;

  // Whether the caller may log one more message now.
  bool allow() { return allow(Clock::now()); }
  bool allow(Clock::time_point now);
  [[nodiscard]] uint64_t suppressed_in_window() const { return suppressed_; }

 private:
  void summarize();

  std::string what_;
  uint32_t per_window_;
  std::chrono::milliseconds window_;
  Clock::time_point window_start_{};
  uint32_t in_window_ = 0;
  uint64_t suppressed_ = 0;
};

}  // namespace vhost_vsock::base
