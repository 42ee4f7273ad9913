// A guest can make every avail slot name a suffix of one long descriptor
// chain, so that draining the ring walks O(queue size^2) descriptors. Passes
// must stay bounded and yield to the event loop, and still finish the work.
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>

#include "testing/muxer_test_harness.h"

namespace vhost_vsock::vsock::test {
namespace {

using namespace std::chrono_literals;

constexpr uint16_t kQueueSize = 4096;
constexpr uint64_t kBudget = uint64_t{1} << 16;  // Muxer's per-pass walk budget at this queue size

TEST(MuxerWalkBudget, SuffixChainsInEveryTxSlotAreServedInBoundedPasses) {
  MuxerHarness h({}, kQueueSize, 64 << 20);
  // Room for the RSTs (reposted below): the TX pass takes no packet it could not answer.
  h.post_rx_buffers(kQueueSize / 2, 64);
  testing::DriverVring& ring = h.tx_ring();
  // Descriptors 0..N-2 are empty links; N-1 holds a REQUEST to a port nobody listens on.
  const uint64_t header_gpa = h.ram().alloc(kHeaderSize);
  encode_header(h.guest_header(Op::kRequest, 5000, 9999),
                std::span<uint8_t, kHeaderSize>(h.ram().host(header_gpa, kHeaderSize), kHeaderSize));
  for (uint16_t i = 0; i + 1 < kQueueSize; ++i) {
    ring.write_descriptor(i, header_gpa, 0, testing::kDescFlagNext, static_cast<uint16_t>(i + 1));
  }
  ring.write_descriptor(kQueueSize - 1, header_gpa, static_cast<uint32_t>(kHeaderSize), 0, 0);
  for (uint16_t head = 0; head < kQueueSize; ++head) ring.publish_head(head);

  const auto& stats = h.tx_queue().stats();
  uint64_t before = stats.descriptors_walked;
  h.kick_tx();
  uint64_t largest_step = stats.descriptors_walked - before;
  for (int step = 0; step < 10000 && stats.chains_popped < kQueueSize; ++step) {
    before = stats.descriptors_walked;
    h.loop().run_once(0ms);
    if (!h.received().empty()) h.kick_rx();
    largest_step = std::max(largest_step, stats.descriptors_walked - before);
  }
  EXPECT_EQ(stats.chains_popped, kQueueSize);  // every request was still answered
  EXPECT_EQ(stats.descriptors_walked, uint64_t{kQueueSize} * (kQueueSize + 1) / 2);
  // One pass stops at the budget, overshooting by at most one chain.
  EXPECT_LE(largest_step, kBudget + kQueueSize);
  EXPECT_GT(h.stats().tx_passes, stats.descriptors_walked / (kBudget + kQueueSize));
  EXPECT_EQ(h.stats().packets_from_guest, kQueueSize);
}

}  // namespace
}  // namespace vhost_vsock::vsock::test
