// Busy polling (--poll-us, MuxerLimits::busy_poll): after a pass that moved
// chains the loop watches the TX ring itself, kicks suppressed, for a bounded
// window; then it enables kicks and re-checks before it sleeps. Runs with and
// without EVENT_IDX (the two ways a split ring suppresses kicks).
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <functional>
#include <iostream>
#include <memory>
#include <optional>
#include <thread>

#include "testing/muxer_test_harness.h"

namespace vhost_vsock::vsock::test {
namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

constexpr auto kWindow = 20ms;
constexpr auto kLongWait = 300ms;  // a run_once that takes this long slept (or its thread was stalled)

// Forwards to a SplitQueue; `before_enable` runs inside enable_notifications()
// just before the real one: the simulated guest acting in the race window.
// Records when the device last asked for kicks again (a window's end), and
// when it looked at the ring until then: first, and the longest gap between
// two looks (a stalled test thread; the loop runs in it).
class RaceQueue final : public virtio::Queue {
 public:
  explicit RaceQueue(virtio::SplitQueue& inner) : inner_(inner) {}
  [[nodiscard]] bool configured() const override { return inner_.configured(); }
  [[nodiscard]] bool broken() const override { return inner_.broken(); }
  [[nodiscard]] uint16_t size() const override { return inner_.size(); }
  [[nodiscard]] const virtio::QueueStats& stats() const override { return inner_.stats(); }
  virtio::PopStatus pop(virtio::DescriptorChain& out) override { return inner_.pop(out); }
  void unpop(uint16_t count) override { inner_.unpop(count); }
  [[nodiscard]] bool has_available() const override {
    if (!last_enable) {
      const auto now = Clock::now();
      if (last_look) longest_gap = std::max(longest_gap, now - *last_look);
      if (!first_look) first_look = now;
      last_look = now;
    }
    return inner_.has_available();
  }
  void add_used(uint16_t id, uint32_t written_length) override { inner_.add_used(id, written_length); }
  void flush_used() override { inner_.flush_used(); }
  void notify() override { inner_.notify(); }
  void disable_notifications() override { inner_.disable_notifications(); }
  void suppress_notifications() override { inner_.suppress_notifications(); }
  void enable_notifications() override {
    last_enable = Clock::now();
    if (before_enable) std::exchange(before_enable, {})();
    inner_.enable_notifications();
  }
  void forget_times() {
    last_enable.reset();
    first_look.reset();
    last_look.reset();
    longest_gap = {};
  }
  std::function<void()> before_enable;
  std::optional<Clock::time_point> last_enable;
  mutable std::optional<Clock::time_point> first_look;
  mutable std::optional<Clock::time_point> last_look;
  mutable Clock::duration longest_gap{};

 private:
  virtio::SplitQueue& inner_;
};

class BusyPollTest : public ::testing::TestWithParam<bool> {
 protected:
  void SetUp() override { make(kWindow); }
  void make(std::chrono::microseconds window) {
    MuxerLimits limits;
    limits.busy_poll = window;
    h = std::make_unique<MuxerHarness>(limits, 256, 64 << 20, true, "/tmp", GetParam());
    h->post_rx_buffers(32);
  }
  // One guest packet the device must take and answer (a connect nobody
  // listens for: RST), published without a kick.
  void publish_request() { h->queue_tx(h->guest_header(Op::kRequest, next_port_++, 4321), {}); }
  [[nodiscard]] bool guest_would_kick() const {
    return h->tx_ring().device_wants_kick(static_cast<uint16_t>(h->tx_ring().avail_idx() - 1));
  }
  // Runs the loop until the queued passes are done and a window opens;
  // returns when the loop pass that opened it began (it opened no earlier).
  Clock::time_point run_until_window_opens() {
    auto pass_began = Clock::now();
    for (int i = 0; i < 10 && h->stats().busy_poll_windows == 0; ++i) {
      pass_began = Clock::now();
      h->loop().run_once(kLongWait);
    }
    EXPECT_EQ(h->stats().busy_poll_windows, 1u);
    return pass_began;
  }
  // Whether one of a few run_once calls sleeps its whole wait (the first
  // ones run the passes still queued).
  bool sleeps_soon() {
    for (int i = 0; i < 5; ++i) {
      const auto before = Clock::now();
      h->loop().run_once(50ms);
      if (Clock::now() - before >= 45ms) return true;
    }
    return false;
  }
  // Runs the loop until it asks for kicks again and then sleeps; returns how
  // long it kept polling (until it asked, as `tx` saw it: a stalled test
  // thread cannot make that look shorter, nor a stall look like sleep).
  Clock::duration poll_until_sleep(RaceQueue& tx) {
    const auto start = Clock::now();
    tx.forget_times();
    for (int i = 0; i < 1'000'000; ++i) {
      const auto before = Clock::now();
      h->loop().run_once(kLongWait);
      if (Clock::now() - before >= kLongWait && tx.last_enable) return *tx.last_enable - start;
    }
    ADD_FAILURE() << "the loop never slept";
    return Clock::now() - start;
  }

