// EventLoop::set_idle_hook(): the busy-poll seam. The hook runs only when the
// loop would otherwise sleep, and returning true keeps it from sleeping while
// fds are still served.
#include <gtest/gtest.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>

#include "base/event_loop.h"

namespace vhost_vsock::base {
namespace {

using std::chrono::milliseconds;
using Clock = std::chrono::steady_clock;

TEST(EventLoopIdleHook, TrueMakesTheWaitNonBlockingAndFdsAreStillServed) {
  EventLoop loop;
  int fds[2];
  ASSERT_EQ(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, fds), 0);
  UniqueFd a(fds[0]);
  UniqueFd b(fds[1]);
  int readable = 0;
  loop.add(a.get(), EPOLLIN, [&](uint32_t) {
    char byte = 0;
    while (::read(a.get(), &byte, 1) == 1) ++readable;
  });
  int hook_calls = 0;
  loop.set_idle_hook([&] {
    ++hook_calls;
    return true;
  });
  const auto start = Clock::now();
  loop.run_once(milliseconds(500));
  EXPECT_LT(Clock::now() - start, milliseconds(250)) << "the hook asked not to sleep";
  EXPECT_EQ(hook_calls, 1);

  ASSERT_EQ(::write(b.get(), "x", 1), 1);
  loop.run_once(milliseconds(500));
  EXPECT_EQ(readable, 1) << "a polling loop still serves its fds";
}

TEST(EventLoopIdleHook, FalseSleepsAsBeforeAndPendingWorkSkipsTheHook) {
  EventLoop loop;
  int hook_calls = 0;
  loop.set_idle_hook([&] {
    ++hook_calls;
    return false;
  });
  const auto start = Clock::now();
  loop.run_once(milliseconds(30));
  EXPECT_GE(Clock::now() - start, milliseconds(25)) << "false: the loop sleeps as it would without a hook";
  EXPECT_EQ(hook_calls, 1);

  loop.defer([] {});  // work is due: the loop is not about to sleep
  loop.run_once(milliseconds(30));
  EXPECT_EQ(hook_calls, 1);

  loop.set_idle_hook({});
  loop.run_once(milliseconds(1));
  EXPECT_EQ(hook_calls, 1) << "removed";
}

}  // namespace
}  // namespace vhost_vsock::base
