// The seed flows in both directions, half-close each way, and resets.
#include <sys/socket.h>

#include <chrono>

#include "fixture.h"

namespace vhost_vsock::integration {
namespace {

using Clock = std::chrono::steady_clock;

class StreamFlowTest : public RingDaemonTest {};

TEST_P(StreamFlowTest, GuestConnectsToHostListener) {
  start();
  HostListener listener(daemon().uds_port_path(1234));
  auto c = guest_connects(listener, 1234);
  ASSERT_TRUE(c.guest.established());
  ASSERT_TRUE(c.host.valid());
  EXPECT_EQ(c.guest.peer_port(), 1234u);

  ASSERT_TRUE(c.guest.send("Hello from guest!\n"));
  EXPECT_EQ(read_exactly(c.host.get(), 18, Millis(5000)), "Hello from guest!\n");

  ASSERT_TRUE(write_all(c.host.get(), "Hello from host!\n"));
  EXPECT_EQ(c.guest.recv_exactly(17, Millis(5000)), "Hello from host!\n");

  // The device advertised its credit on the RESPONSE.
  EXPECT_GT(c.guest.peer_buf_alloc(), 0u);
}

TEST_P(StreamFlowTest, HostConnectsToGuestListener) {
  start();
  guest().listen(1234);
  UniqueFd host = unix_connect(daemon().uds_path());
  ASSERT_TRUE(host.valid());
  ASSERT_TRUE(write_all(host.get(), "CONNECT 1234\n"));
  auto accepted = guest().accept(1234, Millis(5000));
  ASSERT_TRUE(accepted.has_value());
  auto ok = read_line(host.get(), 64, Millis(5000));
  ASSERT_TRUE(ok.has_value());
  ASSERT_EQ(ok->rfind("OK ", 0), 0u) << *ok;
  ASSERT_EQ(ok->back(), '\n');
  const uint64_t host_port = std::stoull(ok->substr(3));
  EXPECT_GE(host_port, 1ULL << 30);
  EXPECT_LT(host_port, 1ULL << 31);
  EXPECT_EQ(accepted->peer_port(), host_port) << "OK names the port the guest sees as its peer";
  EXPECT_EQ(accepted->local_port(), 1234u);

  ASSERT_TRUE(write_all(host.get(), "ping from host\n"));
  EXPECT_EQ(accepted->recv_exactly(15, Millis(5000)), "ping from host\n");
  ASSERT_TRUE(accepted->send("pong from guest\n"));
  EXPECT_EQ(read_exactly(host.get(), 16, Millis(5000)), "pong from guest\n");
}

TEST_P(StreamFlowTest, HostPortsAreDistinctAcrossConnections) {
  start();
  guest().listen(77);
  uint64_t first = 0;
  uint64_t second = 0;
  auto a = host_connects(77, &first);
  auto b = host_connects(77, &second);
  ASSERT_TRUE(a.host.valid() && b.host.valid());
  EXPECT_NE(first, second);
  EXPECT_NE(a.guest.peer_port(), b.guest.peer_port());
  // Data does not cross between them.
  ASSERT_TRUE(write_all(a.host.get(), "to-a"));
  ASSERT_TRUE(write_all(b.host.get(), "to-b"));
  EXPECT_EQ(a.guest.recv_exactly(4, Millis(5000)), "to-a");
  EXPECT_EQ(b.guest.recv_exactly(4, Millis(5000)), "to-b");
}

TEST_P(StreamFlowTest, GuestHalfCloseKeepsHostToGuestDirection) {
  start();
  HostListener listener(daemon().uds_port_path(2000));
  auto c = guest_connects(listener, 2000);
  ASSERT_TRUE(c.host.valid());
  ASSERT_TRUE(c.guest.send("last words"));
  ASSERT_TRUE(c.guest.shutdown(SHUT_WR));
  // The host reads the data, then EOF.
  EXPECT_EQ(read_until_eof(c.host.get(), Millis(5000)), "last words");
  // The other direction still works.
  ASSERT_TRUE(write_all(c.host.get(), "still here"));
  EXPECT_EQ(c.guest.recv_exactly(10, Millis(5000)), "still here");
  EXPECT_EQ(c.guest.state(), StreamState::kEstablished);
  // Host closes its side: the guest sees EOF.
  c.host.reset();
  EXPECT_TRUE(c.guest.wait_peer_shutdown(vsock::kShutdownSend, Millis(5000)));
  EXPECT_EQ(c.guest.recv(100, Millis(2000)), "");
  EXPECT_TRUE(c.guest.eof());
}

TEST_P(StreamFlowTest, HostHalfCloseKeepsGuestToHostDirection) {
  start();
  guest().listen(2001);
  auto c = host_connects(2001);
  ASSERT_TRUE(c.host.valid() && c.guest.valid());
  ASSERT_TRUE(write_all(c.host.get(), "request body"));
  ASSERT_EQ(::shutdown(c.host.get(), SHUT_WR), 0);
  EXPECT_EQ(c.guest.recv_until_eof(Millis(5000)), "request body");
  EXPECT_TRUE(c.guest.eof());
  EXPECT_EQ(c.guest.peer_shutdown_flags() & vsock::kShutdownSend, vsock::kShutdownSend);
  EXPECT_EQ(c.guest.state(), StreamState::kEstablished) << "half-close must not end the stream";
  // The reply still flows guest -> host after the host's SHUT_WR.
  ASSERT_TRUE(c.guest.send("response body"));
  EXPECT_EQ(read_exactly(c.host.get(), 13, Millis(5000)), "response body");
  c.guest.close();
  EXPECT_TRUE(wait_peer_closed(c.host.get(), Millis(5000)));
  EXPECT_TRUE(c.guest.wait_closed(Millis(5000)));
}

TEST_P(StreamFlowTest, GuestResetClosesHostSocket) {
  start();
  HostListener listener(daemon().uds_port_path(2002));
  auto c = guest_connects(listener, 2002);
  ASSERT_TRUE(c.host.valid());
  ASSERT_TRUE(c.guest.send("x"));
  EXPECT_EQ(read_exactly(c.host.get(), 1, Millis(5000)), "x");
  const auto start_time = Clock::now();
  c.guest.reset();
  EXPECT_TRUE(wait_peer_closed(c.host.get(), Millis(2000)));
  EXPECT_LT(Clock::now() - start_time, Millis(1000));
  // The device must not answer our RST (orphan RSTs would reset reused pairs).
  EXPECT_TRUE(guest().wait_stats([](const auto& s) { return s.resets_sent == 1; }, Millis(100)));
  std::this_thread::sleep_for(Millis(200));
  EXPECT_EQ(guest().stats().resets_received, 0u);
}

TEST_P(StreamFlowTest, HostCloseSendsShutdownThenGuestReset) {
  start({}, [] {
    GuestOptions o;
    o.capture_packets = true;
    return o;
  }());
  HostListener listener(daemon().uds_port_path(2003));
  auto c = guest_connects(listener, 2003);
  ASSERT_TRUE(c.host.valid());
  ASSERT_TRUE(write_all(c.host.get(), "bye"));
  c.host.reset();  // close
  // Data first, then SHUTDOWN(RCV|SEND); the guest driver answers with RST.
  EXPECT_EQ(c.guest.recv_until_eof(Millis(5000)), "bye");
  EXPECT_TRUE(c.guest.wait_closed(Millis(5000)));
  EXPECT_FALSE(c.guest.reset_received());
  const uint32_t local = c.guest.local_port();
  // If the daemon reads EOF before it sees the hang-up, a SHUTDOWN(SEND)
  // comes first (valid); the full one must follow.
  auto shutdown = guest().wait_packet(
      [&](const testing::CapturedPacket& p) {
        return p.header.dst_port == local && p.header.operation() == vsock::Op::kShutdown &&
               p.header.flags == (vsock::kShutdownRcv | vsock::kShutdownSend);
      },
      Millis(1000));
  ASSERT_TRUE(shutdown.has_value()) << "no SHUTDOWN(RCV|SEND) after the host closed";
  // After our RST the pair is free: a new connection works.
  auto again = guest_connects(listener, 2003);
  ASSERT_TRUE(again.guest.send("again"));
  EXPECT_EQ(read_exactly(again.host.get(), 5, Millis(5000)), "again");
}

TEST_P(StreamFlowTest, DeviceResetsGuestThatNeverClosesAfterShutdown) {
  DaemonOptions d;
  d.extra_args = {"--shutdown-timeout", "300"};
  GuestOptions g;
  g.reset_on_peer_shutdown = false;  // a guest that ignores SHUTDOWN
  start(d, g);
  HostListener listener(daemon().uds_port_path(2004));
  auto c = guest_connects(listener, 2004);
  ASSERT_TRUE(c.host.valid());
  c.host.reset();
  EXPECT_TRUE(c.guest.wait_peer_shutdown(vsock::kShutdownRcv | vsock::kShutdownSend, Millis(5000)));
  const auto start_time = Clock::now();
  EXPECT_TRUE(c.guest.wait_reset(Millis(5000))) << "device never reset the lingering connection";
  EXPECT_LT(Clock::now() - start_time, Millis(3000));
}

TEST_P(StreamFlowTest, GuestCloseEndsHostSocketAfterData) {
  start();
  guest().listen(2005);
  auto c = host_connects(2005);
  ASSERT_TRUE(c.guest.valid());
  std::string payload(100000, 'g');
  for (size_t i = 0; i < payload.size(); ++i) payload[i] = static_cast<char>('a' + i % 26);
  ASSERT_TRUE(c.guest.send(payload));
  c.guest.close();
  // Every byte sent before close() arrives before EOF.
  EXPECT_EQ(read_until_eof(c.host.get(), Millis(5000)), payload);
  EXPECT_TRUE(c.guest.wait_closed(Millis(5000)));
}

VUV_FOR_EACH_RING_LAYOUT(StreamFlowTest);

}  // namespace
}  // namespace vhost_vsock::integration
