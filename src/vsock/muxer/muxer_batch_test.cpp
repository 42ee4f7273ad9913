// How the pump batches for the guest: the TX call travels with the RX pass
// that answers it, and data turns end at RX buffer boundaries.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "vsock/muxer/muxer_test_fixture.h"

namespace vhost_vsock::vsock::test {
namespace {

// One guest packet and its answer are one batch: the TX pass publishes the
// completion at once but calls the guest only with the RX pass that carries
// the answer, so the guest is not woken (and does not preempt us) in between.
TEST_F(MuxerTest, TxCompletionIsCalledWithTheRxPassThatAnswersIt) {
  h->send(h->guest_header(Op::kRequest, kGuestPort, 4321));  // no listener: answered with an RST
  EXPECT_TRUE(h->tx_ring().has_used());
  EXPECT_EQ(h->tx_queue().stats().notifications_sent, 0u);
  EXPECT_EQ(h->rx_interrupts(), 0u);
  auto packets = drain();
  ASSERT_EQ(packets.size(), 1u);
  EXPECT_EQ(packets[0].header.operation(), Op::kRst);
  EXPECT_EQ(h->tx_queue().stats().notifications_sent, 1u);
  EXPECT_EQ(h->rx_interrupts(), 1u);
}

// The owed TX call is not lost when there is no RX pass to carry it.
TEST_F(MuxerTest, TxCompletionIsCalledWithoutAnRxQueue) {
  h->muxer().detach_queue(Muxer::kRxQueue);
  h->send(h->guest_header(Op::kRequest, kGuestPort, 4321));
  h->loop().run_once(std::chrono::milliseconds(0));
  EXPECT_TRUE(h->tx_ring().has_used());
  EXPECT_EQ(h->tx_queue().stats().notifications_sent, 1u);
}

// Nor when the TX queue is stopped before the RX pass runs.
TEST_F(MuxerTest, TxCompletionIsCalledBeforeTheTxQueueIsDetached) {
  h->send(h->guest_header(Op::kRequest, kGuestPort, 4321));
  EXPECT_EQ(h->tx_queue().stats().notifications_sent, 0u);
  h->muxer().detach_queue(Muxer::kTxQueue);
  EXPECT_EQ(h->tx_queue().stats().notifications_sent, 1u);
}

// A data turn ends at the end of an RX buffer, not mid-buffer at the
// quantum: with buffers that do not divide 64 KiB (Linux's hold 3,732 bytes)
// only the packet at the end of the data is short.
TEST_F(MuxerTest, HostDataFillsWholeRxBuffersAcrossQuanta) {
  h.reset();
  h = std::make_unique<MuxerHarness>(limits());
  constexpr uint32_t kPayload = 3000;  // 65,536 is not a multiple
  h->post_rx_buffers(64, kPayload);
  auto host = establish_guest_connection();
  const size_t total = 100000;  // more than one quantum, all waiting at once
  auto data = pattern(total, 5);
  ASSERT_EQ(::write(host.get(), data.data(), total), static_cast<ssize_t>(total));
  std::vector<uint8_t> got;
  std::vector<size_t> sizes;
  for (int i = 0; i < 100 && got.size() < total; ++i) {
    h->loop().run_once(1ms);
    for (auto& p : h->received()) {
      ASSERT_EQ(p.header.operation(), Op::kRw);
      sizes.push_back(p.payload.size());
      got.insert(got.end(), p.payload.begin(), p.payload.end());
    }
  }
  ASSERT_EQ(got, data);
  ASSERT_EQ(sizes.size(), (total + kPayload - 1) / kPayload);
  for (size_t i = 0; i + 1 < sizes.size(); ++i) EXPECT_EQ(sizes[i], kPayload) << "packet " << i;
  EXPECT_EQ(sizes.back(), total % kPayload);
}

}  // namespace
}  // namespace vhost_vsock::vsock::test
