// notify(): one pass publishes its used entries and writes the queue's own
// call eventfd at most once, only when the driver wants an interrupt.
#include <fcntl.h>

#include "virtio/split_queue_test_support.h"

namespace vhost_vsock::virtio {
namespace {

using namespace test;  // NOLINT(google-build-using-namespace): test helpers

base::UniqueFd make_eventfd() {
  return base::UniqueFd(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
}

base::UniqueFd dup_fd(const base::UniqueFd& fd) {
  return base::UniqueFd(::fcntl(fd.get(), F_DUPFD_CLOEXEC, 0));
}

// Reads and clears an eventfd's counter; 0 when it was not signalled.
uint64_t drain(const base::UniqueFd& fd) {
  uint64_t value = 0;
  if (::read(fd.get(), &value, sizeof(value)) != sizeof(value)) return 0;
  return value;
}

class SplitQueueNotifyTest : public SplitQueueTest {
 protected:
  // Makes `count` one-descriptor chains available and completes them all.
  void complete_chains(uint16_t count) {
    for (uint16_t i = 0; i < count; ++i) {
      const uint16_t head = next_head_++ % queue_.size();
      ring_->set_desc(head, kData, 16, kWrite);
      ring_->make_available(head);
      ASSERT_EQ(queue_.pop(chain_), PopStatus::kChain);
      queue_.add_used(chain_.id(), 16);
    }
  }
  // Gives the queue a new call eventfd; returns our copy to drain.
  base::UniqueFd give_call_fd() {
    base::UniqueFd call = make_eventfd();
    queue_.set_call_fd(dup_fd(call));
    return call;
  }
  uint16_t next_head_ = 0;
};

TEST_F(SplitQueueNotifyTest, OnePassWritesTheCallFdOnce) {
  start(8);
  base::UniqueFd call = give_call_fd();
  complete_chains(3);
  EXPECT_EQ(ring_->used_idx(), 0) << "nothing is published before notify()";
  queue_.notify();
  EXPECT_EQ(ring_->used_idx(), 3);
  EXPECT_EQ(drain(call), 1u) << "one write for the whole pass";
  EXPECT_EQ(queue_.stats().notifications_sent, 1u);

  queue_.notify();  // nothing new since
  EXPECT_EQ(drain(call), 0u);
  EXPECT_EQ(queue_.stats().notifications_sent, 1u);
  EXPECT_EQ(queue_.stats().notifications_suppressed, 0u);
}

TEST_F(SplitQueueNotifyTest, DriverSuppressingInterruptsGetsNoWrite) {
  start(8);
  base::UniqueFd call = give_call_fd();
  ring_->set_avail_flags(1);  // VRING_AVAIL_F_NO_INTERRUPT
  complete_chains(2);
  queue_.notify();
  EXPECT_EQ(ring_->used_idx(), 2) << "entries are published even without an interrupt";
  EXPECT_EQ(drain(call), 0u);
  EXPECT_EQ(queue_.stats().notifications_sent, 0u);
  EXPECT_EQ(queue_.stats().notifications_suppressed, 1u);
}

TEST_F(SplitQueueNotifyTest, EventIdxDecidesWhetherToWrite) {
  start(8, kFeatureVersion1 | kFeatureEventIdx);
  base::UniqueFd call = give_call_fd();
  complete_chains(1);
  queue_.notify();  // the first decision is always a yes
  EXPECT_EQ(drain(call), 1u);

  ring_->set_used_event(5);  // driver: interrupt me once entry 5 is used
  complete_chains(2);        // used idx 1 -> 3: entry 5 not reached
  queue_.notify();
  EXPECT_EQ(drain(call), 0u);
  complete_chains(3);  // 3 -> 6: passes entry 5
  queue_.notify();
  EXPECT_EQ(drain(call), 1u);
  EXPECT_EQ(queue_.stats().notifications_sent, 2u);
  EXPECT_EQ(queue_.stats().notifications_suppressed, 1u);
}

TEST_F(SplitQueueNotifyTest, WithoutACallFdNotificationsAreOnlyCounted) {
  start(8);
  queue_.set_call_fd(base::UniqueFd());  // none: before SET_VRING_CALL, or with VHOST_USER_VRING_NOFD_MASK
  EXPECT_FALSE(queue_.has_call_fd());
  complete_chains(2);
  queue_.notify();
  EXPECT_EQ(ring_->used_idx(), 2);
  EXPECT_EQ(queue_.stats().notifications_sent, 0u);
  EXPECT_EQ(queue_.stats().notifications_without_fd, 1u);
}

TEST_F(SplitQueueNotifyTest, AReplacedCallFdIsTheOneWritten) {
  start(8);
  base::UniqueFd first = make_eventfd();
  base::UniqueFd second = make_eventfd();
  queue_.set_call_fd(dup_fd(first));
  queue_.set_call_fd(dup_fd(second));
  complete_chains(1);
  queue_.notify();
  EXPECT_EQ(drain(first), 0u);
  EXPECT_EQ(drain(second), 1u);

  queue_.set_call_fd(base::UniqueFd());  // VHOST_USER_VRING_NOFD_MASK: no fd any more
  EXPECT_FALSE(queue_.has_call_fd());
  complete_chains(1);
  queue_.notify();
  EXPECT_EQ(drain(second), 0u);
  EXPECT_EQ(queue_.stats().notifications_sent, 1u);
  EXPECT_EQ(queue_.stats().notifications_without_fd, 1u);
}

TEST_F(SplitQueueNotifyTest, ResetKeepsTheCallFd) {
  start(8);
  base::UniqueFd call = give_call_fd();
  queue_.reset();
  EXPECT_TRUE(queue_.has_call_fd());
  queue_.notify();  // not configured: nothing to publish, nothing to write
  EXPECT_EQ(drain(call), 0u);
  start(8);
  complete_chains(1);
  queue_.notify();
  EXPECT_EQ(drain(call), 1u);
}

TEST_F(SplitQueueNotifyTest, ASaturatedCounterStillCountsAsSent) {
  start(8);
  base::UniqueFd call = make_eventfd();
  const uint64_t almost_full = UINT64_MAX - 1;  // the largest value an eventfd holds
  ASSERT_EQ(::write(call.get(), &almost_full, sizeof(almost_full)), static_cast<ssize_t>(sizeof(almost_full)));
  queue_.set_call_fd(dup_fd(call));
  complete_chains(1);
  queue_.notify();  // EAGAIN: the front-end has a signal pending anyway
  EXPECT_EQ(queue_.stats().notifications_sent, 1u);
  EXPECT_EQ(queue_.stats().call_fd_errors, 0u);
}

TEST_F(SplitQueueNotifyTest, AnUnwritableCallFdIsCountedNotFatal) {
  start(8);
  int pipe_fds[2];
  ASSERT_EQ(::pipe2(pipe_fds, O_CLOEXEC | O_NONBLOCK), 0);
  base::UniqueFd read_end(pipe_fds[0]);
  base::UniqueFd write_end(pipe_fds[1]);
  queue_.set_call_fd(dup_fd(read_end));  // writing a pipe's read end fails with EBADF
  complete_chains(1);
  queue_.notify();
  EXPECT_EQ(ring_->used_idx(), 1);
  EXPECT_EQ(queue_.stats().notifications_sent, 1u) << "the driver wanted it, and we tried";
  EXPECT_EQ(queue_.stats().call_fd_errors, 1u);
}

}  // namespace
}  // namespace vhost_vsock::virtio
