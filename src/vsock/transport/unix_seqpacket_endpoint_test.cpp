#include "vsock/transport/unix_seqpacket_endpoint.h"

#include <gtest/gtest.h>
#include <sys/socket.h>

#include <array>
#include <string>
#include <vector>

namespace vhost_vsock::vsock {
namespace {

struct UnixSeqpacketEndpointTest : ::testing::Test {
  base::EventLoop loop;
  base::UniqueFd host_peer;

  template <typename Endpoint = UnixSeqpacketEndpoint>
  std::unique_ptr<Endpoint> make() {
    int fds[2];
    EXPECT_EQ(::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_NONBLOCK, 0, fds), 0);
    host_peer.reset(fds[1]);
    return std::make_unique<Endpoint>(loop, base::UniqueFd(fds[0]));
  }
  void peer_sends(const std::string& message) const {
    ASSERT_EQ(::send(host_peer.get(), message.data(), message.size(), 0), static_cast<ssize_t>(message.size()));
  }
  std::string peer_receives() const {
    char buffer[256];
    const ssize_t n = ::recv(host_peer.get(), buffer, sizeof(buffer), MSG_DONTWAIT);
    return n < 0 ? "<none>" : std::string(buffer, static_cast<size_t>(n));
  }
};

TEST_F(UnixSeqpacketEndpointTest, PeekSizesTheMessageAndReceiveTakesItWhole) {
  auto endpoint = make();
  EXPECT_EQ(endpoint->socket_type(), SocketType::kSeqpacket);
  EXPECT_EQ(endpoint->peek_message_size().status, HostEndpoint::ReceiveStatus::kWouldBlock);
  peer_sends("hello world");
  peer_sends("x");
  const auto peeked = endpoint->peek_message_size();
  EXPECT_EQ(peeked.status, HostEndpoint::ReceiveStatus::kData);
  EXPECT_EQ(peeked.bytes, 11u);
  EXPECT_EQ(endpoint->peek_message_size().bytes, 11u) << "peeking takes nothing";
  // Into two iovecs: one message across both.
  char a[5];
  char b[6];
  iovec into[] = {{a, sizeof(a)}, {b, sizeof(b)}};
  const auto got = endpoint->receive(into);
  EXPECT_EQ(got.status, HostEndpoint::ReceiveStatus::kData);
  EXPECT_EQ(got.bytes, 11u);
  EXPECT_EQ(std::string(a, 5) + std::string(b, 6), "hello world");
  EXPECT_EQ(endpoint->peek_message_size().bytes, 1u);
}

TEST_F(UnixSeqpacketEndpointTest, EmptyMessageIsDataAndCloseIsEof) {
  auto endpoint = make();
  peer_sends("");
  const auto peeked = endpoint->peek_message_size();
  EXPECT_EQ(peeked.status, HostEndpoint::ReceiveStatus::kData);
  EXPECT_EQ(peeked.bytes, 0u);
  EXPECT_EQ(endpoint->receive({}).status, HostEndpoint::ReceiveStatus::kData);
  EXPECT_EQ(endpoint->peek_message_size().status, HostEndpoint::ReceiveStatus::kWouldBlock);
  peer_sends("last");
  host_peer.reset();
  EXPECT_EQ(endpoint->peek_message_size().bytes, 4u) << "messages sent before the close come first";
  char buffer[4];
  iovec into{buffer, sizeof(buffer)};
  EXPECT_EQ(endpoint->receive(std::span(&into, 1)).bytes, 4u);
  EXPECT_EQ(endpoint->peek_message_size().status, HostEndpoint::ReceiveStatus::kEof);
  EXPECT_EQ(endpoint->receive(std::span(&into, 1)).status, HostEndpoint::ReceiveStatus::kEof);
}

TEST_F(UnixSeqpacketEndpointTest, ReceiveNeverCutsAMessage) {
  auto endpoint = make();
  peer_sends("too long for the buffer");
  char buffer[4];
  iovec into{buffer, sizeof(buffer)};
  EXPECT_EQ(endpoint->receive(std::span(&into, 1)).status, HostEndpoint::ReceiveStatus::kError);
}

TEST_F(UnixSeqpacketEndpointTest, SendIsOneMessageAllOrNothing) {
  auto endpoint = make();
  std::string a = "one ";
  std::string b = "message";
  iovec iovs[] = {{a.data(), a.size()}, {b.data(), b.size()}};
  const auto sent = endpoint->send(iovs);
  EXPECT_EQ(sent.status, HostEndpoint::SendStatus::kOk);
  EXPECT_EQ(sent.bytes, 11u);
  EXPECT_EQ(endpoint->send({}).status, HostEndpoint::SendStatus::kOk) << "an empty message";
  EXPECT_EQ(peer_receives(), "one message");
  EXPECT_EQ(peer_receives(), "");
  EXPECT_EQ(peer_receives(), "<none>");
  // Full: kWouldBlock with nothing taken, never part of a message.
  std::string big(16 * 1024, 'z');
  iovec iov{big.data(), big.size()};
  HostEndpoint::SendResult result{HostEndpoint::SendStatus::kOk, 0};
  for (int i = 0; i < 1000 && result.status == HostEndpoint::SendStatus::kOk; ++i) {
    result = endpoint->send(std::span(&iov, 1));
    if (result.status == HostEndpoint::SendStatus::kOk) {
      EXPECT_EQ(result.bytes, big.size());
    }
  }
  EXPECT_EQ(result.status, HostEndpoint::SendStatus::kWouldBlock);
  EXPECT_EQ(result.bytes, 0u);
}

TEST_F(UnixSeqpacketEndpointTest, MessageTheSocketCanNeverCarryIsRefused) {
  auto endpoint = make();
  std::vector<char> huge(8 * 1024 * 1024);
  iovec iov{huge.data(), huge.size()};
  EXPECT_EQ(endpoint->send(std::span(&iov, 1)).status, HostEndpoint::SendStatus::kRefused);
}

TEST_F(UnixSeqpacketEndpointTest, HybridPeerGreetsWithOkAndThePort) {
  auto endpoint = make<HybridSeqpacketPeerEndpoint>();
  std::array<uint8_t, kMaxGreetingBytes> out{};
  const size_t n = endpoint->accept_greeting(1073741824, out);
  EXPECT_EQ(std::string(reinterpret_cast<char*>(out.data()), n), "OK 1073741824\n");
}

}  // namespace
}  // namespace vhost_vsock::vsock
