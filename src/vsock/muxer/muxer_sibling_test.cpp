// Sibling routing between the muxers of one daemon: two (or three) simulated
// guests, each a MuxerHarness with its own loop, sharing a SiblingHub; the
// test runs their loops in turn on one thread.
#include <gtest/gtest.h>

#include <chrono>
#include <memory>
#include <vector>

#include "vsock/muxer/muxer_test_fixture.h"
#include "vsock/router/sibling_hub.h"

namespace vhost_vsock::vsock::test {
namespace {

constexpr uint64_t kCidA = 3;
constexpr uint64_t kCidB = 4;
constexpr uint64_t kCidC = 5;
constexpr uint32_t kPortA = 50000;
constexpr uint32_t kPortB = 7000;
constexpr uint64_t kFeatures = (1ULL << 32) | kFeatureSeqpacket;  // VERSION_1 + SEQPACKET

class SiblingTest : public ::testing::Test {
 protected:
  void SetUp() override {
    hub = make_sibling_hub({{kCidA, {"g1"}, 16}, {kCidB, {"g1", "g2"}, 16}, {kCidC, {"g2"}, 16}});
    a = make_vm(kCidA);
    b = make_vm(kCidB);
    c = make_vm(kCidC);
  }
  void TearDown() override {
    c.reset();
    b.reset();
    a.reset();
  }

  std::unique_ptr<MuxerHarness> make_vm(uint64_t cid, size_t rx_buffers = 64) {
    MuxerLimits limits;
    limits.request_timeout = 500ms;
    limits.max_connections = 16;
    auto vm = std::make_unique<MuxerHarness>(limits, 256, 64 << 20, false, "/tmp", false, [&](MuxerOptions& options) {
      options.guest_cid = cid;
      options.siblings = hub;
    });
    vm->muxer().set_negotiated_features(kFeatures);
    vm->post_rx_buffers(rx_buffers);
    return vm;
  }

  static PacketHeader header(uint64_t src, uint64_t dst, Op op, uint32_t src_port, uint32_t dst_port, uint32_t len = 0,
                             SocketType type = SocketType::kStream, uint32_t flags = 0) {
    PacketHeader h;
    h.src_cid = src;
    h.dst_cid = dst;
    h.src_port = src_port;
    h.dst_port = dst_port;
    h.len = len;
    h.type = static_cast<uint16_t>(type);
    h.op = static_cast<uint16_t>(op);
    h.flags = flags;
    h.buf_alloc = 256 * 1024;
    return h;
  }

  // Runs every VM's loop in turn for `duration`.
  void run(std::chrono::milliseconds duration = 100ms) {
    const auto deadline = std::chrono::steady_clock::now() + duration;
    while (std::chrono::steady_clock::now() < deadline) {
      for (MuxerHarness* vm : {a.get(), b.get(), c.get()}) {
        if (vm != nullptr) vm->loop().run_once(0ms);
      }
    }
  }

  // Runs every VM's loop until `vm`'s guest has `count` packets (a fixed
  // window can pass with few turns on a loaded machine), then 20 ms more so
  // that extra packets show as well.
  std::vector<GuestPacket> receive(MuxerHarness& vm, size_t count) {
    std::vector<GuestPacket> out;
    const auto deadline = std::chrono::steady_clock::now() + 5s;
    while (out.size() < count && std::chrono::steady_clock::now() < deadline) {
      run(1ms);
      for (auto& p : vm.received()) out.push_back(std::move(p));
    }
    run(20ms);
    for (auto& p : vm.received()) out.push_back(std::move(p));
    return out;
  }

  // A connects to B's port kPortB; B's guest accepts.
  void connect_a_to_b(SocketType type = SocketType::kStream) {
    a->send(header(kCidA, kCidB, Op::kRequest, kPortA, kPortB, 0, type));
    auto at_b = receive(*b, 1);
    ASSERT_EQ(at_b.size(), 1u);
    EXPECT_EQ(at_b[0].header, header(kCidA, kCidB, Op::kRequest, kPortA, kPortB, 0, type));
    b->send(header(kCidB, kCidA, Op::kResponse, kPortB, kPortA, 0, type));
    auto at_a = receive(*a, 1);
    ASSERT_EQ(at_a.size(), 1u);
    EXPECT_EQ(at_a[0].header.operation(), Op::kResponse);
    EXPECT_EQ(at_a[0].header.src_cid, kCidB);
  }

  static std::vector<uint8_t> payload_of(const std::vector<GuestPacket>& packets, Op op = Op::kRw) {
    std::vector<uint8_t> out;
    for (const auto& p : packets) {
      if (p.header.operation() == op) out.insert(out.end(), p.payload.begin(), p.payload.end());
    }
    return out;
  }

