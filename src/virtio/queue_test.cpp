// The Queue interface from a second implementation's side: what a packed ring
// will need to fill DescriptorChains and interrupt the driver, without
// SplitQueue.
#include "virtio/queue.h"

#include <gtest/gtest.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <array>

#include "base/unique_fd.h"

namespace vhost_vsock::virtio {
namespace {

// Hands out one chain over fixed buffers: id 7, one readable and one writable buffer.
class OneChainQueue final : public Queue {
 public:
  [[nodiscard]] bool configured() const override { return true; }
  [[nodiscard]] bool broken() const override { return false; }
  [[nodiscard]] uint16_t size() const override { return 8; }
  [[nodiscard]] const QueueStats& stats() const override { return stats_; }
  PopStatus pop(DescriptorChain& out) override {
    if (popped_) return PopStatus::kEmpty;
    popped_ = true;
    begin_chain(out, 7);
    chain_buffers(out, false).push_back(in_.data(), in_.size());
    add_chain_bytes(out, false, in_.size());
    chain_buffers(out, true).push_back(out_.data(), out_.size());
    add_chain_bytes(out, true, out_.size());
    return PopStatus::kChain;
  }
  void unpop(uint16_t count) override { popped_ = popped_ && count == 0; }
  [[nodiscard]] bool has_available() const override { return !popped_; }
  void add_used(uint16_t, uint32_t) override { ++pending_; }
  void flush_used() override { pending_ = 0; }
  void notify() override {
    const bool wanted = pending_ > 0;
    flush_used();
    if (count_decision(wanted, call_fd.valid(), stats_)) write_call_fd(call_fd.get(), stats_, "one-chain");
  }
  void disable_notifications() override {}
  void enable_notifications() override {}
  void suppress_notifications() override {}

  base::UniqueFd call_fd;

 private:
  std::array<uint8_t, 44> in_{};
  std::array<uint8_t, 100> out_{};
  bool popped_ = false;
  int pending_ = 0;
  QueueStats stats_;
};

TEST(QueueInterface, AnotherImplementationFillsChainsAndReusesThem) {
  OneChainQueue concrete;
  Queue& queue = concrete;
  DescriptorChain chain;
  ASSERT_EQ(queue.pop(chain), PopStatus::kChain);
  EXPECT_EQ(chain.id(), 7);
  ASSERT_EQ(chain.readable().size(), 1u);
  ASSERT_EQ(chain.writable().size(), 1u);
  EXPECT_EQ(chain.readable_bytes(), 44u);
  EXPECT_EQ(chain.writable_bytes(), 100u);
  queue.unpop(1);
  ASSERT_EQ(queue.pop(chain), PopStatus::kChain);  // the same object, refilled from scratch
  EXPECT_EQ(chain.readable().size(), 1u);
  EXPECT_EQ(chain.writable_bytes(), 100u);
  EXPECT_EQ(queue.pop(chain), PopStatus::kEmpty);
}

TEST(QueueInterface, SharedDecisionCountingAndCallFdWrite) {
  OneChainQueue queue;
  queue.add_used(7, 0);
  queue.notify();  // no call fd
  EXPECT_EQ(queue.stats().notifications_without_fd, 1u);
  queue.call_fd = base::UniqueFd(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  queue.notify();  // nothing pending
  EXPECT_EQ(queue.stats().notifications_suppressed, 1u);
  queue.add_used(7, 0);
  queue.notify();
  EXPECT_EQ(queue.stats().notifications_sent, 1u);
  uint64_t value = 0;
  ASSERT_EQ(::read(queue.call_fd.get(), &value, sizeof(value)), static_cast<ssize_t>(sizeof(value)));
  EXPECT_EQ(value, 1u);
}

}  // namespace
}  // namespace vhost_vsock::virtio
