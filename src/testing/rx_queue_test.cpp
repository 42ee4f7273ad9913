// The simulated guest's per-stream receive queue: held RX buffers and owned
// copies, read out in arrival order, each held buffer released exactly once.
#include <gtest/gtest.h>

#include <array>
#include <string>
#include <vector>

#include "testing/vsock_driver_impl.h"

namespace vhost_vsock::testing {
namespace {

struct Slots {
  std::array<std::string, 4> payload;  // a held buffer's bytes, by slot
  std::vector<uint32_t> released;

  auto payload_of() {
    return [this](uint32_t slot) { return reinterpret_cast<const uint8_t*>(payload[slot].data()); };
  }
  auto release() {
    return [this](uint32_t slot) { released.push_back(slot); };
  }
};

std::span<const uint8_t> bytes_of(const std::string& s) {
  return {reinterpret_cast<const uint8_t*>(s.data()), s.size()};
}

std::string pop(RxQueue& queue, Slots& slots, size_t max) {
  std::string out(max, '\0');
  const size_t n =
      queue.pop(std::span(reinterpret_cast<uint8_t*>(out.data()), out.size()), slots.payload_of(), slots.release());
  out.resize(n);
  return out;
}

TEST(RxQueueTest, HeldAndCopiedBytesComeOutInArrivalOrder) {
  Slots slots;
  slots.payload[0] = "held-zero";
  slots.payload[2] = "held-two";
  RxQueue queue;
  queue.push_held(0, 9);
  queue.push_copy(bytes_of("copy"));
  queue.push_held(2, 8);
  EXPECT_EQ(queue.size(), 21u);
  EXPECT_EQ(pop(queue, slots, 100), "held-zerocopyheld-two");
  EXPECT_TRUE(queue.empty());
  EXPECT_EQ(slots.released, (std::vector<uint32_t>{0, 2}));
}

TEST(RxQueueTest, AHeldBufferIsReleasedOnlyOnceItsLastByteIsRead) {
  Slots slots;
  slots.payload[1] = "abcdef";
  RxQueue queue;
  queue.push_held(1, 6);
  EXPECT_EQ(pop(queue, slots, 4), "abcd");
  EXPECT_TRUE(slots.released.empty());
  EXPECT_EQ(queue.size(), 2u);
  EXPECT_EQ(pop(queue, slots, 4), "ef");
  EXPECT_EQ(slots.released, (std::vector<uint32_t>{1}));
  EXPECT_EQ(pop(queue, slots, 4), "");
}

TEST(RxQueueTest, CopiesAcrossTheOwnedChunkLimitComeOutWholeAndInOrder) {
  Slots slots;
  RxQueue queue;
  const std::string big(RxQueue::kOwnedChunkBytes - 1, 'x');
  queue.push_copy(bytes_of(big));
  queue.push_copy(bytes_of("y"));  // fills an owned chunk exactly
  queue.push_copy(bytes_of("z"));  // starts the next one
  queue.push_copy({});             // nothing
  EXPECT_EQ(queue.size(), RxQueue::kOwnedChunkBytes + 1);
  EXPECT_EQ(pop(queue, slots, RxQueue::kOwnedChunkBytes + 10), big + "yz");
  EXPECT_TRUE(slots.released.empty());
}

TEST(RxQueueTest, UnholdCopiesTheUnreadBytesAndReleasesEveryHeldBuffer) {
  Slots slots;
  slots.payload[0] = "0123456789";
  slots.payload[3] = "tail";
  RxQueue queue;
  queue.push_held(0, 10);
  queue.push_copy(bytes_of("-mid-"));
  queue.push_held(3, 4);
  EXPECT_EQ(pop(queue, slots, 3), "012");
  queue.unhold(slots.payload_of(), slots.release());
  EXPECT_EQ(slots.released, (std::vector<uint32_t>{0, 3}));
  slots.payload[0] = "overwritten";  // the ring reuses the buffers: the copies must not care
  slots.payload[3] = "gone";
  EXPECT_EQ(pop(queue, slots, 100), "3456789-mid-tail");
  EXPECT_EQ(slots.released.size(), 2u);  // not released again
  EXPECT_TRUE(queue.empty());
}

}  // namespace
}  // namespace vhost_vsock::testing
