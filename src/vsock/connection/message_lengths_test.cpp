#include "vsock/connection/message_lengths.h"

#include <gtest/gtest.h>

namespace vhost_vsock::vsock {
namespace {

TEST(MessageLengths, FirstInFirstOutAcrossCompaction) {
  MessageLengths fifo;
  EXPECT_TRUE(fifo.empty());
  uint32_t next_in = 0;
  uint32_t next_out = 0;
  // Never drained completely: compaction must keep the order and the count.
  for (int round = 0; round < 50; ++round) {
    for (int i = 0; i < 30; ++i) fifo.push_back(next_in++);
    for (int i = 0; i < 25; ++i) {
      ASSERT_EQ(fifo.front(), next_out++);
      fifo.pop_front();
    }
    ASSERT_EQ(fifo.size(), next_in - next_out);
  }
  while (!fifo.empty()) {
    ASSERT_EQ(fifo.front(), next_out++);
    fifo.pop_front();
  }
  EXPECT_EQ(next_out, next_in);
  fifo.push_back(7);
  fifo.clear();
  EXPECT_TRUE(fifo.empty());
  EXPECT_EQ(fifo.size(), 0U);
}

}  // namespace
}  // namespace vhost_vsock::vsock
