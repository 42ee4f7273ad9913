// A guest that floods REQUESTs past the connection cap, faster than it takes
// replies: every REQUEST is answered exactly once (RESPONSE or RST), because
// the TX pass stops taking packets while the reply queue is full instead of
// dropping replies; and the refusals write a bounded number of log lines.
#include <gtest/gtest.h>

#include <map>

#include "testing/captured_log.h"
#include "vsock/muxer/muxer_test_fixture.h"
#include "vsock/router/orphan_rsts.h"

namespace vhost_vsock::vsock::test {
namespace {

using testing::CapturedLog;

TEST_F(MuxerTest, RequestFloodPastTheCapIsAnsweredInFull) {
  CapturedLog log;
  constexpr size_t kCap = 8;
  constexpr uint32_t kRequests = 6000;  // ~6x the replies the muxer holds
  h.reset();
  auto l = limits();
  l.max_connections = kCap;
  h = std::make_unique<MuxerHarness>(l);
  listeners[kHostPort] = MuxerHarness::listen_unix(h->port_path(kHostPort));
  h->post_rx_buffers(32);  // far fewer RX buffers than the TX ring brings REQUESTs

  std::map<uint32_t, int> answers;  // guest port -> RESPONSEs + RSTs
  size_t responses = 0;
  size_t resets = 0;
  uint32_t sent = 0;
  for (int round = 0; round < 20000 && responses + resets < kRequests; ++round) {
    h->reclaim_tx();
    bool queued = false;
    while (sent < kRequests && h->tx_ring().free_descriptors() > 0) {
      h->queue_tx(h->guest_header(Op::kRequest, 1000 + sent, kHostPort), {});
      ++sent;
      queued = true;
    }
    if (queued) h->kick_tx();
    h->loop().run_once(std::chrono::milliseconds(0));
    for (auto& p : h->received()) {
      ++answers[p.header.dst_port];
      responses += p.header.operation() == Op::kResponse ? 1 : 0;
      resets += p.header.operation() == Op::kRst ? 1 : 0;
    }
    h->kick_rx();  // the guest kicks after refilling its ring
  }
  EXPECT_EQ(sent, kRequests);
  EXPECT_EQ(responses, kCap);
  EXPECT_EQ(resets, kRequests - kCap);
  EXPECT_EQ(answers.size(), kRequests) << "some REQUESTs got no answer";
  for (const auto& [port, count] : answers) ASSERT_EQ(count, 1) << "guest port " << port;
  EXPECT_EQ(h->stats().orphan_rsts_dropped, 0u);

  EXPECT_LE(log.lines_containing("connection limit"), 20u) << "refusals at the cap are not rate-limited";
  h.reset();  // the limiter summarizes what it suppressed
  EXPECT_EQ(log.lines_containing("more guest warnings suppressed"), 1u);
}

// A guest that never takes replies stalls its own TX ring, nothing more: the
// muxer holds a bounded number of replies and leaves the rest of the ring
// unconsumed; once RX buffers come, every packet is answered.
TEST_F(MuxerTest, GuestThatTakesNoRepliesStallsOnlyItsTxRing) {
  h.reset();
  h = std::make_unique<MuxerHarness>(limits(), 1024);
  uint32_t sent = 0;
  for (int round = 0; round < 8; ++round) {
    h->reclaim_tx();
    while (h->tx_ring().free_descriptors() > 0) h->queue_tx(h->guest_header(Op::kRw, 1000 + sent++, 9), {});
    h->kick_tx();
    h->pump(20ms);
  }
  const uint64_t taken = h->stats().packets_from_guest;
  EXPECT_EQ(taken, OrphanRstQueue::kCapacity) << "the muxer took packets it has no room to answer";
  EXPECT_GT(h->tx_ring().in_flight(), 0u);
  h->kick_tx();  // kicks while blocked are cheap no-ops
  h->pump(20ms);
  EXPECT_EQ(h->stats().packets_from_guest, taken);

  h->post_rx_buffers(256);
  h->kick_rx();
  size_t resets = 0;
  for (int i = 0; i < 200 && resets < sent; ++i) {
    h->pump(5ms);
    for (auto& p : h->received()) resets += p.header.operation() == Op::kRst ? 1 : 0;
    h->kick_rx();
  }
  EXPECT_EQ(resets, sent);
  EXPECT_EQ(h->stats().packets_from_guest, sent);
  EXPECT_EQ(h->stats().orphan_rsts_dropped, 0u);
}

}  // namespace
}  // namespace vhost_vsock::vsock::test
