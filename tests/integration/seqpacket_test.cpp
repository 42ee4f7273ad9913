// SOCK_SEQPACKET over hybrid vsock through the real daemon: guest messages
// arrive as exact AF_UNIX SOCK_SEQPACKET messages at <uds>_<port>, host
// messages sent on <uds>_seqpacket arrive whole in the guest (split over
// several RX buffers when large), beside streams on the same device.
#include <sys/socket.h>

#include <random>
#include <thread>
#include <vector>

#include "fixture.h"

namespace vhost_vsock::integration {
namespace {

// Sanitized builds run daemon and guest 20-60x slower: fewer random messages
// there, the same interleavings otherwise.
#if defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer)
#define VUV_SEQPACKET_TEST_SANITIZED 1
#endif
#endif
#ifdef VUV_SEQPACKET_TEST_SANITIZED
constexpr bool kSanitized = true;
#else
constexpr bool kSanitized = false;
#endif

using testing::CapturedPacket;
using vsock::Op;
using vsock::SocketType;

std::string pattern_message(size_t size, uint64_t seed) {
  std::string out(size, '\0');
  fill_pattern(std::span(reinterpret_cast<uint8_t*>(out.data()), out.size()), seed, 0);
  return out;
}

class SeqpacketTest : public RingDaemonTest {
 protected:
  std::string seqpacket_path() { return daemon().uds_path() + "_seqpacket"; }