  std::unique_ptr<MuxerHarness> h;
  uint32_t next_port_ = 50000;
};

TEST_P(BusyPollTest, AnIdleLoopSleepsWithoutPolling) {
  EXPECT_TRUE(sleeps_soon());
  EXPECT_EQ(h->stats().busy_poll_windows, 0u);
}

// The next request comes a quarter into the window, so the window it
// restarts ends clearly later than the first one would have. An attempt in
// which the test thread (which runs the loop) stalled is void and repeated:
// if the loop first looked after the window had run out, or paused between
// looks for longer than kStall, its timing shows the machine, not the device.
TEST_P(BusyPollTest, WorkOpensABoundedWindowWithKicksSuppressedThenKicksComeBack) {
  constexpr auto kLongWindow = 200ms;
  constexpr auto kStall = 100ms;
  for (int attempt = 1;; ++attempt) {
    make(kLongWindow);
    RaceQueue tx(h->tx_queue());
    h->muxer().attach_queue(Muxer::kTxQueue, tx);
    publish_request();
    h->kick_tx();  // the pass moves a chain: a window opens when the loop next idles
    const auto opened_after = run_until_window_opens();
    std::this_thread::sleep_for(kLongWindow / 4);
    publish_request();
    EXPECT_FALSE(guest_would_kick()) << "kicks are suppressed while the device polls";
    const auto polled = poll_until_sleep(tx);
    h->muxer().detach_queue(Muxer::kTxQueue);
    ASSERT_TRUE(tx.first_look) << "the device never looked at the ring";
    if (*tx.first_look - opened_after >= kLongWindow || tx.longest_gap >= kStall) {
      ASSERT_LT(attempt, 5) << "the test thread stalled in every attempt";
      std::cout << "attempt " << attempt << " void: the test thread stalled\n";
      continue;
    }
    EXPECT_EQ(h->tx_ring().device_used_idx(), 2) << "the second request was taken by polling, with no kick";
    EXPECT_GE(h->stats().busy_poll_finds, 1u);
    // It found work once (restarting the window), then polled a whole window
    // without any and asked for kicks again: bounded below by the window, and
    // above by it plus slack.
    EXPECT_GE(polled, kLongWindow);
    EXPECT_LT(polled, kLongWindow * 2 + 200ms);
    publish_request();
    EXPECT_TRUE(guest_would_kick()) << "asleep: the guest must kick again";
    EXPECT_EQ(h->stats().busy_poll_windows, 1u) << "work found while polling extends the window";
    return;
  }
}

TEST_P(BusyPollTest, ABufferPublishedAsTheDeviceGoesToSleepIsTaken) {
  RaceQueue race(h->tx_queue());
  h->muxer().attach_queue(Muxer::kTxQueue, race);
  publish_request();
  h->kick_tx();
  run_until_window_opens();
  bool kicked = true;
  // The guest publishes while it still sees kicks suppressed, so it does
  // not kick; the device enables kicks right after. Only the re-check finds it.
  race.before_enable = [&] {
    publish_request();
    kicked = guest_would_kick();
  };
  poll_until_sleep(race);
  EXPECT_FALSE(race.before_enable) << "the device enabled kicks before sleeping";
  EXPECT_FALSE(kicked);
  EXPECT_EQ(h->tx_ring().device_used_idx(), 2) << "the buffer that came without a kick was processed";
  h->muxer().detach_queue(Muxer::kTxQueue);
}

TEST_P(BusyPollTest, StoppedRingsAreNeverPolled) {
  publish_request();
  h->kick_tx();
  h->muxer().detach_queue(Muxer::kTxQueue);  // a stopped session: no ring to watch
  EXPECT_TRUE(sleeps_soon()) << "no spinning without running rings";
  EXPECT_EQ(h->stats().busy_poll_windows, 0u);
}

TEST_P(BusyPollTest, OffByDefault) {
  make(0us);
  publish_request();
  h->kick_tx();
  EXPECT_TRUE(sleeps_soon());
  EXPECT_EQ(h->stats().busy_poll_windows, 0u);
  publish_request();
  EXPECT_TRUE(guest_would_kick());
}

INSTANTIATE_TEST_SUITE_P(SplitRing, BusyPollTest, ::testing::Bool(),
                         [](const auto& info) { return info.param ? "EventIdx" : "NoNotifyFlag"; });

}  // namespace
}  // namespace vhost_vsock::vsock::test
