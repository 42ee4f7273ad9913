#include "vsock/connection/tx_ring_buffer.h"

#include <gtest/gtest.h>

#include <vector>

namespace vhost_vsock::vsock {
namespace {

std::vector<uint8_t> drain(TxRingBuffer& ring) {
  iovec iov[2];
  size_t count = ring.readable_iovecs(iov);
  std::vector<uint8_t> out;
  for (size_t i = 0; i < count; ++i) {
    auto* p = static_cast<uint8_t*>(iov[i].iov_base);
    out.insert(out.end(), p, p + iov[i].iov_len);
  }
  ring.consume(out.size());
  return out;
}

std::vector<uint8_t> bytes(size_t n, uint8_t start) {
  std::vector<uint8_t> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = static_cast<uint8_t>(start + i);
  return v;
}

TEST(TxRingBuffer, AllocatesLazilyAndFreesWhenDrained) {
  TxRingBuffer ring(16);
  EXPECT_FALSE(ring.allocated());
  ring.append(bytes(5, 0));
  EXPECT_TRUE(ring.allocated());
  ring.consume(3);
  EXPECT_TRUE(ring.allocated());
  ring.consume(2);
  EXPECT_FALSE(ring.allocated());
  EXPECT_TRUE(ring.empty());
}

TEST(TxRingBuffer, AppendStopsAtCapacity) {
  TxRingBuffer ring(10);
  EXPECT_EQ(ring.append(bytes(7, 0)), 7u);
  EXPECT_EQ(ring.append(bytes(7, 7)), 3u);
  EXPECT_EQ(ring.free_space(), 0u);
  EXPECT_EQ(ring.append(bytes(1, 0)), 0u);
  EXPECT_EQ(drain(ring), bytes(10, 0));
}

TEST(TxRingBuffer, WrapsAroundPreservingOrder) {
  TxRingBuffer ring(8);
  ring.append(bytes(6, 0));
  ring.consume(4);  // head at 4, two bytes left
  EXPECT_EQ(ring.append(bytes(6, 6)), 6u);
  iovec iov[2];
  EXPECT_EQ(ring.readable_iovecs(iov), 2u);
  EXPECT_EQ(iov[0].iov_len + iov[1].iov_len, 8u);
  std::vector<uint8_t> expected{4, 5, 6, 7, 8, 9, 10, 11};
  EXPECT_EQ(drain(ring), expected);
}

TEST(TxRingBuffer, AppendFromIovecsWithOffset) {
  auto a = bytes(4, 0), b = bytes(4, 4), c = bytes(4, 8);
  std::vector<iovec> iovs{{a.data(), a.size()}, {b.data(), b.size()}, {c.data(), c.size()}};
  TxRingBuffer ring(32);
  EXPECT_EQ(ring.append(iovs, 3, 6), 6u);
  EXPECT_EQ(drain(ring), bytes(6, 3));
}

TEST(TxRingBuffer, PartialConsumeThenRefillManyTimes) {
  TxRingBuffer ring(13);
  uint8_t next_in = 0, next_out = 0;
  for (int round = 0; round < 200; ++round) {
    size_t add = static_cast<size_t>(round % 7) + 1;
    auto chunk = bytes(add, next_in);
    size_t appended = ring.append(chunk);
    next_in = static_cast<uint8_t>(next_in + appended);
    iovec iov[2];
    size_t count = ring.readable_iovecs(iov);
    ASSERT_GT(count, 0u);
    size_t take = std::min<size_t>(iov[0].iov_len, static_cast<size_t>(round % 5) + 1);
    for (size_t i = 0; i < take; ++i) {
      ASSERT_EQ(static_cast<uint8_t*>(iov[0].iov_base)[i], next_out) << round;
      ++next_out;
    }
    ring.consume(take);
  }
}

}  // namespace
}  // namespace vhost_vsock::vsock
