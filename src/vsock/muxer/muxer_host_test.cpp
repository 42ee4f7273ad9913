#include <gtest/gtest.h>

#include <chrono>
#include <string>

#include "vsock/muxer/muxer_test_fixture.h"

namespace vhost_vsock::vsock::test {
namespace {

using Clock = std::chrono::steady_clock;
using testing::kTimerSlack;

TEST_F(MuxerTest, HostConnectHandshakeForwardsBytesAfterTheLine) {
  auto [host, request] = start_host_connection("CONNECT 40000\nearly bytes");
  h->send(h->guest_header(Op::kResponse, kGuestPort, request.src_port));
  EXPECT_EQ(read_some(host.get()), "OK " + std::to_string(request.src_port) + "\n");
  auto packets = drain();
  ASSERT_EQ(packets.size(), 1u);
  EXPECT_EQ(packets[0].header.operation(), Op::kRw);
  EXPECT_EQ(text(packets[0].payload), "early bytes");
  EXPECT_EQ(h->stats().connections_opened, 1u);
  // Both directions afterwards.
  h->send(h->guest_header(Op::kRw, kGuestPort, request.src_port, 4), bytes_of("ping"));
  EXPECT_EQ(read_some(host.get()), "ping");
  ASSERT_EQ(::write(host.get(), "pong", 4), 4);
  packets = drain();
  ASSERT_EQ(packets.size(), 1u);
  EXPECT_EQ(text(packets[0].payload), "pong");
}

TEST_F(MuxerTest, HostConnectWithoutEarlyBytesAdvertisesCreditAfterResponse) {
  auto [host, request] = start_host_connection("CONNECT 40000\n");
  h->send(h->guest_header(Op::kResponse, kGuestPort, request.src_port));
  auto packets = drain();
  ASSERT_EQ(packets.size(), 1u);
  EXPECT_EQ(packets[0].header.operation(), Op::kCreditUpdate);
  EXPECT_EQ(packets[0].header.buf_alloc, 16u * 1024);
  EXPECT_EQ(read_some(host.get()), "OK " + std::to_string(request.src_port) + "\n");
}

TEST_F(MuxerTest, SuccessiveHostConnectionsGetRoundRobinPorts) {
  auto [a, first] = start_host_connection("CONNECT 1\n", 1);
  auto [b, second] = start_host_connection("CONNECT 1\n", 1);
  EXPECT_EQ(second.src_port, first.src_port + 1);
}

TEST_F(MuxerTest, MalformedOrOverlongConnectLineClosesThatPeerOnly) {
  auto good = MuxerHarness::connect_unix(h->uds_path());
  auto bad = MuxerHarness::connect_unix(h->uds_path());
  auto long_one = MuxerHarness::connect_unix(h->uds_path());
  ASSERT_EQ(::write(bad.get(), "HELLO 12\n", 9), 9);
  std::string overlong(100, '1');
  ASSERT_EQ(::write(long_one.get(), overlong.data(), overlong.size()), 100);
  ASSERT_TRUE(h->run_until([&] { return h->stats().handshake_failures >= 2; }));
  h->pump();  // anything else those two would bring
  EXPECT_TRUE(peer_closed(bad.get()));
  EXPECT_TRUE(peer_closed(long_one.get()));
  EXPECT_FALSE(peer_closed(good.get()));
  EXPECT_EQ(h->stats().handshake_failures, 2u);
  EXPECT_TRUE(h->received().empty());  // the guest saw nothing
}

// Closed when its timeout runs out: not before (the clock starts before the
// connect, so no earlier than the timeout after it), and not much after.
TEST_F(MuxerTest, SilentHostPeerTimesOut) {
  const auto connected_by = Clock::now();
  auto silent = MuxerHarness::connect_unix(h->uds_path());
  ASSERT_EQ(::write(silent.get(), "CONN", 4), 4);
  ASSERT_TRUE(h->run_until([&] { return peer_closed(silent.get()); }));
  const auto closed_after = Clock::now() - connected_by;
  EXPECT_GE(closed_after, limits().handshake_timeout) << "closed before its handshake timeout";
  EXPECT_LT(closed_after, limits().handshake_timeout + kTimerSlack) << "closed long after its handshake timeout";
  EXPECT_EQ(h->stats().handshake_failures, 1u);
}

TEST_F(MuxerTest, GuestRefusesHostConnect) {
  auto [host, request] = start_host_connection("CONNECT 40000\n");
  h->send(h->guest_header(Op::kRst, kGuestPort, request.src_port));
  ASSERT_TRUE(h->run_until([&, fd = host.get()] { return peer_closed(fd); }));
  h->pump();                                  // an answer to the RST would come now
  EXPECT_EQ(read_some(host.get(), 0ms), "");  // no OK line
  EXPECT_EQ(h->stats().handshake_failures, 1u);
  EXPECT_EQ(h->stats().connections_active, 0u);
  EXPECT_TRUE(h->received().empty());  // guest RST is never answered
}

// Reset when the request timeout runs out (the clock starts before the
// REQUEST is sent), not before and not much after.
TEST_F(MuxerTest, GuestSilentOnRequestTimesOut) {
  const auto requested_by = Clock::now();
  auto [host, request] = start_host_connection("CONNECT 40000\n");
  auto packets = wait_for_packet();
  const auto reset_after = Clock::now() - requested_by;
  ASSERT_TRUE(h->run_until([&, fd = host.get()] { return peer_closed(fd); }));
  h->pump();
  for (auto& later : h->received()) packets.push_back(std::move(later));
  ASSERT_EQ(packets.size(), 1u);
  EXPECT_EQ(packets[0].header.operation(), Op::kRst);
  EXPECT_GE(reset_after, limits().request_timeout) << "reset before the request timeout";
  EXPECT_LT(reset_after, limits().request_timeout + kTimerSlack) << "reset long after the request timeout";
  EXPECT_EQ(h->stats().connections_active, 0u);
}

TEST_F(MuxerTest, ListenerSocketFileIsRemovedOnExit) {
  const std::string path = h->uds_path();
  h.reset();
  EXPECT_NE(::access(path.c_str(), F_OK), 0);
}

}  // namespace
}  // namespace vhost_vsock::vsock::test
