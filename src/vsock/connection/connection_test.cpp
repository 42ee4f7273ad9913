#include "vsock/connection/connection.h"

#include <gtest/gtest.h>
#include <sys/socket.h>

#include <numeric>
#include <string>
#include <vector>

#include "vsock/transport/hybrid_peer_endpoint.h"
#include "vsock/transport/unix_seqpacket_endpoint.h"
#include "vsock/transport/unix_stream_endpoint.h"

namespace vhost_vsock::vsock {
namespace {

constexpr uint32_t kBufAlloc = 4096;

struct Fixture : ::testing::Test {
  base::EventLoop loop;
  base::UniqueFd host_peer;  // what the host program holds
  int device_fd = -1;        // the connection's end of the socketpair

  // Host-initiated connections come through the hybrid listener, which greets
  // the host peer once the guest accepts.
  std::unique_ptr<Connection> make(ConnectionState state, uint32_t counter_base = 0, bool tiny_socket = false,
                                   CreditBudget* budget = nullptr) {
    int fds[2];
    EXPECT_EQ(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, fds), 0);
    if (tiny_socket) {
      int size = 1;  // the kernel rounds this up to its minimum
      ::setsockopt(fds[0], SOL_SOCKET, SO_SNDBUF, &size, sizeof(size));
      ::setsockopt(fds[1], SOL_SOCKET, SO_RCVBUF, &size, sizeof(size));
    }
    host_peer.reset(fds[1]);
    device_fd = fds[0];
    ConnectionParams params{3, 5000, 1234, kBufAlloc, counter_base, budget};
    std::unique_ptr<HostEndpoint> endpoint;
    if (state == ConnectionState::kAwaitingResponse) {
      endpoint = std::make_unique<HybridPeerEndpoint>(loop, base::UniqueFd(fds[0]));
    } else {
      endpoint = std::make_unique<UnixStreamEndpoint>(loop, base::UniqueFd(fds[0]));
    }
    auto conn = std::make_unique<Connection>(params, std::move(endpoint), state);
    conn->update_peer_credit(65536, 0);
    return conn;
  }

  // Readiness as the event loop would report it for the socket.
  static HostEvents epoll(uint32_t epoll_events) { return host_events_from_epoll(epoll_events); }

  static PacketHeader header(Op op, uint32_t len = 0, uint32_t flags = 0) {
    PacketHeader h;
    h.src_cid = 3;
    h.dst_cid = 2;
    h.src_port = 1234;
    h.dst_port = 5000;
    h.type = 1;
    h.op = static_cast<uint16_t>(op);
    h.len = len;
    h.flags = flags;
    h.buf_alloc = 65536;
    return h;
  }

  static std::vector<uint8_t> pattern(size_t n, size_t seed = 0) {
    std::vector<uint8_t> v(n);
    for (size_t i = 0; i < n; ++i) v[i] = static_cast<uint8_t>((i + seed) * 13 + 5);
    return v;
  }

  GuestPacketVerdict send_rw(Connection& conn, const std::vector<uint8_t>& data) {
    iovec iov{const_cast<uint8_t*>(data.data()), data.size()};
    return conn.on_guest_packet(header(Op::kRw, static_cast<uint32_t>(data.size())), std::span(&iov, 1));
  }

  std::vector<uint8_t> read_host(size_t max = 1 << 20) {
    std::vector<uint8_t> out(max);
    ssize_t n = ::read(host_peer.get(), out.data(), out.size());
    out.resize(n > 0 ? static_cast<size_t>(n) : 0);
    return out;
  }

