#include "base/event_loop.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/socket.h>

#include <array>
#include <atomic>
#include <map>
#include <memory>
#include <numeric>
#include <random>
#include <thread>
#include <vector>

#include "base/fd_slot_map.h"

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

TEST(EventLoop, CallbackOutlivesItsOwnRemovalUntilItReturns) {
  EventLoop loop;
  SocketPair pair;
  std::vector<int> seen;
  // Captures too big for std::function's inline buffer: the handler lives on the heap.
  std::vector<int> payload{1, 2, 3, 4, 5, 6, 7, 8};
  loop.add(pair.a.get(), EPOLLIN, [&loop, &seen, fd = pair.a.get(), payload](uint32_t) {
    loop.remove(fd);
    seen = payload;  // still alive: removal retires the handler until the batch ends
  });
  ASSERT_EQ(::write(pair.b.get(), "x", 1), 1);
  loop.run_once(std::chrono::milliseconds(1000));
  EXPECT_EQ(seen, payload);
  EXPECT_FALSE(loop.watching(pair.a.get()));
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

// The wait before a timer is rounded up to whole milliseconds: rounding a
// timer due in under one down to 0 made the loop spin until it was due.
TEST(EventLoop, WaitsForATimerDueInUnderAMillisecondWithoutSpinning) {
  EventLoop loop;
  bool fired = false;
  const auto armed = EventLoop::Clock::now();
  loop.add_timer(std::chrono::milliseconds(1), [&] { fired = true; });
  int rounds = 0;
  auto deadline = armed + std::chrono::seconds(2);
  while (!fired && EventLoop::Clock::now() < deadline) {
    loop.run_once(std::chrono::milliseconds(1000));
    ++rounds;
  }
  EXPECT_TRUE(fired);
  EXPECT_GE(EventLoop::Clock::now() - armed, std::chrono::milliseconds(1));
  EXPECT_LE(rounds, 3) << "the loop polled instead of sleeping until the timer was due";
}

TEST(EventLoop, CancelledTimersDoNotPileUpUnderChurn) {
  EventLoop loop;
  std::vector<int> fired;
  // Far enough out that the churn below (slow under TSan) cannot outlast it.
  loop.add_timer(std::chrono::milliseconds(500), [&] { fired.push_back(2); });
  // A connection burst: each sets a long timeout and cancels it at once.
  for (int i = 0; i < 10000; ++i)
    loop.cancel_timer(loop.add_timer(std::chrono::hours(1), [&] { fired.push_back(99); }));
  EXPECT_LE(loop.timer_heap_size(), 130u);
  loop.add_timer(std::chrono::milliseconds(1), [&] { fired.push_back(1); });
  auto deadline = EventLoop::Clock::now() + std::chrono::seconds(2);
  while (fired.size() < 2 && EventLoop::Clock::now() < deadline) loop.run_once(std::chrono::milliseconds(50));
  EXPECT_EQ(fired, (std::vector<int>{1, 2}));  // order survives compaction
}

TEST(EventLoop, AStaleTimerIdDoesNotCancelTheTimerThatReusedItsSlot) {
  EventLoop loop;
  bool fired = false;
  const auto stale = loop.add_timer(std::chrono::hours(1), [] {});
  loop.cancel_timer(stale);
  const auto reused = loop.add_timer(std::chrono::milliseconds(1), [&] { fired = true; });
  EXPECT_NE(stale, reused);
  EXPECT_NE(reused, EventLoop::TimerId{0});
  loop.cancel_timer(stale);  // e.g. a connection cancelling its old timeout twice
  auto deadline = EventLoop::Clock::now() + std::chrono::seconds(2);
  while (!fired && EventLoop::Clock::now() < deadline) loop.run_once(std::chrono::milliseconds(50));
  EXPECT_TRUE(fired);
}

TEST(EventLoop, AHandlerSlotReusedForANewFdGetsOnlyItsOwnEvents) {
  EventLoop loop;
  int fds[2];
  ASSERT_EQ(::pipe(fds), 0);
  UniqueFd read_end(fds[0]), write_end(fds[1]);
  int old_calls = 0, new_calls = 0;
  loop.add(read_end.get(), EPOLLIN, [&](uint32_t) { ++old_calls; });
  loop.remove(read_end.get());  // its handler slot goes back to the pool
  int other[2];
  ASSERT_EQ(::pipe(other), 0);
  UniqueFd other_read(other[0]), other_write(other[1]);
  loop.add(other_read.get(), EPOLLIN, [&](uint32_t) { ++new_calls; });
  ASSERT_EQ(::write(write_end.get(), "x", 1), 1);
  ASSERT_EQ(::write(other_write.get(), "y", 1), 1);
  loop.run_once(std::chrono::milliseconds(100));
  EXPECT_EQ(old_calls, 0);
  EXPECT_EQ(new_calls, 1);
  EXPECT_FALSE(loop.watching(read_end.get()));
  EXPECT_TRUE(loop.watching(other_read.get()));
  loop.remove(other_read.get());
}

struct Pipe {
  UniqueFd read_end, write_end;
  Pipe() {
    int fds[2];
    EXPECT_EQ(::pipe2(fds, O_NONBLOCK | O_CLOEXEC), 0);
    read_end.reset(fds[0]);
    write_end.reset(fds[1]);
  }
};

TEST(EventLoop, AStaleEventOfAFdNumberReusedInTheSameBatchReachesNobody) {
  EventLoop loop;
  // Two readable pipes; whichever callback runs first closes the other pipe's
  // read end and puts a fresh readable pipe on the same fd number (dup2), with
  // a new callback. The other's event is already in this batch: it must reach
  // neither the old callback nor the new one.
  std::array<Pipe, 2> pipes;
  std::array<Pipe, 2> fresh;
  int originals = 0, replacements = 0;
  bool replaced = false;
  for (size_t mine = 0; mine < 2; ++mine) {
    const size_t other = 1 - mine;
    loop.add(pipes[mine].read_end.get(), EPOLLIN, [&, other](uint32_t) {
      ++originals;
      if (replaced) return;
      replaced = true;
      const int number = pipes[other].read_end.get();
      loop.remove(number);
      ASSERT_EQ(::dup2(fresh[other].read_end.get(), number), number);  // closes the old pipe's end
      loop.add(number, EPOLLIN, [&](uint32_t) { ++replacements; });
    });
    ASSERT_EQ(::write(pipes[mine].write_end.get(), "x", 1), 1);
    ASSERT_EQ(::write(fresh[mine].write_end.get(), "y", 1), 1);
  }
  loop.run_once(std::chrono::milliseconds(1000));
  EXPECT_EQ(originals, 1);
  EXPECT_EQ(replacements, 0);
  // The fd number now carries the fresh pipe: its own event arrives next round.
  loop.run_once(std::chrono::milliseconds(1000));
  EXPECT_EQ(replacements, 1);
  EXPECT_EQ(originals, 2);  // level-triggered, still readable: the survivor fires again
}

TEST(EventLoop, AFdNumberReusedAfterRemoveGetsOnlyTheNewCallback) {
  EventLoop loop;
  Pipe first;
  int old_calls = 0, new_calls = 0;
  const int number = first.read_end.get();
  loop.add(number, EPOLLIN, [&](uint32_t) { ++old_calls; });
  loop.remove(number);
  first.read_end.reset();
  Pipe second;
  ASSERT_EQ(::dup2(second.read_end.get(), number), number);
  UniqueFd reused(number);
  loop.add(number, EPOLLIN, [&](uint32_t) { ++new_calls; });
  ASSERT_EQ(::write(second.write_end.get(), "x", 1), 1);
  loop.run_once(std::chrono::milliseconds(1000));
  EXPECT_EQ(old_calls, 0);
  EXPECT_EQ(new_calls, 1);
  EXPECT_TRUE(loop.watching(number));
  loop.remove(number);
  EXPECT_FALSE(loop.watching(number));
}

TEST(EventLoop, ManyFdsEachGetTheirOwnEventsAndSlotsAreReused) {
  EventLoop loop;
  constexpr size_t kPipes = 200;
  std::vector<Pipe> pipes(kPipes);
  std::vector<int> calls(kPipes, 0);
  for (size_t i = 0; i < kPipes; ++i) {
    loop.add(pipes[i].read_end.get(), EPOLLIN, [&calls, i](uint32_t) { ++calls[i]; });
    ASSERT_EQ(::write(pipes[i].write_end.get(), "x", 1), 1);
  }
  const size_t slots = loop.handler_slots();
  for (size_t i = 0; i < kPipes; i += 2) loop.remove(pipes[i].read_end.get());
  auto deadline = EventLoop::Clock::now() + std::chrono::seconds(5);
  auto total = [&] { return std::accumulate(calls.begin(), calls.end(), 0); };
  while (total() < static_cast<int>(kPipes / 2) && EventLoop::Clock::now() < deadline)
    loop.run_once(std::chrono::milliseconds(100));
  for (size_t i = 0; i < kPipes; ++i) {
    EXPECT_EQ(calls[i], i % 2 == 0 ? 0 : 1) << "pipe " << i;
    EXPECT_EQ(loop.watching(pipes[i].read_end.get()), i % 2 == 1) << "pipe " << i;
  }
  // Re-adding the removed half reuses their slots: no new ones.
  for (size_t i = 0; i < kPipes; i += 2) loop.add(pipes[i].read_end.get(), EPOLLIN, [](uint32_t) {});
  EXPECT_EQ(loop.handler_slots(), slots);
}

TEST(EventLoop, ItsFdTableFollowsItsOwnRegistrationsNotTheHighestFdNumber) {
  EventLoop loop;
  Pipe pipe;
  // A process with many fds elsewhere (other VMs' loops): this loop watches one, numbered high.
  UniqueFd high(::fcntl(pipe.read_end.get(), F_DUPFD_CLOEXEC, 900));
  ASSERT_GE(high.get(), 900);
  int calls = 0;
  loop.add(high.get(), EPOLLIN, [&](uint32_t) { ++calls; });
  ASSERT_EQ(::write(pipe.write_end.get(), "x", 1), 1);
  loop.run_once(std::chrono::milliseconds(1000));
  EXPECT_EQ(calls, 1);
  EXPECT_LE(loop.fd_table_capacity(), 16u);
  EXPECT_LE(loop.handler_slots(), 2u);  // the loop's wake eventfd and this one
  loop.remove(high.get());
}

TEST(EventLoop, TakeOverReplacesAWatchedFdsCallbackEvenFromInsideIt) {
  EventLoop loop;
  Pipe pipe;
  const int fd = pipe.read_end.get();
  int old_calls = 0, new_calls = 0;
  // The old owner hands the fd over from its own callback, as the hybrid listener does.
  loop.add(fd, EPOLLIN, [&](uint32_t) {
    ++old_calls;
    loop.take_over(fd, EPOLLIN, [&](uint32_t) { ++new_calls; });
  });
  ASSERT_EQ(::write(pipe.write_end.get(), "x", 1), 1);
  loop.run_once(std::chrono::milliseconds(1000));
  EXPECT_EQ(old_calls, 1);
  EXPECT_EQ(new_calls, 0);
  loop.run_once(std::chrono::milliseconds(1000));  // still readable: now the new owner's
  EXPECT_EQ(old_calls, 1);
  EXPECT_EQ(new_calls, 1);
  // Not watched (or closed without remove() and reused): take_over adds.
  loop.remove(fd);
  loop.take_over(fd, EPOLLIN, [&](uint32_t) { ++new_calls; });
  loop.run_once(std::chrono::milliseconds(1000));
  EXPECT_EQ(new_calls, 2);
  loop.remove(fd);
}

TEST(EventLoop, AHandedOverFdDeliversNothingUntilTakenOverAndItsSlotServesOthers) {
  EventLoop loop;
  Pipe handed, other;
  const int fd = handed.read_end.get();
  int old_calls = 0, other_calls = 0, new_calls = 0;
  uint32_t new_events = 0;
  // The old owner hands the fd over from its own callback, as the hybrid listener does.
  loop.add(fd, EPOLLIN | EPOLLET, [&](uint32_t) {
    ++old_calls;
    loop.hand_over(fd);
  });
  ASSERT_EQ(::write(handed.write_end.get(), "x", 1), 1);
  loop.run_once(std::chrono::milliseconds(1000));
  ASSERT_EQ(old_calls, 1);
  EXPECT_TRUE(loop.watching(fd));  // still in epoll
  // The freed slot serves another fd; the handed-over fd's events (its old
  // slot's generation) reach neither it nor the old callback.
  loop.add(other.read_end.get(), EPOLLIN, [&](uint32_t) { ++other_calls; });
  ASSERT_EQ(loop.handler_slots(), 2u);  // the wake fd's and the reused one
  ASSERT_EQ(::write(handed.write_end.get(), "y", 1), 1);
  handed.write_end.reset();  // and a hangup
  for (int i = 0; i < 3; ++i) loop.run_once(std::chrono::milliseconds(20));
  EXPECT_EQ(old_calls, 1);
  EXPECT_EQ(other_calls, 0);
  // take_over reports what is ready now, as an ADD would: the edges it missed are not lost.
  loop.take_over(fd, EPOLLIN | EPOLLRDHUP | EPOLLET, [&](uint32_t events) {
    ++new_calls;
    new_events = events;
  });
  loop.run_once(std::chrono::milliseconds(1000));
  EXPECT_EQ(new_calls, 1);
  EXPECT_NE(new_events & EPOLLIN, 0u);
  EXPECT_NE(new_events & EPOLLHUP, 0u);
  loop.remove(fd);
  loop.remove(other.read_end.get());
}

TEST(EventLoop, AHandedOverFdThatIsForgottenAndClosedLeavesEpoll) {
  EventLoop loop;
  auto handed = std::make_unique<Pipe>();
  const int fd = handed->read_end.get();
  loop.add(fd, EPOLLIN | EPOLLET, [](uint32_t) {});
  loop.hand_over(fd);
  loop.modify(fd, EPOLLIN);  // no handler to point it at: ignored
  loop.forget(fd);           // the new owner closes it unwatched (a refused connection)
  EXPECT_FALSE(loop.watching(fd));
  handed.reset();
  Pipe reused;
  ASSERT_EQ(reused.read_end.get(), fd);  // the lowest free number: EPOLL_CTL_ADD must not find it registered
  int calls = 0;
  loop.add(fd, EPOLLIN, [&](uint32_t) { ++calls; });
  ASSERT_EQ(::write(reused.write_end.get(), "x", 1), 1);
  loop.run_once(std::chrono::milliseconds(1000));
  EXPECT_EQ(calls, 1);
  loop.remove(fd);
  EXPECT_FALSE(loop.watching(fd));
}

TEST(EventLoop, ForgetDropsTheCallbackAndCloseLeavesEpoll) {
  EventLoop loop;
  Pipe pipe;
  int calls = 0;
  const int fd = pipe.read_end.get();
  loop.add(fd, EPOLLIN, [&](uint32_t) { ++calls; });
  ASSERT_EQ(::write(pipe.write_end.get(), "x", 1), 1);
  loop.forget(fd);
  EXPECT_FALSE(loop.watching(fd));
  pipe.read_end.reset();  // the only reference: epoll drops it with the close
  Pipe reused;
  ASSERT_EQ(reused.read_end.get(), fd);  // the lowest free number: EPOLL_CTL_ADD must not find it registered
  loop.add(fd, EPOLLIN, [&](uint32_t) { calls += 10; });
  ASSERT_EQ(::write(reused.write_end.get(), "y", 1), 1);
  loop.run_once(std::chrono::milliseconds(1000));
  EXPECT_EQ(calls, 10);
  loop.remove(fd);
}

TEST(FdSlotMap, AgreesWithAMapUnderRandomInsertsAndErases) {
  FdSlotMap table;
  std::map<int, uint32_t> reference;
  std::mt19937 random(14);  // NOLINT(cert-msc32-c,cert-msc51-cpp): reproducible on purpose
  std::uniform_int_distribution<int> fds(0, 3000);
  for (uint32_t step = 0; step < 50000; ++step) {
    const int fd = fds(random);
    if (reference.contains(fd)) {
      EXPECT_EQ(table.erase(fd), reference[fd]);
      reference.erase(fd);
    } else {
      table.insert(fd, step);
      reference[fd] = step;
    }
    if (step % 997 == 0) {
      for (int probe = 0; probe <= 3000; ++probe) {
        auto found = reference.find(probe);
        ASSERT_EQ(table.find(probe), found == reference.end() ? FdSlotMap::kNoSlot : found->second) << probe;
      }
    }
  }
  EXPECT_EQ(table.size(), reference.size());
  EXPECT_LE(table.capacity(), 4 * reference.size() + 16);
  EXPECT_EQ(table.find(-1), FdSlotMap::kNoSlot);
  EXPECT_EQ(table.erase(3001), FdSlotMap::kNoSlot);
}

TEST(FdSlotMap, ChurnAtAConstantSizeDoesNotGrowIt) {
  FdSlotMap table;
  for (int fd = 0; fd < 100; ++fd) table.insert(fd, static_cast<uint32_t>(fd));
  const size_t capacity = table.capacity();
  for (int fd = 100; fd < 100000; ++fd) {
    EXPECT_EQ(table.erase(fd - 100), static_cast<uint32_t>(fd - 100));
    table.insert(fd, static_cast<uint32_t>(fd));
  }
  EXPECT_EQ(table.capacity(), capacity);
  EXPECT_EQ(table.size(), 100u);
  EXPECT_EQ(table.find(99999), 99999u);
  EXPECT_EQ(table.find(99899), FdSlotMap::kNoSlot);
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

TEST(EventLoopPost, TasksFromSeveralThreadsAllRunInOrderPerProducer) {
  constexpr int kProducers = 4;
  constexpr int kTasksEach = 20000;
  // Touched only on the loop thread; read here after joining it.
  struct ConsumerSide {
    EventLoop loop{64};  // small, so producers also hit "full" and retry
    std::array<int, kProducers> next_sequence{};
    int out_of_order = 0;
    int ran = 0;
  } side;
  std::thread consumer([&side] { side.loop.run(); });
  std::vector<std::thread> producers;
  producers.reserve(kProducers);
  for (int producer = 0; producer < kProducers; ++producer) {
    producers.emplace_back([&side, producer] {
      for (int sequence = 0; sequence < kTasksEach; ++sequence) {
        InlineTask task([side = &side, producer, sequence] {
          if (side->next_sequence[producer]++ != sequence) ++side->out_of_order;
          if (++side->ran == kProducers * kTasksEach) side->loop.stop();
        });
        while (!side.loop.post(std::move(task))) {
          // NOLINTNEXTLINE(bugprone-use-after-move): post() moves only what it accepts; checking that is the point
          EXPECT_TRUE(task) << "a refused task must stay with the caller";
          std::this_thread::yield();
        }
      }
    });
  }
  for (auto& producer : producers) producer.join();
  consumer.join();
  EXPECT_EQ(side.ran, kProducers * kTasksEach);
  EXPECT_EQ(side.out_of_order, 0);
  for (int count : side.next_sequence) EXPECT_EQ(count, kTasksEach);
}

TEST(EventLoopPost, FullMailboxRefusesAndLosesNothing) {
  EventLoop loop(3);
  ASSERT_EQ(loop.post_capacity(), 4u);  // rounded up to a power of two
  std::vector<int> ran;
  for (int i = 0; i < 4; ++i) ASSERT_TRUE(loop.post([&ran, i] { ran.push_back(i); }));
  InlineTask fifth([&ran] { ran.push_back(4); });
  EXPECT_FALSE(loop.post(std::move(fifth)));
  // NOLINTNEXTLINE(bugprone-use-after-move): post() moves only what it accepts; checking that is the point
  ASSERT_TRUE(fifth);  // still the caller's
  loop.run_once(std::chrono::milliseconds(0));
  EXPECT_EQ(ran, (std::vector<int>{0, 1, 2, 3}));
  EXPECT_TRUE(loop.post(std::move(fifth)));
  // NOLINTNEXTLINE(bugprone-use-after-move): post() moves only what it accepts; checking that is the point
  EXPECT_FALSE(fifth);
  loop.run_once(std::chrono::milliseconds(0));
  EXPECT_EQ(ran, (std::vector<int>{0, 1, 2, 3, 4}));
}

TEST(EventLoopPost, WakesABlockedRunOnce) {
  EventLoop loop;
  bool ran = false;
  std::thread poster([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    EXPECT_TRUE(loop.post([&ran] { ran = true; }));
  });
  auto start = EventLoop::Clock::now();
  loop.run_once(std::chrono::seconds(20));
  auto waited = EventLoop::Clock::now() - start;
  poster.join();
  EXPECT_TRUE(ran);
  EXPECT_LT(waited, std::chrono::seconds(10));
}

TEST(EventLoopPost, LeftoversBeyondTheIterationBudgetRunNextIterationWithoutWaiting) {
  EventLoop loop(1024);
  size_t ran = 0;
  const size_t total = EventLoop::kPostedTasksPerIteration + 10;
  for (size_t i = 0; i < total; ++i) ASSERT_TRUE(loop.post([&ran] { ++ran; }));
  loop.run_once(std::chrono::milliseconds(0));
  EXPECT_EQ(ran, EventLoop::kPostedTasksPerIteration);
  auto start = EventLoop::Clock::now();
  loop.run_once(std::chrono::seconds(20));  // must not sleep: tasks are still queued
  EXPECT_LT(EventLoop::Clock::now() - start, std::chrono::seconds(10));
  EXPECT_EQ(ran, total);
}

TEST(EventLoopPost, AfterStopIsRefusedAndQueuedTasksAreReleasedWithTheLoop) {
  auto capture = std::make_shared<int>(0);
  int ran = 0;
  {
    EventLoop loop;
    ASSERT_TRUE(loop.post([capture, &ran] { ++ran; }));
    loop.stop();
    InlineTask late([capture, &ran] { ++ran; });
    EXPECT_FALSE(loop.post(std::move(late)));
    // NOLINTNEXTLINE(bugprone-use-after-move): post() moves only what it accepts; checking that is the point
    EXPECT_TRUE(late);
    EXPECT_EQ(capture.use_count(), 3);
  }
  EXPECT_EQ(ran, 0);
  EXPECT_EQ(capture.use_count(), 1);  // both captures released, none leaked
}

TEST(InlineTask, HoldsMoveOnlyCapturesAndReleasesThemOnce) {
  SocketPair pair;
  int fd = pair.a.get();
  InlineTask task([owned = std::move(pair.a)] { EXPECT_TRUE(owned.valid()); });
  InlineTask moved(std::move(task));
  // NOLINTNEXTLINE(bugprone-use-after-move): a moved-from task must be empty
  EXPECT_FALSE(task);
  ASSERT_TRUE(moved);
  moved();
  EXPECT_NE(::fcntl(fd, F_GETFD), -1);  // still open: owned by the task
  moved.reset();
  EXPECT_EQ(::fcntl(fd, F_GETFD), -1);  // closed exactly when the task was destroyed
}

TEST(InlineTask, OnlyCallablesThatFitAreAccepted) {
  std::array<char, InlineTask::kCapacity> fits{};
  std::array<char, InlineTask::kCapacity + 1> too_big{};
  auto small = [fits] { (void)fits; };
  auto big = [too_big] { (void)too_big; };
  static_assert(InlineTask::fits<decltype(small)>);
  static_assert(!InlineTask::fits<decltype(big)>);
  big();
  static_assert(sizeof(InlineTask) <= 56);
  InlineTask task(small);
  EXPECT_TRUE(task);
}

}  // namespace
}  // namespace vhost_vsock::base
