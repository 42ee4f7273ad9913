#include "vsock/transport/unix_stream_endpoint.h"

#include <gtest/gtest.h>
#include <sys/epoll.h>
#include <sys/socket.h>

#include <string>
#include <vector>

#include "vsock/transport/hybrid_peer_endpoint.h"

namespace vhost_vsock::vsock {
namespace {

struct UnixStreamEndpointTest : ::testing::Test {
  base::EventLoop loop;
  base::UniqueFd host_peer;
  int device_fd = -1;

  template <typename Endpoint = UnixStreamEndpoint>
  std::unique_ptr<Endpoint> make() {
    int fds[2];
    EXPECT_EQ(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, fds), 0);
    host_peer.reset(fds[1]);
    device_fd = fds[0];
    return std::make_unique<Endpoint>(loop, base::UniqueFd(fds[0]));
  }

  static HostEndpoint::SendResult send_text(HostEndpoint& endpoint, const std::string& text) {
    iovec iov{const_cast<char*>(text.data()), text.size()};
    return endpoint.send(std::span(&iov, 1));
  }
};

TEST(HostEventsFromEpoll, HangupAndErrorsAlsoWakeReadersAndWriters) {
  const HostEvents in = host_events_from_epoll(EPOLLIN);
  EXPECT_TRUE(in.readable);
  EXPECT_FALSE(in.writable || in.hangup || in.connected);
  const HostEvents rdhup = host_events_from_epoll(EPOLLRDHUP);
  EXPECT_TRUE(rdhup.readable);
  EXPECT_FALSE(rdhup.hangup);
  const HostEvents out = host_events_from_epoll(EPOLLOUT);
  EXPECT_TRUE(out.writable);
  EXPECT_FALSE(out.readable || out.hangup);
  for (uint32_t failed : {uint32_t{EPOLLHUP}, uint32_t{EPOLLERR}}) {
    const HostEvents events = host_events_from_epoll(failed);
    EXPECT_TRUE(events.readable && events.writable && events.hangup);
    EXPECT_FALSE(events.connected);
  }
}

TEST_F(UnixStreamEndpointTest, SendsAndReceivesThroughIovecs) {
  auto endpoint = make();
  EXPECT_EQ(endpoint->socket_type(), SocketType::kStream);
  std::string a = "hello ", b = "world";
  iovec out[2] = {{a.data(), a.size()}, {b.data(), b.size()}};
  const auto sent = endpoint->send(out);
  EXPECT_EQ(sent.status, HostEndpoint::SendStatus::kOk);
  EXPECT_EQ(sent.bytes, 11u);
  char buf[32] = {};
  ASSERT_EQ(::read(host_peer.get(), buf, sizeof(buf)), 11);
  EXPECT_EQ(std::string(buf, 11), "hello world");

  ASSERT_EQ(::write(host_peer.get(), "abcdef", 6), 6);
  char x[2], y[8];
  iovec in[2] = {{x, sizeof(x)}, {y, sizeof(y)}};
  const auto got = endpoint->receive(in);
  EXPECT_EQ(got.status, HostEndpoint::ReceiveStatus::kData);
  EXPECT_EQ(got.bytes, 6u);
  EXPECT_EQ(std::string(x, 2) + std::string(y, 4), "abcdef");
  EXPECT_EQ(endpoint->receive(in).status, HostEndpoint::ReceiveStatus::kWouldBlock);
}

TEST_F(UnixStreamEndpointTest, FullSocketWouldBlockAndUnreadBytesAreReported) {
  auto endpoint = make();
  EXPECT_EQ(endpoint->unread_by_peer(), 0u);
  std::vector<uint8_t> junk(4096, 0x5A);
  iovec iov{junk.data(), junk.size()};
  size_t total = 0;
  for (;;) {
    const auto result = endpoint->send(std::span(&iov, 1));
    total += result.bytes;
    if (result.status == HostEndpoint::SendStatus::kWouldBlock) break;
    ASSERT_EQ(result.status, HostEndpoint::SendStatus::kOk);
  }
  EXPECT_GT(total, 0u);
  const size_t unread = endpoint->unread_by_peer();
  EXPECT_GT(unread, 0u);
  std::vector<uint8_t> sink(total);
  ASSERT_GT(::read(host_peer.get(), sink.data(), sink.size()), 0);
  EXPECT_LT(endpoint->unread_by_peer(), unread);  // falls as the host reads
}

TEST_F(UnixStreamEndpointTest, PeerCloseIsEofForReceiveAndGoneForSend) {
  auto endpoint = make();
  host_peer.reset();
  char buf[8];
  iovec in{buf, sizeof(buf)};
  EXPECT_EQ(endpoint->receive(std::span(&in, 1)).status, HostEndpoint::ReceiveStatus::kEof);
  const auto sent = send_text(*endpoint, "late");  // no SIGPIPE
  EXPECT_EQ(sent.status, HostEndpoint::SendStatus::kGone);
  EXPECT_EQ(sent.bytes, 0u);
}

TEST_F(UnixStreamEndpointTest, ShutdownSendGivesThePeerEofButKeepsReceiving) {
  auto endpoint = make();
  endpoint->shutdown_send();
  char buf[8];
  EXPECT_EQ(::read(host_peer.get(), buf, sizeof(buf)), 0);
  ASSERT_EQ(::write(host_peer.get(), "up", 2), 2);
  iovec in{buf, sizeof(buf)};
  EXPECT_EQ(endpoint->receive(std::span(&in, 1)).bytes, 2u);
}

TEST_F(UnixStreamEndpointTest, WatchReportsEdgesAndCloseStopsWatching) {
  auto endpoint = make();
  std::vector<HostEvents> seen;
  endpoint->watch([&](HostEvents events) { seen.push_back(events); });
  EXPECT_TRUE(loop.watching(device_fd));
  loop.run_once(std::chrono::milliseconds(0));
  ASSERT_EQ(seen.size(), 1u);
  EXPECT_TRUE(seen[0].writable);
  EXPECT_FALSE(seen[0].readable);
  ASSERT_EQ(::write(host_peer.get(), "x", 1), 1);
  loop.run_once(std::chrono::milliseconds(100));
  ASSERT_EQ(seen.size(), 2u);
  EXPECT_TRUE(seen[1].readable);
  char buf[4];
  iovec in{buf, sizeof(buf)};
  EXPECT_EQ(endpoint->receive(std::span(&in, 1)).bytes, 1u);

  endpoint->close();
  endpoint->close();  // idempotent
  EXPECT_FALSE(endpoint->is_open());
  EXPECT_FALSE(loop.watching(device_fd));
  EXPECT_EQ(::read(host_peer.get(), buf, sizeof(buf)), 0);  // the peer sees EOF
  EXPECT_EQ(endpoint->receive(std::span(&in, 1)).status, HostEndpoint::ReceiveStatus::kError);
  EXPECT_EQ(endpoint->unread_by_peer(), 0u);
}

TEST_F(UnixStreamEndpointTest, OnlyHybridPeersGreetWithTheirHostPort) {
  std::array<uint8_t, kMaxGreetingBytes> out{};
  EXPECT_EQ(make()->accept_greeting(5000, out), 0u);
  auto hybrid = make<HybridPeerEndpoint>();
  size_t n = hybrid->accept_greeting(5000, out);
  EXPECT_EQ(std::string(out.begin(), out.begin() + static_cast<std::ptrdiff_t>(n)), "OK 5000\n");
  n = hybrid->accept_greeting(4294967295u, out);
  EXPECT_EQ(std::string(out.begin(), out.begin() + static_cast<std::ptrdiff_t>(n)), "OK 4294967295\n");
  EXPECT_EQ(hybrid->socket_type(), SocketType::kStream);
}

}  // namespace
}  // namespace vhost_vsock::vsock