  // Fills the host socket so the connection's next write would block.
  size_t fill_socket(int fd) {
    std::vector<uint8_t> junk(4096, 0xAB);
    size_t total = 0;
    for (;;) {
      ssize_t n = ::send(fd, junk.data(), junk.size(), MSG_DONTWAIT);
      if (n <= 0) break;
      total += static_cast<size_t>(n);
    }
    return total;
  }
};

TEST_F(Fixture, PeerCreditUsesWrappingArithmetic) {
  auto conn = make(ConnectionState::kEstablished);
  conn->record_sent_to_guest(0xFFFFFFF0u);
  conn->record_sent_to_guest(0x20);  // tx_cnt wrapped to 0x10
  conn->update_peer_credit(65536, 0xFFFFFFF8u);
  EXPECT_EQ(conn->peer_credit(), 65536u - 0x18u);
  // Everything acknowledged across the wrap: full credit.
  conn->update_peer_credit(65536, 0x10);
  EXPECT_EQ(conn->peer_credit(), 65536u);
}

TEST_F(Fixture, PeerReportingMoreThanWeSentGetsNoCredit) {
  auto conn = make(ConnectionState::kEstablished);
  conn->record_sent_to_guest(100);
  conn->update_peer_credit(65536, 200);  // claims to have consumed bytes we never sent
  EXPECT_EQ(conn->peer_credit(), 0u);
  conn->update_peer_credit(50, 0);  // more in flight than its buffer
  EXPECT_EQ(conn->peer_credit(), 0u);
}

TEST_F(Fixture, GuestDataGoesStraightToTheHostSocket) {
  auto conn = make(ConnectionState::kEstablished);
  auto data = pattern(1000);
  EXPECT_EQ(send_rw(*conn, data), GuestPacketVerdict::kOk);
  EXPECT_EQ(conn->fwd_cnt(), 1000u);
  EXPECT_EQ(conn->rx_cnt(), 1000u);
  EXPECT_FALSE(conn->tx_buffer_allocated());
  EXPECT_EQ(read_host(), data);
}

TEST_F(Fixture, GuestCreditWrapsAroundTwoToTheThirtyTwo) {
  auto conn = make(ConnectionState::kEstablished, 0xFFFFFF00u);
  for (int i = 0; i < 3; ++i) {
    auto data = pattern(200, static_cast<size_t>(i));
    ASSERT_EQ(send_rw(*conn, data), GuestPacketVerdict::kOk);
    ASSERT_EQ(read_host(), data);
  }
  EXPECT_EQ(conn->fwd_cnt(), static_cast<uint32_t>(0xFFFFFF00u + 600));
  EXPECT_LT(conn->fwd_cnt(), 600u);  // wrapped
  // Forwarded bytes become credit again once the guest hears of them.
  EXPECT_EQ(conn->guest_credit(), kBufAlloc - 600);
  // The header advertises the wrapped value.
  EXPECT_EQ(conn->make_header(Op::kCreditUpdate).fwd_cnt, conn->fwd_cnt());
  EXPECT_EQ(conn->guest_credit(), kBufAlloc);
}

TEST_F(Fixture, BlockedHostSocketBuffersInOrderAndFlushesOnEpollout) {
  auto conn = make(ConnectionState::kEstablished, 0, /*tiny_socket=*/true);
  const size_t junk = fill_socket(device_fd);
  auto first = pattern(1000, 1), second = pattern(1500, 2);
  ASSERT_EQ(send_rw(*conn, first), GuestPacketVerdict::kOk);
  ASSERT_EQ(send_rw(*conn, second), GuestPacketVerdict::kOk);
  EXPECT_EQ(conn->tx_buffered_bytes(), 2500u);
  EXPECT_EQ(conn->fwd_cnt(), 0u);  // nothing reached the socket yet
  EXPECT_EQ(conn->guest_credit(), kBufAlloc - 2500u);

  std::vector<uint8_t> received;
  while (received.size() < junk + 2500) {
    auto chunk = read_host();
    if (chunk.empty()) conn->on_host_events(epoll(EPOLLOUT));
    received.insert(received.end(), chunk.begin(), chunk.end());
  }
  conn->on_host_events(epoll(EPOLLOUT));
  std::vector<uint8_t> expected(first);
  expected.insert(expected.end(), second.begin(), second.end());
  EXPECT_EQ(std::vector<uint8_t>(received.begin() + static_cast<std::ptrdiff_t>(junk), received.end()), expected);
  EXPECT_EQ(conn->fwd_cnt(), 2500u);
  EXPECT_FALSE(conn->tx_buffer_allocated());                      // freed once drained
  EXPECT_TRUE(conn->pending_control() & control::kCreditUpdate);  // 2500 >= buf_alloc / 2
}

// Bytes forwarded since the last advertisement make what is still owed
// smaller than the window; the next CREDIT_UPDATE owes the whole window again.
// Sized to the window from the start, the buffer never has to grow (and move
// every held byte) when that update goes out.
TEST_F(Fixture, TxBufferIsSizedToTheAdvertisedWindowSoACreditUpdateDoesNotRegrowIt) {
  auto conn = make(ConnectionState::kEstablished, 0, /*tiny_socket=*/true);
  ASSERT_EQ(conn->make_header(Op::kCreditUpdate).buf_alloc, kBufAlloc);
  ASSERT_EQ(send_rw(*conn, pattern(1000, 1)), GuestPacketVerdict::kOk);  // straight to the socket
  ASSERT_EQ(conn->fwd_cnt(), 1000u);
  const size_t junk = fill_socket(device_fd);
  ASSERT_EQ(send_rw(*conn, pattern(1500, 2)), GuestPacketVerdict::kOk);
  ASSERT_TRUE(conn->tx_buffer_allocated());
  const size_t capacity = conn->tx_buffer_capacity();
  EXPECT_EQ(capacity, size_t{kBufAlloc} + Connection::kUncountedReserve);
  EXPECT_EQ(conn->make_header(Op::kCreditUpdate).buf_alloc, kBufAlloc);
  EXPECT_EQ(conn->tx_buffer_capacity(), capacity);
  EXPECT_EQ(conn->tx_buffered_bytes(), 1500u);
  std::vector<uint8_t> received;
  while (received.size() < 1000 + junk + 1500) {
    auto chunk = read_host();
    if (chunk.empty()) conn->on_host_events(epoll(EPOLLOUT));
    received.insert(received.end(), chunk.begin(), chunk.end());
  }
  EXPECT_EQ(std::vector<uint8_t>(received.end() - 1500, received.end()), pattern(1500, 2));
}

TEST_F(Fixture, CreditViolationResetsInsteadOfDropping) {
  auto conn = make(ConnectionState::kEstablished, 0, /*tiny_socket=*/true);
  fill_socket(device_fd);
  ASSERT_EQ(send_rw(*conn, pattern(kBufAlloc - 10)), GuestPacketVerdict::kOk);
  EXPECT_EQ(conn->guest_credit(), 10u);
  EXPECT_EQ(send_rw(*conn, pattern(11)), GuestPacketVerdict::kCreditViolation);
  EXPECT_EQ(conn->state(), ConnectionState::kDead);
  EXPECT_EQ(conn->pending_control(), control::kRst);
  EXPECT_FALSE(conn->host_open());
  auto rst = conn->take_control_packet();
  ASSERT_TRUE(rst);
  EXPECT_EQ(rst->operation(), Op::kRst);
  EXPECT_EQ(conn->state(), ConnectionState::kForgotten);
}

TEST_F(Fixture, ExactlyFullCreditIsAccepted) {
  auto conn = make(ConnectionState::kEstablished, 0, /*tiny_socket=*/true);
  fill_socket(device_fd);
  EXPECT_EQ(send_rw(*conn, pattern(kBufAlloc)), GuestPacketVerdict::kOk);
  EXPECT_EQ(conn->guest_credit(), 0u);
  EXPECT_EQ(send_rw(*conn, pattern(1)), GuestPacketVerdict::kCreditViolation);
}

TEST_F(Fixture, CreditUpdatePolicyAFractionOfTheBufferOrOnRequest) {
  auto conn = make(ConnectionState::kEstablished);
  const uint32_t threshold = kBufAlloc / kCreditUpdateDivisor;
  ASSERT_EQ(send_rw(*conn, pattern(threshold - 1)), GuestPacketVerdict::kOk);
  EXPECT_FALSE(conn->pending_control() & control::kCreditUpdate);
  ASSERT_EQ(send_rw(*conn, pattern(1)), GuestPacketVerdict::kOk);
  EXPECT_TRUE(conn->pending_control() & control::kCreditUpdate);
  auto update = conn->take_control_packet();
  ASSERT_TRUE(update);
  EXPECT_EQ(update->operation(), Op::kCreditUpdate);
  EXPECT_EQ(update->fwd_cnt, threshold);
  EXPECT_EQ(update->buf_alloc, kBufAlloc);
  EXPECT_EQ(conn->pending_control(), 0);

  conn->on_guest_packet(header(Op::kCreditRequest), {});
  EXPECT_TRUE(conn->pending_control() & control::kCreditUpdate);
  // Any packet we send carries the credit, so it satisfies the pending update.
  conn->make_header(Op::kRw, 10);
  EXPECT_FALSE(conn->pending_control() & control::kCreditUpdate);
}

// Linux caps its view of our buf_alloc at its own (256 KiB by default): with a
// larger --tx-buffer-size, waiting for a share of ours would deadlock the stream.
TEST_F(Fixture, CreditUpdateThresholdFollowsTheSmallerOfBothWindows) {
  auto conn = make(ConnectionState::kEstablished);
  const uint32_t guest_window = kBufAlloc / 8;
  const uint32_t threshold = guest_window / kCreditUpdateDivisor;
  auto rw = header(Op::kRw, threshold - 1);
  rw.buf_alloc = guest_window;
  std::vector<uint8_t> data = pattern(threshold - 1);
  iovec iov{data.data(), data.size()};
  ASSERT_EQ(conn->on_guest_packet(rw, std::span(&iov, 1)), GuestPacketVerdict::kOk);
  EXPECT_FALSE(conn->pending_control() & control::kCreditUpdate);
  rw.len = 1;
  iov.iov_len = 1;
  ASSERT_EQ(conn->on_guest_packet(rw, std::span(&iov, 1)), GuestPacketVerdict::kOk);
  EXPECT_TRUE(conn->pending_control() & control::kCreditUpdate);
  EXPECT_EQ(conn->take_control_packet()->fwd_cnt, threshold);
}

// A stream's stall asks nothing by itself (a guest returns credit unasked);
// the router's fallback asks once, and not again until the credit moves.
TEST_F(Fixture, StreamCreditStallIsCountedOnceAndAsksOnlyWhenTold) {
  auto conn = make(ConnectionState::kEstablished);
  conn->update_peer_credit(0, 0);
  conn->note_credit_starved();
  EXPECT_TRUE(conn->credit_stalled());
  EXPECT_EQ(conn->credit_stalls(), 1u);
  EXPECT_EQ(conn->pending_control(), 0);
  conn->note_credit_starved();
  EXPECT_EQ(conn->credit_stalls(), 1u);  // the same stall
  conn->request_credit();
  ASSERT_EQ(conn->take_control_packet()->operation(), Op::kCreditRequest);
  conn->request_credit();
  EXPECT_EQ(conn->pending_control(), 0);  // not again
  conn->update_peer_credit(4096, 0);
  EXPECT_FALSE(conn->credit_stalled());
  conn->update_peer_credit(0, 0);
  conn->note_credit_starved();
  EXPECT_EQ(conn->credit_stalls(), 2u);
  conn->request_credit();
  EXPECT_TRUE(conn->pending_control() & control::kCreditRequest);
}

TEST_F(Fixture, HostBytesAreReadStraightIntoGuestBuffers) {
  auto conn = make(ConnectionState::kEstablished);
  auto data = pattern(300);
  ASSERT_EQ(::write(host_peer.get(), data.data(), data.size()), 300);
  conn->on_host_events(epoll(EPOLLIN));
  EXPECT_TRUE(conn->wants_to_send_data());
  std::vector<uint8_t> a(100), b(500);
  std::vector<iovec> iovs{{a.data(), a.size()}, {b.data(), b.size()}};
  size_t got = 0;
  ASSERT_EQ(conn->read_from_host(iovs, got), Connection::ReadStatus::kData);
  EXPECT_EQ(got, 300u);
  EXPECT_TRUE(std::equal(a.begin(), a.end(), data.begin()));
  EXPECT_TRUE(std::equal(b.begin(), b.begin() + 200, data.begin() + 100));
  ASSERT_EQ(conn->read_from_host(iovs, got), Connection::ReadStatus::kWouldBlock);
  EXPECT_FALSE(conn->wants_to_send_data());  // edge-triggered: cleared only by EAGAIN
}

TEST_F(Fixture, SendableToGuestIsTheCreditOrZeroWithOneStall) {
  auto conn = make(ConnectionState::kEstablished);
  EXPECT_EQ(conn->sendable_to_guest(), 0u);  // nothing to send: no request either
  EXPECT_EQ(conn->pending_control(), 0);
  auto data = pattern(10);
  ASSERT_EQ(::write(host_peer.get(), data.data(), data.size()), 10);
  conn->on_host_events(epoll(EPOLLIN));
  conn->update_peer_credit(0, 0);
  EXPECT_FALSE(conn->can_send_to_guest());
  EXPECT_EQ(conn->sendable_to_guest(), 0u);
  EXPECT_TRUE(conn->credit_stalled());
  EXPECT_EQ(conn->sendable_to_guest(), 0u);
  EXPECT_EQ(conn->credit_stalls(), 1u);
  EXPECT_EQ(conn->pending_control(), 0);  // a stream does not ask at once
  conn->update_peer_credit(4096, conn->tx_cnt());
  EXPECT_TRUE(conn->can_send_to_guest());
  EXPECT_EQ(conn->sendable_to_guest(), 4096u);
  EXPECT_FALSE(conn->credit_stalled());
  EXPECT_EQ(conn->pending_control(), 0);
}

TEST_F(Fixture, HostHalfCloseSendsShutdownSendAndKeepsGuestToHost) {
  auto conn = make(ConnectionState::kEstablished);
  ::shutdown(host_peer.get(), SHUT_WR);
  conn->on_host_events(epoll(EPOLLIN | EPOLLRDHUP));
  std::vector<uint8_t> buf(64);
  iovec iov{buf.data(), buf.size()};
  size_t got = 0;
  ASSERT_EQ(conn->read_from_host(std::span(&iov, 1), got), Connection::ReadStatus::kEof);
  auto shutdown = conn->take_control_packet();
  ASSERT_TRUE(shutdown);
  EXPECT_EQ(shutdown->operation(), Op::kShutdown);
  EXPECT_EQ(shutdown->flags, kShutdownSend);
  EXPECT_EQ(conn->state(), ConnectionState::kEstablished);
  EXPECT_FALSE(conn->wants_to_send_data());
  auto data = pattern(50);
  EXPECT_EQ(send_rw(*conn, data), GuestPacketVerdict::kOk);
  EXPECT_EQ(read_host(), data);
}

TEST_F(Fixture, GuestShutdownSendHalfClosesHostAfterFlush) {
  auto conn = make(ConnectionState::kEstablished, 0, /*tiny_socket=*/true);
  const size_t junk = fill_socket(device_fd);
  auto data = pattern(700);
  ASSERT_EQ(send_rw(*conn, data), GuestPacketVerdict::kOk);
  conn->on_guest_packet(header(Op::kShutdown, 0, kShutdownSend), {});
  EXPECT_EQ(conn->state(), ConnectionState::kEstablished);
  size_t total = 0;
  bool eof = false;
  for (int i = 0; i < 100000 && !eof; ++i) {
    std::vector<uint8_t> buf(8192);
    ssize_t n = ::read(host_peer.get(), buf.data(), buf.size());
    if (n == 0) eof = true;
    if (n > 0) total += static_cast<size_t>(n);
    if (n < 0) conn->on_host_events(epoll(EPOLLOUT));
  }
  EXPECT_TRUE(eof);
  EXPECT_EQ(total, junk + 700);
  // Host -> guest still works.
  ASSERT_EQ(::write(host_peer.get(), "hi", 2), 2);
  conn->on_host_events(epoll(EPOLLIN));
  EXPECT_TRUE(conn->wants_to_send_data());
}

TEST_F(Fixture, GuestFullShutdownWithEmptyBufferClosesAndOwesRst) {
  auto conn = make(ConnectionState::kEstablished);
  conn->on_guest_packet(header(Op::kShutdown, 0, kShutdownRcv | kShutdownSend), {});
  EXPECT_EQ(conn->state(), ConnectionState::kDead);
  EXPECT_FALSE(conn->host_open());
  EXPECT_EQ(read_host().size(), 0u);  // host sees EOF
  EXPECT_EQ(conn->take_control_packet()->operation(), Op::kRst);
}

TEST_F(Fixture, GuestFullShutdownFlushesBufferedBytesFirst) {
  auto conn = make(ConnectionState::kEstablished, 0, /*tiny_socket=*/true);
  const size_t junk = fill_socket(device_fd);
  ASSERT_EQ(send_rw(*conn, pattern(900)), GuestPacketVerdict::kOk);
  conn->on_guest_packet(header(Op::kShutdown, 0, kShutdownRcv | kShutdownSend), {});
  EXPECT_EQ(conn->state(), ConnectionState::kClosingAfterFlush);
  EXPECT_TRUE(conn->host_open());
  size_t total = 0;
  for (int i = 0; i < 100000 && conn->state() == ConnectionState::kClosingAfterFlush; ++i) {
    auto chunk = read_host();
    total += chunk.size();
    conn->on_host_events(epoll(EPOLLOUT));
  }
  for (auto chunk = read_host(); !chunk.empty(); chunk = read_host()) total += chunk.size();
  EXPECT_EQ(total, junk + 900);
  EXPECT_EQ(conn->state(), ConnectionState::kDead);
  EXPECT_EQ(conn->take_control_packet()->operation(), Op::kRst);
}

TEST_F(Fixture, HostFullCloseSendsFullShutdownAndAwaitsRst) {
  auto conn = make(ConnectionState::kEstablished);
  ASSERT_EQ(::write(host_peer.get(), "bye", 3), 3);
  host_peer.reset();
  conn->on_host_events(epoll(EPOLLIN | EPOLLRDHUP | EPOLLHUP));
  std::vector<uint8_t> buf(64);
  iovec iov{buf.data(), buf.size()};
  size_t got = 0;
  // The bytes written before close still reach the guest.
  ASSERT_EQ(conn->read_from_host(std::span(&iov, 1), got), Connection::ReadStatus::kData);
  EXPECT_EQ(got, 3u);
  ASSERT_EQ(conn->read_from_host(std::span(&iov, 1), got), Connection::ReadStatus::kEof);
  EXPECT_EQ(conn->state(), ConnectionState::kAwaitingGuestRst);
  auto shutdown = conn->take_control_packet();
  EXPECT_EQ(shutdown->operation(), Op::kShutdown);
  EXPECT_EQ(shutdown->flags, kShutdownRcv | kShutdownSend);
  conn->on_guest_packet(header(Op::kRst), {});
  EXPECT_EQ(conn->state(), ConnectionState::kForgotten);
}

// Review finding: a guest write racing the host's close used to reset the
// connection, which threw away the reply the host wrote just before closing.
TEST_F(Fixture, GuestDataRacingHostCloseKeepsTheHostsLastBytes) {
  auto conn = make(ConnectionState::kEstablished);
  ASSERT_EQ(::write(host_peer.get(), "bye", 3), 3);
  host_peer.reset();  // the host answered and closed before the device noticed
  // A guest write already in flight finds the socket closed for writing.
  EXPECT_EQ(send_rw(*conn, pattern(10)), GuestPacketVerdict::kOk);
  EXPECT_EQ(conn->state(), ConnectionState::kEstablished);
  EXPECT_TRUE(conn->host_open());
  EXPECT_EQ(conn->fwd_cnt(), 0u);  // dropped, never counted as forwarded
  EXPECT_EQ(conn->guest_credit(), kBufAlloc - 10);
  auto shutdown = conn->take_control_packet();
  ASSERT_TRUE(shutdown);
  EXPECT_EQ(shutdown->operation(), Op::kShutdown);
  EXPECT_EQ(shutdown->flags, kShutdownRcv);
  // More data sent before the guest heard of it is dropped too, within credit.
  EXPECT_EQ(send_rw(*conn, pattern(20)), GuestPacketVerdict::kOk);
  EXPECT_EQ(conn->guest_credit(), kBufAlloc - 30);

  conn->on_host_events(epoll(EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLHUP));
  std::vector<uint8_t> buf(64);
  iovec iov{buf.data(), buf.size()};
  size_t got = 0;
  ASSERT_EQ(conn->read_from_host(std::span(&iov, 1), got), Connection::ReadStatus::kData);
  EXPECT_EQ(std::string(buf.begin(), buf.begin() + static_cast<std::ptrdiff_t>(got)), "bye");
  ASSERT_EQ(conn->read_from_host(std::span(&iov, 1), got), Connection::ReadStatus::kEof);
  EXPECT_EQ(conn->state(), ConnectionState::kAwaitingGuestRst);
  EXPECT_EQ(conn->take_control_packet()->flags, kShutdownRcv | kShutdownSend);
}

TEST_F(Fixture, GuestIgnoringShutdownRcvIsStillBoundByCredit) {
  auto conn = make(ConnectionState::kEstablished);
  host_peer.reset();
  EXPECT_EQ(send_rw(*conn, pattern(kBufAlloc)), GuestPacketVerdict::kOk);
  EXPECT_EQ(send_rw(*conn, pattern(1)), GuestPacketVerdict::kCreditViolation);
  EXPECT_EQ(conn->state(), ConnectionState::kDead);
}

TEST_F(Fixture, GuestRstForgetsWithoutReply) {
  auto conn = make(ConnectionState::kEstablished);
  conn->on_guest_packet(header(Op::kRst), {});
  EXPECT_EQ(conn->state(), ConnectionState::kForgotten);
  EXPECT_EQ(conn->pending_control(), 0);
  EXPECT_FALSE(conn->host_open());
}

TEST_F(Fixture, HostInitiatedResponseWritesOkLineWithoutCountingCredit) {
  auto conn = make(ConnectionState::kAwaitingResponse);
  conn->request_connect();
  auto request = conn->take_control_packet();
  EXPECT_EQ(request->operation(), Op::kRequest);
  EXPECT_EQ(request->src_cid, kCidHost);
  EXPECT_EQ(request->dst_cid, 3u);
  EXPECT_EQ(request->src_port, 5000u);
  EXPECT_EQ(request->dst_port, 1234u);
  const std::string early = "early bytes";
  conn->set_early_host_bytes(std::span(reinterpret_cast<const uint8_t*>(early.data()), early.size()));
  EXPECT_FALSE(conn->wants_to_send_data());  // not before the guest accepts
  EXPECT_EQ(conn->on_guest_packet(header(Op::kResponse), {}), GuestPacketVerdict::kOk);
  EXPECT_EQ(conn->state(), ConnectionState::kEstablished);
  auto reply = read_host();
  EXPECT_EQ(std::string(reply.begin(), reply.end()), "OK 5000\n");
  EXPECT_EQ(conn->fwd_cnt(), 0u);  // the reply is not guest data
  EXPECT_TRUE(conn->wants_to_send_data());
  ASSERT_EQ(::write(host_peer.get(), "later", 5), 5);
  std::vector<uint8_t> buf(64);
  iovec iov{buf.data(), buf.size()};
  size_t got = 0;
  ASSERT_EQ(conn->read_from_host(std::span(&iov, 1), got), Connection::ReadStatus::kData);
  EXPECT_EQ(std::string(buf.begin(), buf.begin() + static_cast<std::ptrdiff_t>(got)), early);
  ASSERT_EQ(conn->read_from_host(std::span(&iov, 1), got), Connection::ReadStatus::kData);
  EXPECT_EQ(std::string(buf.begin(), buf.begin() + static_cast<std::ptrdiff_t>(got)), "later");
}

TEST_F(Fixture, HostInitiatedRefusedOrViolatedHandshake) {
  auto conn = make(ConnectionState::kAwaitingResponse);
  EXPECT_EQ(send_rw(*conn, pattern(5)), GuestPacketVerdict::kProtocolViolation);
  EXPECT_EQ(conn->state(), ConnectionState::kDead);
  EXPECT_TRUE(read_host().empty());  // closed, and no "OK"
}

TEST_F(Fixture, DataAfterGuestShutdownSendIsAViolation) {
  auto conn = make(ConnectionState::kEstablished);
  conn->on_guest_packet(header(Op::kShutdown, 0, kShutdownSend), {});
  EXPECT_EQ(send_rw(*conn, pattern(5)), GuestPacketVerdict::kProtocolViolation);
  EXPECT_EQ(conn->state(), ConnectionState::kDead);
}

TEST_F(Fixture, ControlFlagsNeverQueueMoreThanOnce) {
  auto conn = make(ConnectionState::kEstablished);
  for (int i = 0; i < 1000; ++i) conn->on_guest_packet(header(Op::kCreditRequest), {});
  EXPECT_EQ(conn->take_control_packet()->operation(), Op::kCreditUpdate);
  EXPECT_FALSE(conn->take_control_packet());
}

// ---- the VM's credit budget ----

constexpr uint32_t kKiB = 1024;

// Two connections' worth: 4 KiB floors and a 64 KiB pool to grow into.
CreditBudget small_budget() {
  return CreditBudget({64 * kKiB, 4 * kKiB, uint64_t{72} * kKiB}, 2);
}

TEST_F(Fixture, BudgetGivesTheWindowWhileThePoolLastsAndTakesItBackWhenDrained) {
  CreditBudget budget = small_budget();
  auto conn = make(ConnectionState::kEstablished, 0, /*tiny_socket=*/true, &budget);
  EXPECT_EQ(conn->make_header(Op::kCreditUpdate).buf_alloc, 64 * kKiB);
  uint32_t other = budget.join();
  other = budget.rehold(other, 64 * kKiB);
  EXPECT_EQ(other, 8 * kKiB);  // only what was left above its floor
  EXPECT_EQ(budget.reserved(), budget.limit());

  // Blocked host socket: the guest's bytes are held within what was promised.
  const size_t junk = fill_socket(device_fd);
  ASSERT_EQ(send_rw(*conn, pattern(size_t{60} * kKiB)), GuestPacketVerdict::kOk);
  EXPECT_EQ(conn->tx_buffered_bytes(), 60 * kKiB);
  EXPECT_EQ(budget.reserved(), budget.limit());

  size_t received = 0;
  while (received < junk + size_t{60} * kKiB) {
    auto chunk = read_host();
    if (chunk.empty()) conn->on_host_events(epoll(EPOLLOUT));
    received += chunk.size();
  }
  conn->on_host_events(epoll(EPOLLOUT));
  EXPECT_FALSE(conn->tx_buffer_allocated());
  // Drained: it holds only the 4 KiB the guest may still send.
  EXPECT_EQ(conn->budget_hold(), 4 * kKiB);
  other = budget.rehold(other, 64 * kKiB);
  EXPECT_EQ(other, 64 * kKiB);

  // What the pool has left (4 KiB) is all the next advertisement can add.
  const PacketHeader next = conn->make_header(Op::kCreditUpdate);
  EXPECT_EQ(next.fwd_cnt, 60 * kKiB);
  EXPECT_EQ(next.buf_alloc, 8 * kKiB);
  conn->reset();
  EXPECT_EQ(conn->budget_hold(), 0U);
  EXPECT_EQ(budget.reserved(), other + 0ULL);
  budget.leave(other);
}

TEST_F(Fixture, ShortPoolShrinksTheWindowButNeverBelowWhatWasPromised) {
  CreditBudget budget = small_budget();
  auto conn = make(ConnectionState::kEstablished, 0, false, &budget);
  const PacketHeader first = conn->make_header(Op::kCreditUpdate);
  EXPECT_EQ(first.buf_alloc, 64 * kKiB);
  uint32_t other = budget.join();
  ASSERT_EQ(send_rw(*conn, pattern(size_t{10} * kKiB)), GuestPacketVerdict::kOk);
  EXPECT_EQ(read_host().size(), 10 * kKiB);
  EXPECT_EQ(conn->budget_hold(), 54 * kKiB);  // still owed to the guest
  other = budget.rehold(other, 64 * kKiB);
  EXPECT_EQ(other, 18 * kKiB);

  // The pool is empty: the window shrinks, and the guest may still send
  // exactly up to where the first advertisement let it.
  const PacketHeader next = conn->make_header(Op::kCreditUpdate);
  EXPECT_EQ(next.fwd_cnt, 10 * kKiB);
  EXPECT_EQ(next.buf_alloc, 54 * kKiB);
  EXPECT_EQ(next.fwd_cnt + next.buf_alloc, first.fwd_cnt + first.buf_alloc);
  EXPECT_EQ(conn->guest_credit(), 54 * kKiB);
  EXPECT_EQ(send_rw(*conn, pattern(54 * kKiB + 1)), GuestPacketVerdict::kCreditViolation);
  EXPECT_EQ(budget.reserved(), other + 0ULL);
  budget.leave(other);
}

TEST_F(Fixture, SeqpacketWindowFitsTheHostSocketAndNeverShrinks) {
  int fds[2];
  ASSERT_EQ(::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_NONBLOCK, 0, fds), 0);
  host_peer.reset(fds[1]);
  const int requested = 8192;  // the kernel doubles it
  ASSERT_EQ(::setsockopt(fds[0], SOL_SOCKET, SO_SNDBUF, &requested, sizeof(requested)), 0);
  int sndbuf = 0;
  socklen_t length = sizeof(sndbuf);
  ASSERT_EQ(::getsockopt(fds[0], SOL_SOCKET, SO_SNDBUF, &sndbuf, &length), 0);
  const auto largest = static_cast<uint32_t>(sndbuf - 32);  // AF_UNIX refuses longer datagrams

