#include "base/event_loop.h"

#include <gtest/gtest.h>
#include <sys/socket.h>

#include <memory>
#include <thread>

namespace vhost_vsock::base {
namespace {

struct SocketPair {
  UniqueFd a, b;
  SocketPair() {
    int fds[2];
    EXPECT_EQ(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, fds), 0);
    a.reset(fds[0]);
    b.reset(fds[1]);
  }
};

TEST(EventLoop, DeliversReadinessToTheRegisteredCallback) {
  EventLoop loop;
  SocketPair pair;
  int calls = 0;
  loop.add(pair.a.get(), EPOLLIN, [&](uint32_t events) {
    EXPECT_TRUE(events & EPOLLIN);
    char c;
    EXPECT_EQ(::read(pair.a.get(), &c, 1), 1);
    ++calls;
  });
  ASSERT_EQ(::write(pair.b.get(), "x", 1), 1);
  loop.run_once(std::chrono::milliseconds(1000));
  EXPECT_EQ(calls, 1);
}

TEST(EventLoop, RemovedFdInSameBatchIsNotDelivered) {
  EventLoop loop;
  SocketPair first, second;
  int delivered = 0;
  // Whichever callback runs first removes the other; exactly one must run.
  loop.add(first.a.get(), EPOLLIN, [&](uint32_t) {
    ++delivered;
    loop.remove(second.a.get());
    loop.remove(first.a.get());
  });
  loop.add(second.a.get(), EPOLLIN, [&](uint32_t) {
    ++delivered;
    loop.remove(first.a.get());
    loop.remove(second.a.get());
  });
  ASSERT_EQ(::write(first.b.get(), "x", 1), 1);
  ASSERT_EQ(::write(second.b.get(), "x", 1), 1);
  loop.run_once(std::chrono::milliseconds(1000));
  EXPECT_EQ(delivered, 1);
}

TEST(EventLoop, TimersFireInOrderAndCancelledOnesDoNot) {
  EventLoop loop;
  std::vector<int> fired;
  loop.add_timer(std::chrono::milliseconds(20), [&] { fired.push_back(2); });
  loop.add_timer(std::chrono::milliseconds(1), [&] { fired.push_back(1); });
  auto cancelled = loop.add_timer(std::chrono::milliseconds(5), [&] { fired.push_back(99); });
  loop.cancel_timer(cancelled);
  auto deadline = EventLoop::Clock::now() + std::chrono::seconds(2);
  while (fired.size() < 2 && EventLoop::Clock::now() < deadline) loop.run_once(std::chrono::milliseconds(50));
  EXPECT_EQ(fired, (std::vector<int>{1, 2}));
}

TEST(EventLoop, CancelledTimersDoNotPileUpUnderChurn) {
  EventLoop loop;
  std::vector<int> fired;
  loop.add_timer(std::chrono::milliseconds(30), [&] { fired.push_back(2); });
  // A connection burst: each sets a long timeout and cancels it at once.
  for (int i = 0; i < 10000; ++i)
    loop.cancel_timer(loop.add_timer(std::chrono::hours(1), [&] { fired.push_back(99); }));
  EXPECT_LE(loop.timer_heap_size(), 130u);
  loop.add_timer(std::chrono::milliseconds(1), [&] { fired.push_back(1); });
  auto deadline = EventLoop::Clock::now() + std::chrono::seconds(2);
  while (fired.size() < 2 && EventLoop::Clock::now() < deadline) loop.run_once(std::chrono::milliseconds(50));
  EXPECT_EQ(fired, (std::vector<int>{1, 2}));  // order survives compaction
}

TEST(EventLoop, StopFromAnotherThreadEndsRun) {
  EventLoop loop;
  std::thread stopper([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    loop.stop();
  });
  loop.run();
  stopper.join();
  EXPECT_TRUE(loop.stopping());
}

TEST(EventLoop, DeferredWorkRunsAfterTheBatch) {
  EventLoop loop;
  int runs = 0;
  loop.defer([&] { ++runs; });
  loop.run_once(std::chrono::milliseconds(0));
  EXPECT_EQ(runs, 1);
  loop.run_once(std::chrono::milliseconds(0));
  EXPECT_EQ(runs, 1);
}

TEST(DeferredTask, RunsOncePerBatchHoweverOftenScheduled) {
  EventLoop loop;
  int runs = 0;
  DeferredTask task(loop, [&] { ++runs; });
  task.schedule();
  task.schedule();
  EXPECT_TRUE(task.scheduled());
  loop.run_once(std::chrono::milliseconds(0));
  EXPECT_EQ(runs, 1);
  EXPECT_FALSE(task.scheduled());
  loop.run_once(std::chrono::milliseconds(0));
  EXPECT_EQ(runs, 1);
  task.schedule();
  loop.run_once(std::chrono::milliseconds(0));
  EXPECT_EQ(runs, 2);
}

TEST(DeferredTask, RescheduledFromItsOwnCallbackRunsNextRound) {
  EventLoop loop;
  int runs = 0;
  std::unique_ptr<DeferredTask> task;
  task = std::make_unique<DeferredTask>(loop, [&] {
    if (++runs < 3) task->schedule();
  });
  task->schedule();
  loop.run_once(std::chrono::milliseconds(0));
  EXPECT_EQ(runs, 1);
  loop.run_once(std::chrono::milliseconds(0));
  loop.run_once(std::chrono::milliseconds(0));
  EXPECT_EQ(runs, 3);
}

TEST(DeferredTask, DestroyedTaskDoesNotRunEvenIfAlreadyInTheBatch) {
  EventLoop loop;
  int victim_runs = 0;
  auto victim = std::make_unique<DeferredTask>(loop, [&] { ++victim_runs; });
  DeferredTask killer(loop, [&] { victim.reset(); });
  killer.schedule();  // runs first in the batch
  victim->schedule();
  loop.run_once(std::chrono::milliseconds(0));
  EXPECT_EQ(victim_runs, 0);
  auto unscheduled = std::make_unique<DeferredTask>(loop, [&] { ++victim_runs; });
  unscheduled->schedule();
  unscheduled.reset();
  loop.run_once(std::chrono::milliseconds(0));
  EXPECT_EQ(victim_runs, 0);
}

}  // namespace
}  // namespace vhost_vsock::base
