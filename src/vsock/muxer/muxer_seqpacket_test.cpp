// SOCK_SEQPACKET through the muxer: feature gating, the dialer by type,
// guest message assembly (credit edges: exactly buf_alloc, one byte over,
// empty messages, EOM on an empty packet), host messages split whole over RX
// chains with EOM|EOR last, whole-message credit waits, and the
// <uds-path>_seqpacket listener.
#include <algorithm>
#include <chrono>
#include <numeric>
#include <random>

#include "vsock/connection/connection.h"
#include "vsock/muxer/muxer_test_fixture.h"

namespace vhost_vsock::vsock::test {
namespace {

constexpr uint16_t kSeqType = static_cast<uint16_t>(SocketType::kSeqpacket);
constexpr uint32_t kBufAlloc = 16 * 1024;  // MuxerTest's tx_buffer_size

class SeqpacketTest : public MuxerTest {
 protected:
  // A stream's late CREDIT_REQUEST never comes here: any request seen is a message's, sent at once.
  MuxerLimits limits() override {
    MuxerLimits l = MuxerTest::limits();
    l.credit_request_delay = std::chrono::hours(1);
    return l;
  }
  void SetUp() override {
    MuxerTest::SetUp();
    h->muxer().set_negotiated_features(kFeatureStream | kFeatureSeqpacket);
  }

  PacketHeader seq_header(Op op, uint32_t len = 0, uint32_t flags = 0, uint32_t guest_port = kGuestPort,
                          uint32_t host_port = kHostPort) {
    PacketHeader header = h->guest_header(op, guest_port, host_port, len, flags);
    header.type = kSeqType;
    return header;
  }

  // A guest seqpacket connect to a SOCK_SEQPACKET listener; returns the accepted host fd.
  base::UniqueFd establish(uint32_t guest_port = kGuestPort) {
    if (!listeners.contains(kHostPort)) {
      listeners[kHostPort] = MuxerHarness::listen_unix(h->port_path(kHostPort), SOCK_SEQPACKET);
    }
    h->send(seq_header(Op::kRequest, 0, 0, guest_port));
    auto packets = drain();
    EXPECT_EQ(packets.size(), 1u);
    if (!packets.empty()) {
      EXPECT_EQ(packets[0].header.operation(), Op::kResponse);
      EXPECT_EQ(packets[0].header.type, kSeqType) << "every packet carries the connection's type";
    }
    return base::UniqueFd(::accept4(listeners[kHostPort].get(), nullptr, nullptr, SOCK_NONBLOCK));
  }

  // Sends `data` as one guest message cut into packets of `piece` bytes, EOM on the last.
  void send_message(const std::vector<uint8_t>& data, size_t piece, uint32_t guest_port = kGuestPort) {
    size_t offset = 0;
    do {
      const size_t take = std::min(piece, data.size() - offset);
      const bool last = offset + take == data.size();
      h->send(seq_header(Op::kRw, static_cast<uint32_t>(take), last ? kSeqEom : 0, guest_port),
              std::span(data).subspan(offset, take));
      offset += take;
    } while (offset < data.size());
  }

  // The next message on a host seqpacket fd, or nullopt (none within `wait`).
  static std::optional<std::vector<uint8_t>> host_message(int fd, std::chrono::milliseconds wait = 200ms) {
    pollfd p{fd, POLLIN, 0};
    if (::poll(&p, 1, static_cast<int>(wait.count())) <= 0) return std::nullopt;
    std::vector<uint8_t> buffer(256 * 1024);
    const ssize_t n = ::recv(fd, buffer.data(), buffer.size(), MSG_DONTWAIT);
    if (n < 0) return std::nullopt;
    buffer.resize(static_cast<size_t>(n));
    return buffer;
  }