  CreditBudget budget = small_budget();
  ConnectionParams params{3, 5000, 1234, kBufAlloc, 0, &budget};
  Connection conn(params, std::make_unique<UnixSeqpacketEndpoint>(loop, base::UniqueFd(fds[0])),
                  ConnectionState::kEstablished);
  conn.update_peer_credit(65536, 0);
  ASSERT_LT(largest, 64 * kKiB);
  EXPECT_EQ(conn.make_header(Op::kCreditUpdate).buf_alloc, largest);

  // A whole message of exactly that size goes through.
  PacketHeader h = header(Op::kRw, largest, kSeqEom);
  h.type = static_cast<uint16_t>(SocketType::kSeqpacket);
  std::vector<uint8_t> message = pattern(largest);
  iovec iov{message.data(), message.size()};
  ASSERT_EQ(conn.on_guest_packet(h, std::span<const iovec>(&iov, 1)), GuestPacketVerdict::kOk);
  EXPECT_EQ(read_host().size(), largest);

  // The pool runs dry: a stream's window would shrink, this one must not
  // (the guest would refuse its next message of that size).
  uint32_t other = budget.join();
  other = budget.rehold(other, 64 * kKiB);
  EXPECT_EQ(budget.pool_available(), 0U);
  EXPECT_EQ(conn.make_header(Op::kCreditUpdate).buf_alloc, largest);
  budget.leave(other);
}

}  // namespace
}  // namespace vhost_vsock::vsock