  std::shared_ptr<SiblingHub> hub;
  std::unique_ptr<MuxerHarness> a, b, c;
};

TEST_F(SiblingTest, StreamDataRelayedBothWaysWithHeadersUnchanged) {
  connect_a_to_b();
  EXPECT_EQ(a->stats().sibling_connections_active, 1u);
  EXPECT_EQ(b->stats().sibling_connections_active, 1u);
  // A 10000-byte packet reaches B split over its 4096-byte RX buffers, bytes intact.
  const auto data = pattern(10000, 1);
  a->send(header(kCidA, kCidB, Op::kRw, kPortA, kPortB, 10000), data);
  run();
  auto at_b = b->received();
  ASSERT_EQ(at_b.size(), 3u);
  for (const auto& p : at_b) {
    EXPECT_EQ(p.header.src_cid, kCidA);
    EXPECT_EQ(p.header.dst_cid, kCidB);
    EXPECT_EQ(p.header.buf_alloc, 256u * 1024);  // the sender's credit passes unchanged
  }
  EXPECT_EQ(payload_of(at_b), data);
  const auto back = pattern(3000, 2);
  b->send(header(kCidB, kCidA, Op::kRw, kPortB, kPortA, 3000), back);
  run();
  EXPECT_EQ(payload_of(a->received()), back);
  // The listing shows the peer's CID on both sides.
  std::vector<ConnectionInfo> listed;
  a->muxer().list_connections(&listed);
  ASSERT_EQ(listed.size(), 1u);
  EXPECT_EQ(listed[0].peer_cid, kCidB);
  EXPECT_EQ(listed[0].guest_port, kPortA);
  EXPECT_EQ(listed[0].host_port, kPortB);
  EXPECT_TRUE(listed[0].guest_initiated);
  EXPECT_EQ(listed[0].bytes_from_guest, 10000u);
  EXPECT_EQ(listed[0].bytes_to_guest, 3000u);
  // The guest's RST ends it on both sides.
  a->send(header(kCidA, kCidB, Op::kRst, kPortA, kPortB));
  run();
  at_b = b->received();
  ASSERT_EQ(at_b.size(), 1u);
  EXPECT_EQ(at_b[0].header.operation(), Op::kRst);
  EXPECT_EQ(a->stats().sibling_connections_active, 0u);
  EXPECT_EQ(b->stats().sibling_connections_active, 0u);
  EXPECT_EQ(a->stats().sibling_bytes_out, 10000u);
  EXPECT_EQ(b->stats().sibling_bytes_in, 10000u);
}

TEST_F(SiblingTest, SeqpacketKeepsTypeAndEndOfMessageOnTheLastPiece) {
  connect_a_to_b(SocketType::kSeqpacket);
  const auto message = pattern(9000, 3);
  a->send(header(kCidA, kCidB, Op::kRw, kPortA, kPortB, 9000, SocketType::kSeqpacket, kSeqEom | kSeqEor), message);
  run();
  auto at_b = b->received();
  ASSERT_EQ(at_b.size(), 3u);
  for (size_t i = 0; i < at_b.size(); ++i) {
    EXPECT_EQ(at_b[i].header.type, static_cast<uint16_t>(SocketType::kSeqpacket));
    EXPECT_EQ(at_b[i].header.flags, i + 1 == at_b.size() ? (kSeqEom | kSeqEor) : 0u) << i;
  }
  EXPECT_EQ(payload_of(at_b), message);
}

TEST_F(SiblingTest, NoSharedGroupOrUnknownCidGetsRstAtOnceNamingTheCid) {
  // A (g1) and C (g2) share no group; CID 9 is nobody.
  for (uint64_t dst : {kCidC, uint64_t{9}}) {
    a->send(header(kCidA, dst, Op::kRequest, kPortA, kPortB));
    run(30ms);
    auto at_a = a->received();
    ASSERT_EQ(at_a.size(), 1u) << dst;
    EXPECT_EQ(at_a[0].header, [&] {
      PacketHeader rst = header(dst, kCidA, Op::kRst, kPortB, kPortA);
      rst.buf_alloc = 0;
      return rst;
    }());
  }
  EXPECT_TRUE(c->received().empty());
  EXPECT_EQ(a->stats().sibling_refused, 2u);
  // B shares g1 with A and g2 with C: both reach it.
  c->send(header(kCidC, kCidB, Op::kRequest, kPortA, kPortB));
  run();
  EXPECT_EQ(b->received().size(), 1u);
}

TEST_F(SiblingTest, SpoofedSourceIsDroppedAndPacketsForUnknownConnectionsAreRefused) {
  a->send(header(kCidC, kCidB, Op::kRequest, kPortA, kPortB));  // claims to be C
  run(30ms);
  EXPECT_TRUE(b->received().empty());
  EXPECT_TRUE(a->received().empty());
  EXPECT_EQ(a->stats().dropped_bad_address, 1u);
  // Data for a connection A never opened is not forwarded.
  a->send(header(kCidA, kCidB, Op::kRw, kPortA, kPortB, 4), pattern(4));
  run(30ms);
  EXPECT_TRUE(b->received().empty());
  auto at_a = a->received();
  ASSERT_EQ(at_a.size(), 1u);
  EXPECT_EQ(at_a[0].header.operation(), Op::kRst);
}

TEST_F(SiblingTest, SiblingThatStopsReadingBackpressuresAndThenEverythingArrives) {
  connect_a_to_b();
  // B reads nothing: its RX ring is not refilled.
  std::vector<uint8_t> sent;
  constexpr size_t kPackets = 100;  // 800 KiB: more than a channel and 64 RX buffers hold
  for (size_t i = 0; i < kPackets; ++i) {
    const auto chunk = pattern(8192, i);
    sent.insert(sent.end(), chunk.begin(), chunk.end());
    a->queue_tx(header(kCidA, kCidB, Op::kRw, kPortA, kPortB, 8192), chunk);
  }
  a->kick_tx();
  std::vector<GuestPacket> at_b;
  run(50ms);
  for (auto& p : b->received(/*repost=*/false)) at_b.push_back(std::move(p));
  run(50ms);
  EXPECT_GT(a->stats().sibling_tx_stalls, 0u);
  a->reclaim_tx();
  EXPECT_GT(a->tx_ring().in_flight(), 0u);  // the rest waits in A's TX ring
  EXPECT_LE(a->stats().sibling_bytes_out, SiblingHub::kChannelBytes + 64 * 4096u);
  // B reads again: everything arrives, in order, nothing lost.
  for (int round = 0; round < 50 && payload_of(at_b).size() < sent.size(); ++round) {
    b->post_rx_buffers(64);
    b->kick_rx();
    run(20ms);
    for (auto& p : b->received(false)) at_b.push_back(std::move(p));
  }
  EXPECT_EQ(payload_of(at_b), sent);
  a->reclaim_tx();
  EXPECT_EQ(a->tx_ring().in_flight(), 0u);
  EXPECT_EQ(a->stats().sibling_bytes_out, sent.size());
}

TEST_F(SiblingTest, ResetOfOneGuestResetsItsSiblingsConnectionsToIt) {
  connect_a_to_b();
  c->send(header(kCidC, kCidB, Op::kRequest, kPortA + 1, kPortB));
  ASSERT_EQ(receive(*b, 1).size(), 1u);
  EXPECT_EQ(c->stats().sibling_connections_active, 1u);
  // B's guest resets (device reset): A and C each get an RST for their connection to B.
  b->muxer().reset_all_connections();
  auto at_a = receive(*a, 1);
  ASSERT_EQ(at_a.size(), 1u);
  PacketHeader expected = header(kCidB, kCidA, Op::kRst, kPortB, kPortA);
  expected.buf_alloc = 0;
  EXPECT_EQ(at_a[0].header, expected);
  auto at_c = receive(*c, 1);
  ASSERT_EQ(at_c.size(), 1u);
  EXPECT_EQ(at_c[0].header.operation(), Op::kRst);
  EXPECT_EQ(at_c[0].header.dst_port, kPortA + 1);
  EXPECT_EQ(a->stats().sibling_connections_active, 0u);
  EXPECT_EQ(a->stats().sibling_resets_peer_gone, 1u);
  EXPECT_EQ(b->stats().sibling_connections_active, 0u);
}

TEST_F(SiblingTest, DisconnectedSiblingGetsNoPacketsAndItsPeersGetRsts) {
  connect_a_to_b();
  // B's front-end goes away, as VsockDevice::on_frontend_disconnected does it.
  b->muxer().reset_all_connections();
  b->muxer().set_negotiated_features(0);
  run();
  ASSERT_EQ(a->received().size(), 1u);  // the RST for the connection
  a->send(header(kCidA, kCidB, Op::kRequest, kPortA + 2, kPortB));
  run(30ms);
  auto at_a = a->received();
  ASSERT_EQ(at_a.size(), 1u);
  EXPECT_EQ(at_a[0].header.operation(), Op::kRst);
  EXPECT_TRUE(b->received().empty());
}

TEST_F(SiblingTest, SiblingConnectionsCountAgainstBothCaps) {
  // B's cap is 16: 16 connections from A fill it, the 17th is refused at once.
  for (uint32_t i = 0; i < 16; ++i) a->send(header(kCidA, kCidB, Op::kRequest, kPortA + i, kPortB));
  run();
  EXPECT_EQ(b->received().size(), 16u);
  EXPECT_EQ(b->stats().sibling_connections_active, 16u);
  c->send(header(kCidC, kCidB, Op::kRequest, kPortA, kPortB));
  run(30ms);
  auto at_c = c->received();
  ASSERT_EQ(at_c.size(), 1u);
  EXPECT_EQ(at_c[0].header.operation(), Op::kRst);
  EXPECT_EQ(c->stats().resets_cap, 1u);
  // A's own cap is full too: a 17th from A is refused.
  a->send(header(kCidA, kCidB, Op::kRequest, kPortA + 100, kPortB));
  run(30ms);
  EXPECT_EQ(a->received().size(), 1u);
  EXPECT_TRUE(b->received().empty());
  // Unanswered REQUESTs are forgotten after the request timeout: room again.
  run(700ms);
  EXPECT_EQ(a->stats().sibling_connections_active, 0u);
  EXPECT_EQ(b->stats().sibling_connections_active, 0u);
}

}  // namespace
}  // namespace vhost_vsock::vsock::test
