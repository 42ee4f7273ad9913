// Test-only, header-only: waits on an event loop for something to happen
// instead of running it for a fixed wall-clock window, which a loaded machine
// (CI shares two cores) can outrun. Needs only src/base, so any layer's tests
// may include it.
#pragma once

#include <chrono>

#include "base/event_loop.h"

namespace vhost_vsock::testing {

// How long a test waits for an event before it fails: long enough that only
// a hang reaches it, however loaded the machine.
inline constexpr std::chrono::milliseconds kEventDeadline{5000};
// How late a timer may fire on a loaded machine and still count as on time.
inline constexpr std::chrono::milliseconds kTimerSlack{1500};

// Runs `loop` until `done()` holds or `deadline` has passed; returns done().
template <typename Done>
bool run_until(base::EventLoop& loop, Done&& done, std::chrono::milliseconds deadline = kEventDeadline) {
  const auto end = std::chrono::steady_clock::now() + deadline;
  while (!done()) {
    if (std::chrono::steady_clock::now() >= end) return done();
    loop.run_once(std::chrono::milliseconds(5));
  }
  return true;
}

// Runs `loop` for at least `duration`, for checks that something does NOT
// happen. The last pass comes after the whole duration, so a timer due
// within it has had its chance even if the thread was preempted.
inline void run_for(base::EventLoop& loop, std::chrono::milliseconds duration) {
  const auto end = std::chrono::steady_clock::now() + duration;
  while (std::chrono::steady_clock::now() < end) loop.run_once(std::chrono::milliseconds(5));
  loop.run_once(std::chrono::milliseconds(0));
}

}  // namespace vhost_vsock::testing