  // Guest connects a seqpacket socket to `port`; the host side comes from `listener`.
  Connected guest_connects_seqpacket(HostListener& listener, uint32_t port) {
    Connected c;
    c.guest = guest().connect(port, Millis(5000), SocketType::kSeqpacket);
    EXPECT_TRUE(c.guest.established()) << "refused=" << c.guest.refused();
    c.host = listener.accept(Millis(5000));
    EXPECT_TRUE(c.host.valid());
    return c;
  }
  // Host connects on <uds>_seqpacket with "CONNECT <port>\n"; the guest accepts.
  Connected host_connects_seqpacket(uint32_t port, std::string* ok = nullptr) {
    Connected c;
    c.host = unix_connect(seqpacket_path(), Millis(5000), SOCK_SEQPACKET);
    EXPECT_TRUE(c.host.valid());
    EXPECT_TRUE(send_message(c.host.get(), "CONNECT " + std::to_string(port) + "\n"));
    auto accepted = guest().accept(port, Millis(5000));
    EXPECT_TRUE(accepted.has_value());
    if (accepted) c.guest = *accepted;
    auto reply = receive_message(c.host.get(), Millis(5000));
    EXPECT_TRUE(reply.has_value() && reply->rfind("OK ", 0) == 0 && reply->back() == '\n')
        << "OK line is one message: " << reply.value_or("<none>");
    if (ok != nullptr && reply) *ok = *reply;
    return c;
  }
};

TEST_P(SeqpacketTest, GuestMessagesArriveWholeAtHostSeqpacketListener) {
  start();
  ASSERT_TRUE(guest().seqpacket_negotiated());
  HostListener listener(daemon().uds_port_path(5000), 16, SOCK_SEQPACKET);
  auto c = guest_connects_seqpacket(listener, 5000);
  ASSERT_TRUE(c.guest.established() && c.host.valid());
  EXPECT_EQ(c.guest.type(), SocketType::kSeqpacket);
  // Up to the device's whole buf_alloc; after small ones, so the last message
  // needs the credit the earlier ones freed.
  const size_t window = c.guest.peer_buf_alloc();
  ASSERT_GE(window, 8294u);
  const size_t sizes[] = {1, 100, 0, 4096, 4097, window, window, 30000};
  // The host reads while the guest sends: a full window waits for the host socket.
  std::jthread sender([&] {
    for (size_t i = 0; i < std::size(sizes); ++i) {
      EXPECT_TRUE(c.guest.send_message(pattern_message(sizes[i], i))) << "message " << i;
    }
    EXPECT_FALSE(c.guest.send_message(pattern_message(window + 1, 0)))
        << "the simulator refuses it as Linux does (EMSGSIZE)";
  });
  for (size_t i = 0; i < std::size(sizes); ++i) {
    auto got = receive_message(c.host.get(), Millis(5000));
    ASSERT_TRUE(got.has_value()) << "message " << i << " of " << sizes[i] << " bytes";
    EXPECT_EQ(got->size(), sizes[i]) << "message " << i << " cut or merged";
    EXPECT_TRUE(*got == pattern_message(sizes[i], i)) << "message " << i;
  }
  sender.join();
  // And back, on the same connection: each host message is one guest message.
  ASSERT_TRUE(send_message(c.host.get(), "reply one"));
  ASSERT_TRUE(send_message(c.host.get(), "two"));
  bool eor = false;
  EXPECT_EQ(c.guest.recv_message(Millis(5000), &eor), "reply one");
  EXPECT_TRUE(eor) << "host messages carry EOR";
  EXPECT_EQ(c.guest.recv_message(Millis(5000)), "two");
}

TEST_P(SeqpacketTest, HostMessagesArriveWholeSplitOverSeveralRxBuffers) {
  GuestOptions g;
  g.capture_packets = true;
  start({}, g);
  guest().listen(6000, SocketType::kSeqpacket);
  std::string ok;
  auto c = host_connects_seqpacket(6000, &ok);
  ASSERT_TRUE(c.host.valid() && c.guest.valid());
  EXPECT_EQ(c.guest.type(), SocketType::kSeqpacket);
  EXPECT_EQ(std::stoull(ok.substr(3)), c.guest.peer_port()) << "OK names the guest's peer port";
  // RX buffers hold 4096 payload bytes: 10000 bytes take three, 100000 take 25.
  const size_t sizes[] = {1, 4096, 10000, 100000, 7};
  for (size_t i = 0; i < std::size(sizes); ++i) {
    ASSERT_TRUE(send_message(c.host.get(), pattern_message(sizes[i], 100 + i)));
  }
  for (size_t i = 0; i < std::size(sizes); ++i) {
    bool eor = false;
    auto got = c.guest.recv_message(Millis(5000), &eor);
    ASSERT_TRUE(got.has_value()) << "message " << i;
    EXPECT_EQ(got->size(), sizes[i]);
    EXPECT_TRUE(*got == pattern_message(sizes[i], 100 + i)) << "message " << i;
    EXPECT_TRUE(eor);
  }
  // Every data packet of the connection: EOM exactly on each message's last.
  size_t message = 0;
  size_t bytes_in_message = 0;
  for (const CapturedPacket& p : guest().captured_packets()) {
    if (p.header.operation() != Op::kRw || p.header.dst_port != 6000) continue;
    EXPECT_EQ(p.header.type, static_cast<uint16_t>(SocketType::kSeqpacket));
    ASSERT_LT(message, std::size(sizes));
    bytes_in_message += p.payload.size();
    const bool eom = (p.header.flags & vsock::kSeqEom) != 0;
    EXPECT_EQ(eom, bytes_in_message == sizes[message]) << "message " << message << " at " << bytes_in_message;
    if (eom) {
      ++message;
      bytes_in_message = 0;
    }
  }
  EXPECT_EQ(message, std::size(sizes));
}

// Streams and seqpacket connections at once, both directions, random sizes
// with checksums: every message arrives whole and in order.
TEST_P(SeqpacketTest, ManyRandomMessagesBothWaysBesideAStream) {
  start();
  HostListener seq_listener(daemon().uds_port_path(7000), 16, SOCK_SEQPACKET);
  HostListener stream_listener(daemon().uds_port_path(7001));
  auto g2h = guest_connects_seqpacket(seq_listener, 7000);
  guest().listen(7002, SocketType::kSeqpacket);
  auto h2g = host_connects_seqpacket(7002);
  auto stream = guest_connects(stream_listener, 7001);
  ASSERT_TRUE(g2h.host.valid() && h2g.guest.valid() && stream.host.valid());

  constexpr int kMessages = kSanitized ? 2000 : 10000;
  std::mt19937 rng(11);
  std::vector<size_t> sizes(kMessages);
  for (auto& size : sizes) size = rng() % 9000;
  std::jthread guest_sender([&] {
    for (int i = 0; i < kMessages; ++i) EXPECT_TRUE(g2h.guest.send_message(pattern_message(sizes[i], i)));
  });
  std::jthread host_sender([&] {
    for (int i = 0; i < kMessages; ++i) EXPECT_TRUE(send_message(h2g.host.get(), pattern_message(sizes[i], ~i)));
  });
  // The stream's host side reads as it goes: 1 MiB does not fit in the
  // socket buffers and our window, and the messages take long under sanitizers.
  std::jthread stream_sender([&] { EXPECT_TRUE(stream.guest.send(pattern_message(1 << 20, 5), Millis(120000))); });
  std::string stream_received;
  std::jthread stream_receiver([&] { stream_received = read_exactly(stream.host.get(), 1 << 20, Millis(120000)); });
  std::jthread guest_receiver([&] {
    for (int i = 0; i < kMessages; ++i) {
      auto got = h2g.guest.recv_message(Millis(10000));
      ASSERT_TRUE(got.has_value()) << "host->guest message " << i;
      ASSERT_EQ(got->size(), sizes[i]) << "host->guest message " << i;
      ASSERT_TRUE(*got == pattern_message(sizes[i], ~i)) << "host->guest message " << i;
    }
  });
  for (int i = 0; i < kMessages; ++i) {
    auto got = receive_message(g2h.host.get(), Millis(10000));
    ASSERT_TRUE(got.has_value()) << "guest->host message " << i;
    ASSERT_EQ(got->size(), sizes[i]) << "guest->host message " << i;
    ASSERT_TRUE(*got == pattern_message(sizes[i], i)) << "guest->host message " << i;
  }
  stream_receiver.join();
  EXPECT_EQ(stream_received, pattern_message(1 << 20, 5));
}

TEST_P(SeqpacketTest, HostMessageLargerThanGuestBufferResetsWithLogLine) {
  GuestOptions g;
  g.buf_alloc = 64 * 1024;
  start({}, g);
  guest().listen(6100, SocketType::kSeqpacket);
  auto c = host_connects_seqpacket(6100);
  ASSERT_TRUE(c.host.valid() && c.guest.valid());
  ASSERT_TRUE(send_message(c.host.get(), "fits"));
  ASSERT_TRUE(send_message(c.host.get(), pattern_message(64 * 1024 + 1, 1)));
  EXPECT_EQ(c.guest.recv_message(Millis(5000)), "fits");
  EXPECT_TRUE(c.guest.wait_reset(Millis(5000))) << "a message that can never fit must reset, not wait forever";
  EXPECT_FALSE(c.guest.recv_message(Millis(200)).has_value()) << "no part of the oversize message is delivered";
  EXPECT_TRUE(wait_peer_closed(c.host.get(), Millis(5000)));
  EXPECT_NE(daemon().log().find("65537-byte seqpacket message"), std::string::npos) << "the log names the size";
}

TEST_P(SeqpacketTest, WithoutTheFeatureSeqpacketIsResetAndStreamsWork) {
  GuestOptions g;
  g.seqpacket = false;
  start({}, g);
  ASSERT_FALSE(guest().seqpacket_negotiated());
  HostListener seq_listener(daemon().uds_port_path(5100), 16, SOCK_SEQPACKET);
  auto refused = guest().connect(5100, Millis(5000), SocketType::kSeqpacket);
  EXPECT_TRUE(refused.refused()) << "type-2 REQUEST without VIRTIO_VSOCK_F_SEQPACKET gets RST";
  EXPECT_FALSE(seq_listener.accept(Millis(200)).valid()) << "nothing reaches the host";
  HostListener stream_listener(daemon().uds_port_path(5101));
  auto c = guest_connects(stream_listener, 5101);
  ASSERT_TRUE(c.guest.send("stream still works"));
  EXPECT_EQ(read_exactly(c.host.get(), 18), "stream still works");
}

TEST_P(SeqpacketTest, ListenerOfTheOtherTypeRefusesAtOnce) {
  start();
  HostListener stream_listener(daemon().uds_port_path(5200));
  auto seq = guest().connect(5200, Millis(5000), SocketType::kSeqpacket);
  EXPECT_TRUE(seq.refused()) << "seqpacket connect to a SOCK_STREAM listener";
  HostListener seq_listener(daemon().uds_port_path(5201), 16, SOCK_SEQPACKET);
  auto stream = guest().connect(5201, Millis(5000));
  EXPECT_TRUE(stream.refused()) << "stream connect to a SOCK_SEQPACKET listener";
  // And a host CONNECT on <uds>_seqpacket to a guest stream listener: the guest refuses.
  guest().listen(5202);
  UniqueFd host = unix_connect(seqpacket_path(), Millis(5000), SOCK_SEQPACKET);
  ASSERT_TRUE(send_message(host.get(), "CONNECT 5202\n"));
  EXPECT_TRUE(wait_peer_closed(host.get(), Millis(5000)));
  EXPECT_FALSE(guest().accept(5202, Millis(100)).has_value());
}

TEST_P(SeqpacketTest, HostCloseGivesTheGuestEveryMessageThenEof) {
  start();
  guest().listen(6200, SocketType::kSeqpacket);
  auto c = host_connects_seqpacket(6200);
  ASSERT_TRUE(send_message(c.host.get(), "first"));
  ASSERT_TRUE(send_message(c.host.get(), "last"));
  c.host.reset();
  EXPECT_EQ(c.guest.recv_message(Millis(5000)), "first");
  EXPECT_EQ(c.guest.recv_message(Millis(5000)), "last");
  EXPECT_FALSE(c.guest.recv_message(Millis(2000)).has_value());
  EXPECT_TRUE(c.guest.eof() || c.guest.state() == StreamState::kClosed);
}

// A hostile guest with type-2 packets: the device keeps message boundaries
// by EOM alone, bounds what it holds by the credit, and stays healthy.
class SeqpacketHostileTest : public SeqpacketTest {
 protected:
  // Sends one raw seqpacket RW on `conn` (the simulator's credit accounting
  // does not see it, so the device's fwd_cnt runs ahead of it: no violation check).
  bool send_part(const Stream& conn, std::string_view payload, uint32_t flags) {
    expect_no_violations_ = false;
    auto h =
        guest().make_header(Op::kRw, conn.local_port(), conn.peer_port(), static_cast<uint32_t>(payload.size()), flags);
    h.type = static_cast<uint16_t>(SocketType::kSeqpacket);
    return guest().send_raw(h, std::span(reinterpret_cast<const uint8_t*>(payload.data()), payload.size()));
  }
  void expect_stream_works(uint32_t port) {
    HostListener listener(daemon().uds_port_path(port));
    auto c = guest_connects(listener, port);
    ASSERT_TRUE(c.guest.send("still alive"));
    EXPECT_EQ(read_exactly(c.host.get(), 11), "still alive");
  }
};

TEST_P(SeqpacketHostileTest, BogusFlagsDoNotEndAMessageOnlyEomDoes) {
  start();
  HostListener listener(daemon().uds_port_path(5300), 16, SOCK_SEQPACKET);
  auto c = guest_connects_seqpacket(listener, 5300);
  ASSERT_TRUE(c.host.valid());
  ASSERT_TRUE(send_part(c.guest, "no-eom ", 0xFFFC));             // every flag but EOM and EOR
  ASSERT_TRUE(send_part(c.guest, "eor-alone ", vsock::kSeqEor));  // EOR without EOM
  ASSERT_TRUE(send_part(c.guest, "end", vsock::kSeqEom | 0xFF00));
  auto got = receive_message(c.host.get(), Millis(5000));
  ASSERT_TRUE(got.has_value());
  EXPECT_EQ(*got, "no-eom eor-alone end") << "one message, cut at the EOM only";
  EXPECT_FALSE(receive_message(c.host.get(), Millis(200)).has_value()) << "nothing else";
  // A stream packet with EOM set is plain stream data.
  HostListener stream_listener(daemon().uds_port_path(5301));
  auto s = guest_connects(stream_listener, 5301);
  auto h = guest().make_header(Op::kRw, s.guest.local_port(), 5301, 4, vsock::kSeqEom | vsock::kSeqEor);
  ASSERT_TRUE(guest().send_raw(h, std::span(reinterpret_cast<const uint8_t*>("abcd"), 4)));
  EXPECT_EQ(read_exactly(s.host.get(), 4), "abcd");
  expect_stream_works(5302);
}

TEST_P(SeqpacketHostileTest, MessageLongerThanBufAllocIsResetNeverDeliveredInPart) {
  start();
  HostListener listener(daemon().uds_port_path(5400), 16, SOCK_SEQPACKET);
  auto c = guest_connects_seqpacket(listener, 5400);
  ASSERT_TRUE(c.host.valid());
  const uint32_t buf_alloc = c.guest.peer_buf_alloc();
  const std::string part(32 * 1024, 'm');
  // No EOM: the device holds every byte, so past buf_alloc it is over credit.
  for (uint32_t sent = 0; sent <= buf_alloc; sent += static_cast<uint32_t>(part.size())) {
    ASSERT_TRUE(send_part(c.guest, part, 0));
  }
  EXPECT_TRUE(c.guest.wait_reset(Millis(5000))) << "a message beyond buf_alloc resets the connection";
  bool eof = false;
  EXPECT_FALSE(receive_message(c.host.get(), Millis(5000), &eof).has_value()) << "no part of it reaches the host";
  EXPECT_TRUE(eof) << "the host socket is closed";
  EXPECT_NE(daemon().log().find("credit violation"), std::string::npos) << "logged";
  expect_stream_works(5401);
}

TEST_P(SeqpacketHostileTest, MessageWithoutEomIsHeldNotForwardedThenDroppedOnReset) {
  start();
  HostListener listener(daemon().uds_port_path(5500), 16, SOCK_SEQPACKET);
  auto c = guest_connects_seqpacket(listener, 5500);
  ASSERT_TRUE(c.host.valid());
  ASSERT_TRUE(send_part(c.guest, std::string(1000, 'x'), 0));
  ASSERT_TRUE(send_part(c.guest, std::string(1000, 'y'), 0));
  EXPECT_FALSE(receive_message(c.host.get(), Millis(300)).has_value()) << "no EOM, no message";
  expect_stream_works(5501);  // the held bytes do not stall the device
  c.guest.reset();
  bool eof = false;
  EXPECT_FALSE(receive_message(c.host.get(), Millis(5000), &eof).has_value());
  EXPECT_TRUE(eof) << "the host sees the connection end, never half a message";
}

VUV_FOR_EACH_RING_LAYOUT(SeqpacketTest);
VUV_FOR_EACH_RING_LAYOUT(SeqpacketHostileTest);

}  // namespace
}  // namespace vhost_vsock::integration