  // Host bytes the guest got as RW packets, cut at EOM: one vector per message.
  static std::vector<std::vector<uint8_t>> guest_messages(const std::vector<GuestPacket>& packets) {
    std::vector<std::vector<uint8_t>> messages(1);
    for (const GuestPacket& packet : packets) {
      if (packet.header.operation() != Op::kRw) continue;
      EXPECT_EQ(packet.header.type, kSeqType);
      messages.back().insert(messages.back().end(), packet.payload.begin(), packet.payload.end());
      if (packet.header.flags & kSeqEom) {
        EXPECT_TRUE(packet.header.flags & kSeqEor) << "EOR with EOM: every AF_UNIX message is a record";
        messages.emplace_back();
      } else {
        EXPECT_EQ(packet.header.flags, 0u);
      }
    }
    EXPECT_TRUE(messages.back().empty()) << "bytes after the last EOM";
    messages.pop_back();
    return messages;
  }
};

TEST_F(MuxerTest, SeqpacketWithoutTheFeatureIsRefusedAndStreamsWork) {
  listeners[kHostPort] = MuxerHarness::listen_unix(h->port_path(kHostPort), SOCK_SEQPACKET);
  PacketHeader request = h->guest_header(Op::kRequest, kGuestPort, kHostPort);
  request.type = kSeqType;
  h->send(request);
  auto packets = drain();
  ASSERT_EQ(packets.size(), 1u);
  EXPECT_EQ(packets[0].header.operation(), Op::kRst);
  EXPECT_EQ(packets[0].header.type, kSeqType);
  EXPECT_EQ(h->stats().connections_opened, 0u);
  listeners.clear();
  ::unlink(h->port_path(kHostPort).c_str());
  auto host = establish_guest_connection(kGuestPort + 1);
  EXPECT_TRUE(host.valid());
}

TEST_F(SeqpacketTest, GuestMessagesKeepTheirBoundaries) {
  auto host = establish();
  ASSERT_TRUE(host.valid());
  const auto first = pattern(3000, 1);
  const auto second = pattern(5, 2);
  send_message(first, 1000);  // three packets
  send_message(second, 4096);
  drain();
  EXPECT_EQ(host_message(host.get()), first);
  EXPECT_EQ(host_message(host.get()), second);
  EXPECT_EQ(host_message(host.get(), 20ms), std::nullopt);
  EXPECT_EQ(h->stats().bytes_from_guest, first.size() + second.size());
}

TEST_F(SeqpacketTest, PartialMessageWaitsForItsEom) {
  auto host = establish();
  const auto data = pattern(100);
  h->send(seq_header(Op::kRw, 60), std::span(data).first(60));
  drain();
  EXPECT_EQ(host_message(host.get(), 20ms), std::nullopt) << "no EOM yet: nothing reaches the host";
  h->send(seq_header(Op::kRw, 40), std::span(data).subspan(60));
  h->send(seq_header(Op::kRw, 0, kSeqEom));  // EOM on a packet without payload
  drain();
  EXPECT_EQ(host_message(host.get()), data);
}

TEST_F(SeqpacketTest, EmptyMessageIsDelivered) {
  auto host = establish();
  h->send(seq_header(Op::kRw, 0, kSeqEom));
  send_message(pattern(7), 7);
  drain();
  EXPECT_EQ(host_message(host.get()), std::vector<uint8_t>{});
  EXPECT_EQ(host_message(host.get()), pattern(7));
}

TEST_F(SeqpacketTest, MessageOfExactlyBufAllocIsDelivered) {
  auto host = establish();
  const auto data = pattern(kBufAlloc, 3);
  send_message(data, 4096);
  auto packets = drain();
  EXPECT_EQ(host_message(host.get()), data);
  EXPECT_EQ(h->stats().credit_violations, 0u);
  // The whole window came back: the guest hears of it.
  ASSERT_FALSE(packets.empty());
  EXPECT_EQ(packets.back().header.fwd_cnt, kBufAlloc);
}

TEST_F(SeqpacketTest, MessageOneByteOverBufAllocIsReset) {
  auto host = establish();
  const auto data = pattern(kBufAlloc + 1);
  send_message(data, 4096);
  auto packets = drain();
  EXPECT_EQ(h->stats().credit_violations, 1u);
  ASSERT_FALSE(packets.empty());
  EXPECT_EQ(packets.back().header.operation(), Op::kRst);
  EXPECT_EQ(packets.back().header.type, kSeqType);
  EXPECT_EQ(host_message(host.get(), 20ms), std::vector<uint8_t>{}) << "the host sees EOF, no partial message";
}

TEST_F(SeqpacketTest, MessagesWaitingForABusyHostKeepBoundaries) {
  auto host = establish();
  // AF_UNIX takes a few hundred small messages before it blocks; send more.
  constexpr size_t kMessages = 600;
  for (size_t i = 0; i < kMessages; ++i) {
    const std::vector<uint8_t> message(1 + i % 3, static_cast<uint8_t>(i));
    h->send(seq_header(Op::kRw, static_cast<uint32_t>(message.size()), kSeqEom), message);
  }
  drain();
  EXPECT_GT(h->stats().packets_from_guest, kMessages);
  for (size_t i = 0; i < kMessages; ++i) {
    auto message = host_message(host.get(), 0ms);
    if (!message.has_value()) {
      h->pump(20ms);  // the host read: the socket is writable again and buffered messages flow
      message = host_message(host.get());
    }
    ASSERT_TRUE(message.has_value()) << "message " << i;
    ASSERT_EQ(*message, std::vector<uint8_t>(1 + i % 3, static_cast<uint8_t>(i))) << "message " << i;
  }
  EXPECT_EQ(host_message(host.get(), 20ms), std::nullopt);
}

TEST_F(SeqpacketTest, ListenerOfTheOtherTypeIsAnRst) {
  listeners[kHostPort] = MuxerHarness::listen_unix(h->port_path(kHostPort), SOCK_STREAM);
  h->send(seq_header(Op::kRequest));
  auto packets = drain();
  ASSERT_EQ(packets.size(), 1u);
  EXPECT_EQ(packets[0].header.operation(), Op::kRst);
  EXPECT_EQ(packets[0].header.type, kSeqType);
  EXPECT_EQ(h->stats().host_connects_refused, 1u);
  // And a stream connect to a seqpacket listener.
  listeners[kHostPort + 1] = MuxerHarness::listen_unix(h->port_path(kHostPort + 1), SOCK_SEQPACKET);
  h->send(h->guest_header(Op::kRequest, kGuestPort, kHostPort + 1));
  packets = drain();
  ASSERT_EQ(packets.size(), 1u);
  EXPECT_EQ(packets[0].header.operation(), Op::kRst);
  EXPECT_EQ(packets[0].header.type, static_cast<uint16_t>(SocketType::kStream));
}

TEST_F(SeqpacketTest, TypeMismatchIsAnsweredLikeLinux) {
  auto host = establish();
  // Type 1 on a seqpacket connection: an RST of type 1, the connection untouched.
  h->send(h->guest_header(Op::kRw, kGuestPort, kHostPort, 1), pattern(1));
  auto packets = drain();
  ASSERT_EQ(packets.size(), 1u);
  EXPECT_EQ(packets[0].header.operation(), Op::kRst);
  EXPECT_EQ(packets[0].header.type, static_cast<uint16_t>(SocketType::kStream));
  EXPECT_EQ(h->stats().protocol_violations, 1u);
  EXPECT_EQ(host_message(host.get(), 20ms), std::nullopt) << "the stray payload reached the host";
  send_message(pattern(9), 9);
  drain();
  EXPECT_EQ(host_message(host.get()), pattern(9));
}

TEST_F(SeqpacketTest, HostMessagesAreSplitWithEomOnTheLast) {
  auto host = establish();
  const std::vector<std::vector<uint8_t>> sent{pattern(10, 1), pattern(10000, 2), {}, pattern(4096, 3)};
  for (const auto& message : sent) {
    ASSERT_EQ(::send(host.get(), message.data(), message.size(), 0), static_cast<ssize_t>(message.size()));
  }
  auto packets = drain();
  EXPECT_EQ(guest_messages(packets), sent);
  // 10000 bytes over 4 KiB buffers: three packets, EOM on the third only.
  EXPECT_GE(packets.size(), 6u);
}

TEST_F(SeqpacketTest, HostMessageWaitsForCreditForAllOfIt) {
  auto host = establish();
  h->guest_buf_alloc = 8192;
  h->send(seq_header(Op::kCreditUpdate));
  drain();
  const auto first = pattern(6000, 1);
  const auto second = pattern(6000, 2);
  ASSERT_EQ(::send(host.get(), first.data(), first.size(), 0), 6000);
  ASSERT_EQ(::send(host.get(), second.data(), second.size(), 0), 6000);
  auto packets = drain();
  EXPECT_EQ(guest_messages(packets), std::vector<std::vector<uint8_t>>{first}) << "2192 bytes of credit: no part of it";
  size_t credit_requests = 0;
  for (const auto& packet : packets) credit_requests += packet.header.operation() == Op::kCreditRequest;
  EXPECT_EQ(credit_requests, 1u);
  h->guest_fwd_cnt = 6000;  // the guest read the first
  h->send(seq_header(Op::kCreditUpdate));
  packets = drain();
  EXPECT_EQ(guest_messages(packets), std::vector<std::vector<uint8_t>>{second});
}

TEST_F(SeqpacketTest, HostMessageBiggerThanTheGuestBufferResets) {
  auto host = establish();
  h->guest_buf_alloc = 4096;
  h->send(seq_header(Op::kCreditUpdate));
  drain();
  const auto big = pattern(5000);
  ASSERT_EQ(::send(host.get(), big.data(), big.size(), 0), 5000);
  auto packets = drain();
  ASSERT_EQ(packets.size(), 1u);
  EXPECT_EQ(packets[0].header.operation(), Op::kRst);
  EXPECT_EQ(h->stats().messages_refused, 1u);
  EXPECT_TRUE(peer_closed(host.get()));
}

TEST_F(SeqpacketTest, HostCloseIsEofAfterTheLastMessage) {
  auto host = establish();
  const auto last = pattern(300);
  ASSERT_EQ(::send(host.get(), last.data(), last.size(), 0), 300);
  host.reset();
  auto packets = drain();
  EXPECT_EQ(guest_messages(packets), std::vector<std::vector<uint8_t>>{last});
  ASSERT_FALSE(packets.empty());
  EXPECT_EQ(packets.back().header.operation(), Op::kShutdown);
  EXPECT_EQ(packets.back().header.type, kSeqType);
}

TEST_F(SeqpacketTest, HostConnectsThroughTheSeqpacketListener) {
  auto host = MuxerHarness::connect_unix(h->uds_path() + "_seqpacket", SOCK_SEQPACKET);
  ASSERT_TRUE(host.valid());
  const std::string line = "CONNECT 5000\n";
  ASSERT_EQ(::send(host.get(), line.data(), line.size(), 0), static_cast<ssize_t>(line.size()));
  const std::string early = "queued before the accept";
  ASSERT_EQ(::send(host.get(), early.data(), early.size(), 0), static_cast<ssize_t>(early.size()));
  auto packets = drain();
  ASSERT_EQ(packets.size(), 1u);
  const PacketHeader request = packets[0].header;
  EXPECT_EQ(request.operation(), Op::kRequest);
  EXPECT_EQ(request.type, kSeqType);
  EXPECT_EQ(request.dst_port, 5000u);
  h->send(seq_header(Op::kResponse, 0, 0, 5000, request.src_port));
  packets = drain();
  EXPECT_EQ(guest_messages(packets),
            std::vector<std::vector<uint8_t>>{std::vector<uint8_t>(early.begin(), early.end())});
  const std::string ok = "OK " + std::to_string(request.src_port) + "\n";
  EXPECT_EQ(host_message(host.get()), std::vector<uint8_t>(ok.begin(), ok.end())) << "the greeting is one message";
  send_message(pattern(50), 20, 5000);
  // The guest's port is the connection's peer port: addressed to the host port it was given.
  PacketHeader rw = seq_header(Op::kRw, 3, kSeqEom, 5000, request.src_port);
  h->send(rw, bytes_of("abc"));
  drain();
  EXPECT_EQ(host_message(host.get()), (std::vector<uint8_t>{'a', 'b', 'c'}));
}

TEST_F(SeqpacketTest, MalformedSeqpacketConnectIsClosed) {
  auto host = MuxerHarness::connect_unix(h->uds_path() + "_seqpacket", SOCK_SEQPACKET);
  ASSERT_TRUE(host.valid());
  const std::string line = "CONNECT 5000\nextra";  // more than the line in one message
  ASSERT_EQ(::send(host.get(), line.data(), line.size(), 0), static_cast<ssize_t>(line.size()));
  auto packets = drain();
  EXPECT_TRUE(packets.empty());
  EXPECT_EQ(h->stats().handshake_failures, 1u);
  EXPECT_TRUE(peer_closed(host.get()));
}

}  // namespace
}  // namespace vhost_vsock::vsock::test

namespace vhost_vsock::vsock::test {
namespace {

// Many messages of random sizes (0 .. 9000 bytes, so many span several 4 KiB
// RX buffers and several guest packets) both ways on one seqpacket
// connection, with a stream connection carrying bytes beside it: every
// message arrives whole, alone and in order, and the stream is unaffected.
TEST_F(SeqpacketTest, ThousandsOfRandomMessagesBothWaysBesideAStream) {
  auto seq_host = establish();
  ASSERT_TRUE(seq_host.valid());
  auto stream_host = establish_guest_connection(kGuestPort + 1, kHostPort + 1);
  ASSERT_TRUE(stream_host.valid());
  std::mt19937 random(11);
  constexpr int kMessagesEachWay = 5000;
  uint64_t guest_read = 0;
  for (int i = 0; i < kMessagesEachWay; ++i) {
    // Guest -> host, cut into packets of random sizes.
    const auto out = pattern(random() % 9001, static_cast<size_t>(i));
    send_message(out, 1 + random() % 4096);
    const auto got = host_message(seq_host.get(), 1000ms);
    ASSERT_TRUE(got.has_value()) << "guest message " << i;
    ASSERT_EQ(*got, out) << "guest message " << i;
    // Host -> guest.
    const auto in = pattern(random() % 9001, static_cast<size_t>(i) + 1);
    ASSERT_EQ(::send(seq_host.get(), in.data(), in.size(), 0), static_cast<ssize_t>(in.size()));
    std::vector<GuestPacket> packets;
    for (int turn = 0; turn < 200; ++turn) {
      h->loop().run_once(std::chrono::milliseconds(turn == 0 ? 0 : 1));
      auto more = h->received();
      packets.insert(packets.end(), more.begin(), more.end());
      const bool whole = std::any_of(packets.begin(), packets.end(), [](const GuestPacket& p) {
        return p.header.operation() == Op::kRw && (p.header.flags & kSeqEom);
      });
      if (whole) break;
    }
    std::vector<GuestPacket> seq_packets;
    for (auto& p : packets) {
      if (p.header.type == kSeqType) seq_packets.push_back(std::move(p));
    }
    ASSERT_EQ(guest_messages(seq_packets), std::vector<std::vector<uint8_t>>{in}) << "host message " << i;
    guest_read += in.size();
    h->guest_fwd_cnt = static_cast<uint32_t>(guest_read);  // the guest read it: credit comes back
    if (i % 16 == 0) h->send(seq_header(Op::kCreditUpdate));
    if (i % 100 == 0) {
      const std::string text = "stream " + std::to_string(i);
      h->send(h->guest_header(Op::kRw, kGuestPort + 1, kHostPort + 1, static_cast<uint32_t>(text.size())),
              bytes_of(text));
      ASSERT_EQ(read_some(stream_host.get()), text);
    }
  }
  EXPECT_EQ(h->stats().credit_violations + h->stats().protocol_violations + h->stats().messages_refused, 0u);
}

}  // namespace
}  // namespace vhost_vsock::vsock::test

namespace vhost_vsock::vsock::test {
namespace {

// Messages cost their bytes in credit, but tiny ones could still pile up in
// numbers while the host does not read: the count is capped too.
TEST_F(SeqpacketTest, TooManyWaitingMessagesResetTheGuest) {
  auto host = establish();
  const std::vector<uint8_t> one{7};
  // AF_UNIX takes a few hundred before it blocks; then kMaxBufferedMessages wait here.
  for (size_t i = 0; i < 1000 + kMaxBufferedMessages && h->stats().protocol_violations == 0; ++i) {
    h->send(seq_header(Op::kRw, 1, kSeqEom), one);
  }
  EXPECT_EQ(h->stats().protocol_violations, 1u);
  EXPECT_EQ(h->stats().credit_violations, 0u) << "a few thousand bytes are well within credit";
  auto packets = drain();
  ASSERT_FALSE(packets.empty());
  EXPECT_EQ(packets.back().header.operation(), Op::kRst);
}

}  // namespace
}  // namespace vhost_vsock::vsock::test
