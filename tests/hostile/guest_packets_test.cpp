// A hostile guest at the packet level: lying headers, credit overruns,
// spoofed addresses, unknown ops and types, connection floods, and a guest
// that stops taking what the device sends. The offending connection is
// reset; the VM's other connections, the sibling VM and memory are checked.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <thread>

#include "hostile_support.h"

namespace vhost_vsock::hostile {
namespace {

using testing::CapturedPacket;
using vsock::Op;

std::span<const uint8_t> bytes(const std::string& s) {
  return {reinterpret_cast<const uint8_t*>(s.data()), s.size()};
}

class GuestPacketsTest : public HostileTest {
 protected:
  // A guest -> host connection to be attacked.
  struct Victim {
    std::unique_ptr<HostListener> listener;
    Stream guest;
    UniqueFd host;
  };
  Victim victim(uint32_t port) {
    Victim v;
    v.listener = std::make_unique<HostListener>(daemon().uds_port_path(0, port));
    v.guest = guest().connect(port, Millis(3000));
    EXPECT_TRUE(v.guest.established());
    v.host = v.listener->accept(Millis(3000));
    EXPECT_TRUE(v.host.valid());
    return v;
  }
  // The victim is reset on both sides and the host got exactly `expected`.
  void expect_reset(Victim& v, const std::string& expected_host_bytes, const char* what) {
    EXPECT_TRUE(v.guest.wait_reset(Millis(3000))) << what << ": the guest side was not reset";
    const std::string got = integration::read_until_eof(v.host.get(), Millis(3000));
    EXPECT_EQ(got, expected_host_bytes) << what << ": wrong bytes reached the host before the reset";
    EXPECT_TRUE(integration::wait_peer_closed(v.host.get(), Millis(100))) << what << ": the host side is still open";
  }
};

TEST_F(GuestPacketsTest, HeaderLongerThanItsBufferResetsOnlyThatConnection) {
  start_with_guest();
  Victim v = victim(6100);
  const MemoryUse before = daemon().memory();
  const std::string payload = "0123456789";
  auto header = guest().make_header(Op::kRw, v.guest.local_port(), 6100, 1000);  // claims 1000, carries 10
  ASSERT_TRUE(guest().send_raw(header, bytes(payload)));
  expect_reset(v, "", "len 1000 with a 10-byte buffer");
  expect_memory_growth_bounded(before, "header longer than its buffer");
}

TEST_F(GuestPacketsTest, HeaderShorterThanItsBufferForwardsOnlyLenBytes) {
  start_with_guest();
  allow_violations_containing("is ahead of the");  // raw sends bypass the stream's own byte count
  Victim v = victim(6101);
  auto header = guest().make_header(Op::kRw, v.guest.local_port(), 6101, 5);
  ASSERT_TRUE(guest().send_raw(header, bytes("HELLOWORLD")));
  header.len = 4;
  ASSERT_TRUE(guest().send_raw(header, bytes("next")));
  EXPECT_EQ(integration::read_exactly(v.host.get(), 9, Millis(3000)), "HELLOnext");
  EXPECT_EQ(integration::read_some(v.host.get(), 100, Millis(200)), "") << "bytes beyond len were forwarded";
}

TEST_F(GuestPacketsTest, PayloadAbove64KiBResetsTheConnection) {
  GuestOptions options;
  options.tx_max_payload = 128 * 1024;  // so the raw packet fits the guest's TX buffer
  start_with_guest({}, options);
  Victim v = victim(6102);
  const std::string payload(64 * 1024 + 1, 'p');
  auto header = guest().make_header(Op::kRw, v.guest.local_port(), 6102, static_cast<uint32_t>(payload.size()));
  ASSERT_TRUE(guest().send_raw(header, bytes(payload)));
  expect_reset(v, "", "65537-byte payload");
}

TEST_F(GuestPacketsTest, SendingBeyondTheGrantedCreditResets) {
  start_with_guest();
  Victim v = victim(6103);
  // The host does not read: use up the device's credit legitimately...
  const std::vector<uint8_t> filler(8 << 20, 'f');
  EXPECT_FALSE(v.guest.send(filler, Millis(1500)));
  ASSERT_EQ(v.guest.peer_free_credit(), 0u) << "credit never ran out";
  const MemoryUse before = daemon().memory();
  // ...then send beyond it.
  const std::string extra(4096, 'x');
  auto header = guest().make_header(Op::kRw, v.guest.local_port(), 6103, static_cast<uint32_t>(extra.size()));
  ASSERT_TRUE(guest().send_raw(header, bytes(extra)));
  EXPECT_TRUE(v.guest.wait_reset(Millis(3000))) << "an overrun was not reset (dropped or buffered?)";
  const std::string got = integration::read_until_eof(v.host.get(), Millis(5000));
  EXPECT_FALSE(got.empty());
  EXPECT_EQ(got.find('x'), std::string::npos) << "bytes beyond the credit reached the host";
  EXPECT_TRUE(std::all_of(got.begin(), got.end(), [](char c) { return c == 'f'; }));
  expect_memory_growth_bounded(before, "credit overrun");
}

// The sibling's setup may still be delivering its last packet (the
// CREDIT_UPDATE that follows an accepted connection) on a loaded machine:
// the count is taken once it has been still for 100 ms.
uint64_t settled_packets_received(const testing::GuestVsockDriver& guest) {
  uint64_t last = guest.stats().packets_received;
  for (int quiet_ms = 0, waited_ms = 0; quiet_ms < 100 && waited_ms < 3000; waited_ms += 10) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
    const uint64_t now = guest.stats().packets_received;
    quiet_ms = now == last ? quiet_ms + 10 : 0;
    last = now;
  }
  return last;
}

TEST_F(GuestPacketsTest, SpoofedAddressesAreDroppedWithoutReply) {
  start_with_guest();
  HostListener trap(daemon().uds_port_path(0, 6104));
  const uint64_t sibling_packets = settled_packets_received(*sibling_guest_);
  // src_cid of the sibling VM (or anyone else): dropped, never forwarded,
  // never answered. dst_cid not the host: the sibling VM (in another group)
  // or nobody: never forwarded, refused at once with an RST from that CID;
  // its own CID: dropped.
  struct Spoof {
    uint64_t src_cid;
    uint64_t dst_cid;
    const char* what;
  };
  allow_violations_containing("packet not from host to this guest: RST");
  const Spoof spoofs[] = {
      {4, 2, "sibling's CID as source"},  {99, 2, "unknown CID as source"},     {2, 2, "host's CID as source"},
      {3, 4, "to the sibling VM"},        {3, 7, "to an unknown CID"},          {3, 0xFFFFFFFF, "to CID_ANY"},
      {3, 1ULL << 32 | 2, "to 2 + 2^32"}, {1ULL << 32 | 3, 2, "from 3 + 2^32"}, {3, 3, "to its own CID"},
  };
  uint32_t port = 41000;
  for (const Spoof& s : spoofs) {
    auto header = guest().make_header(Op::kRequest, ++port, 6104);
    header.src_cid = s.src_cid;
    header.dst_cid = s.dst_cid;
    ASSERT_TRUE(guest().send_raw(header)) << s.what;
  }
  // Spoofed RSTs aimed at the sentinel's port pairs (guest ports are
  // allocated from 49152, host ports from 2^30) must not tear them down.
  for (uint32_t local = 49152; local < 49200; ++local) {
    auto rst = guest().make_header(Op::kRst, local, 6000);
    rst.src_cid = 99;
    ASSERT_TRUE(guest().send_raw(rst));
  }
  for (uint32_t host_port = 1u << 30; host_port < (1u << 30) + 16; ++host_port) {
    auto rst = guest().make_header(Op::kRst, 6001, host_port);
    rst.dst_cid = 4;
    ASSERT_TRUE(guest().send_raw(rst));
  }
  EXPECT_FALSE(trap.accept(Millis(300)).valid()) << "a spoofed REQUEST was forwarded to the host";
  port = 41000;
  for (const Spoof& s : spoofs) {
    ++port;
    // To itself: no peer could answer from that address, so it is only dropped.
    const bool answered = s.src_cid == 3 && s.dst_cid != 3;
    auto answer = guest().wait_packet([&](const CapturedPacket& p) { return p.header.dst_port == port; },
                                      Millis(answered ? 1000 : 50));
    if (!answered) {
      EXPECT_FALSE(answer.has_value()) << "a spoofed packet was answered: " << s.what;
      continue;
    }
    EXPECT_TRUE(answer.has_value()) << "no RST at once: " << s.what;
    if (answer) {
      EXPECT_EQ(answer->header.operation(), Op::kRst) << s.what;
      EXPECT_EQ(answer->header.src_cid, s.dst_cid) << s.what;
    }
  }
  EXPECT_EQ(sibling_guest_->stats().packets_received, sibling_packets) << "a packet was routed to the sibling VM";
  // own_sentinel_ (checked in TearDown) proves the spoofed RSTs did nothing.
  ASSERT_TRUE(own_sentinel_->check("after spoofed RSTs"));
}

TEST_F(GuestPacketsTest, UnknownOpsAndTypesAreReset) {
  start_with_guest();
  // The RST answering an odd type carries that type, as Linux's does.
  allow_violations_containing("packet of a socket type we never used");
  // Unknown op on an open connection: reset both sides.
  Victim v = victim(6105);
  ASSERT_TRUE(guest().send_raw(guest().make_header(static_cast<Op>(99), v.guest.local_port(), 6105)));
  expect_reset(v, "", "op 99");
  Victim v0 = victim(6106);
  ASSERT_TRUE(guest().send_raw(guest().make_header(Op::kInvalid, v0.guest.local_port(), 6106)));
  expect_reset(v0, "", "op 0");

  // Unknown op, unknown type and SEQPACKET on fresh ports: answered with RST.
  HostListener trap(daemon().uds_port_path(0, 6107));
  struct Odd {
    uint16_t type;
    uint16_t op;
    uint32_t src_port;
  };
  for (const Odd& odd : {Odd{1, 42, 42001}, Odd{7, 1, 42002}, Odd{2, 1, 42003}, Odd{0, 1, 42004}}) {
    auto header = guest().make_header(static_cast<Op>(odd.op), odd.src_port, 6107);
    header.type = odd.type;
    ASSERT_TRUE(guest().send_raw(header));
    auto reply =
        guest().wait_packet([&](const CapturedPacket& p) { return p.header.dst_port == odd.src_port; }, Millis(2000));
    ASSERT_TRUE(reply.has_value()) << "no answer to type " << odd.type << " op " << odd.op;
    EXPECT_EQ(reply->header.operation(), Op::kRst) << "type " << odd.type << " op " << odd.op;
  }
  EXPECT_FALSE(trap.accept(Millis(200)).valid()) << "a REQUEST of an unsupported type was forwarded";
}

// Linux answers a packet of an unknown type with an RST of that type and
// touches no socket (a Linux guest in turn ignores such an RST). The device
// does the same: the stream whose ports were borrowed carries on.
TEST_F(GuestPacketsTest, UnknownTypeOnAnOpenConnectionLeavesItAlone) {
  start_with_guest();
  allow_violations_containing("packet of a socket type we never used");
  Victim v = victim(6108);
  guest().clear_captured_packets();
  auto header = guest().make_header(Op::kRw, v.guest.local_port(), 6108, 4);
  header.type = 7;
  ASSERT_TRUE(guest().send_raw(header, bytes("evil")));
  auto reply = guest().wait_packet([&](const CapturedPacket& p) { return p.header.type == 7; }, Millis(2000));
  ASSERT_TRUE(reply.has_value());
  EXPECT_EQ(reply->header.operation(), Op::kRst);
  EXPECT_EQ(integration::read_some(v.host.get(), 100, Millis(200)), "") << "a type-7 payload reached the host";
  ASSERT_TRUE(v.guest.send("fine"));
  EXPECT_EQ(integration::read_exactly(v.host.get(), 4, Millis(3000)), "fine");
  ASSERT_TRUE(integration::write_all(v.host.get(), "also fine"));
  EXPECT_EQ(v.guest.recv_exactly(9, Millis(3000)), "also fine");
}

TEST_F(GuestPacketsTest, RequestFloodAboveTheConnectionCap) {
  constexpr int kCap = 16;
  DaemonSpec spec;
  spec.extra_args = {"--max-connections", std::to_string(kCap)};
  start_with_guest(spec);  // the sentinel holds 2 of the 16
  HostListener listener(daemon().uds_port_path(0, 6200));
  const MemoryUse before = daemon().memory();
  std::vector<Stream> flood;
  flood.reserve(200);
  for (int i = 0; i < 200; ++i) flood.push_back(guest().connect_async(6200));
  int established = 0;
  int refused = 0;
  const auto deadline = std::chrono::steady_clock::now() + Millis(5000);
  for (Stream& s : flood) {
    while (s.state() == testing::StreamState::kConnecting && std::chrono::steady_clock::now() < deadline) {
      std::this_thread::sleep_for(Millis(2));
    }
    if (s.established()) ++established;
    if (s.refused()) ++refused;
  }
  EXPECT_EQ(established, kCap - 2) << "connections beyond the cap were accepted (or too few)";
  EXPECT_EQ(refused, 200 - (kCap - 2)) << "requests beyond the cap were not refused with RST";
  std::vector<UniqueFd> accepted;
  while (auto fd = listener.accept(Millis(200))) accepted.push_back(std::move(fd));
  EXPECT_EQ(static_cast<int>(accepted.size()), kCap - 2) << "the host saw connections beyond the cap";
  // Host-initiated connections count too: refused (closed without OK) at the cap.
  guest().listen(6201);
  EXPECT_FALSE(integration::hybrid_connect(daemon().uds_path(0), 6201, nullptr, Millis(1000)).valid());
  expect_memory_growth_bounded(before, "REQUEST flood");

  // Closing connections frees their slots.
  for (Stream& s : flood) {
    if (s.established()) s.reset();
  }
  accepted.clear();
  // The daemon frees a slot when it has taken the RST, which a loaded machine
  // delays; until then a connect is refused, and a slot never freed never lets one in.
  const auto freed_by = std::chrono::steady_clock::now() + Millis(5000);
  Stream again = guest().connect(6200, Millis(3000));
  while (again.refused() && std::chrono::steady_clock::now() < freed_by) {
    std::this_thread::sleep_for(Millis(50));
    again = guest().connect(6200, Millis(3000));
  }
  EXPECT_TRUE(again.established()) << "slots were not freed after the flood's connections closed";
}

// Host peers keep writing while the guest never refills RX: the device reads
// no more than it can deliver, so memory stays flat and nothing is lost.
TEST_F(GuestPacketsTest, RxNeverRefilledWhileHostPeersKeepWriting) {
  start_with_guest();
  constexpr int kPeers = 8;
  std::vector<Stream> streams;
  std::vector<UniqueFd> hosts;
  for (int i = 0; i < kPeers; ++i) {
    guest().listen(6300 + i);
    hosts.push_back(integration::hybrid_connect(daemon().uds_path(0), 6300 + i, nullptr, Millis(3000)));
    ASSERT_TRUE(hosts.back().valid());
    auto s = guest().accept(6300 + i, Millis(3000));
    ASSERT_TRUE(s.has_value());
    streams.push_back(*s);
  }
  HostListener tx_listener(daemon().uds_port_path(0, 6310));
  Stream tx_stream = guest().connect(6310, Millis(3000));
  UniqueFd tx_host = tx_listener.accept(Millis(3000));
  ASSERT_TRUE(tx_host.valid());
  const MemoryUse before = daemon().memory();

  guest().set_rx_paused(true);
  // Each peer writes 16 MiB (far more than any bound) as far as the socket takes it.
  std::vector<uint64_t> written(kPeers, 0);
  std::vector<std::thread> writers;
  writers.reserve(kPeers);
  for (int i = 0; i < kPeers; ++i) {
    writers.emplace_back([&, i] {
      std::vector<uint8_t> chunk(size_t{64} * 1024);
      const auto until = std::chrono::steady_clock::now() + Millis(1000);
      while (written[i] < (16u << 20) && std::chrono::steady_clock::now() < until) {
        integration::fill_pattern(chunk, i, written[i]);
        const ssize_t n = ::send(hosts[i].get(), chunk.data(), chunk.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n > 0) {
          written[i] += static_cast<uint64_t>(n);
        } else {
          std::this_thread::sleep_for(Millis(5));
        }
      }
    });
  }
  // TX is independent of RX: guest -> host data still flows meanwhile.
  const std::string up(size_t{32} * 1024, 'u');
  EXPECT_TRUE(tx_stream.send(up, Millis(3000)));
  EXPECT_EQ(integration::read_exactly(tx_host.get(), up.size(), Millis(3000)).size(), up.size());
  for (auto& w : writers) w.join();
  uint64_t total = 0;
  for (uint64_t w : written) total += w;
  std::cout << "[ attack   ] host peers got " << total / 1024 << " KiB into their sockets while RX was starved\n";
  EXPECT_LT(total, uint64_t{kPeers} * (16u << 20)) << "the daemon read everything: where did it put it?";
  expect_memory_growth_bounded(before, "RX never refilled");

  guest().set_rx_paused(false);
  for (int i = 0; i < kPeers; ++i) {
    const std::string got = streams[i].recv_exactly(written[i], Millis(10000));
    std::vector<uint8_t> expected(written[i]);
    integration::fill_pattern(expected, i, 0);
    ASSERT_EQ(got.size(), written[i]) << "peer " << i << " lost data";
    EXPECT_TRUE(std::equal(expected.begin(), expected.end(), reinterpret_cast<const uint8_t*>(got.data())))
        << "peer " << i << " data corrupted";
  }
}

// A guest application that never reads: the device stops at the credit the
// guest granted; the host peer is throttled by its socket, not by our memory.
TEST_F(GuestPacketsTest, GuestThatNeverReadsIsNeverOverrun) {
  start_with_guest();
  guest().listen(6400);
  UniqueFd host = integration::hybrid_connect(daemon().uds_path(0), 6400, nullptr, Millis(3000));
  ASSERT_TRUE(host.valid());
  auto stream = guest().accept(6400, Millis(3000));
  ASSERT_TRUE(stream.has_value());
  const MemoryUse before = daemon().memory();
  constexpr size_t kTotal = 8 << 20;
  std::atomic<size_t> written{0};
  std::thread writer([&] {
    std::vector<uint8_t> data(kTotal);
    integration::fill_pattern(data, 77, 0);
    // Blocks once the guest's credit and the socket buffers are full.
    if (integration::write_all(host.get(), data, Millis(20000))) written = kTotal;
  });
  std::this_thread::sleep_for(Millis(1000));
  EXPECT_TRUE(stream->wait_readable(guest().options().buf_alloc, Millis(5000)))
      << "the device stopped short of the credit the guest granted";
  // The guest driver records any byte beyond its buf_alloc as a violation.
  EXPECT_LE(stream->readable_bytes(), guest().options().buf_alloc);
  expect_memory_growth_bounded(before, "guest never reads");
  const std::string got = stream->recv_exactly(kTotal, Millis(20000));
  writer.join();
  EXPECT_EQ(written.load(), kTotal);
  std::vector<uint8_t> expected(kTotal);
  integration::fill_pattern(expected, 77, 0);
  ASSERT_EQ(got.size(), kTotal);
  EXPECT_TRUE(std::equal(expected.begin(), expected.end(), reinterpret_cast<const uint8_t*>(got.data())));
}

// While the guest takes nothing from RX, every packet it sends to an unknown
// port owes it an RST: those owed replies must be bounded, not queued forever.
// The daemon takes a packet only while it has room for the reply it may owe,
// so the stalled guest stalls its own TX ring; once it reads again, every
// packet is answered (none was dropped).
TEST_F(GuestPacketsTest, RepliesOwedToAStalledGuestAreBounded) {
  start_with_guest();
  const MemoryUse before = daemon().memory();
  const uint64_t resets_before = guest().stats().resets_received;
  guest().set_rx_paused(true);
  constexpr uint32_t kOrphans = 20000;
  const std::string junk(512, 'j');
  auto orphan = [&](uint32_t i) {
    return guest().make_header(Op::kRw, 20000 + i % 40000, 9999, static_cast<uint32_t>(junk.size()));
  };
  uint32_t sent = 0;
  while (sent < kOrphans && guest().send_raw(orphan(sent), bytes(junk), Millis(500))) ++sent;
  std::cout << "[ attack   ] TX stalled after " << sent << " of " << kOrphans
            << " orphan packets while RX was paused\n";
  // 1024 owed RSTs, the RX buffers the guest had posted, and its TX ring.
  const uint32_t bound = 1024 + 2 * guest().options().queue_size;
  EXPECT_LE(sent, bound) << "owed replies were queued without bound";
  expect_memory_growth_bounded(before, "orphan packets while RX is paused");

  guest().set_rx_paused(false);
  for (; sent < kOrphans; ++sent) {
    ASSERT_TRUE(guest().send_raw(orphan(sent), bytes(junk), Millis(5000))) << "TX stalled after " << sent << " packets";
  }
  guest().wait_stats([&](const auto& s) { return s.resets_received - resets_before >= kOrphans; }, Millis(10000));
  const uint64_t resets = guest().stats().resets_received - resets_before;
  std::cout << "[ attack   ] " << resets << " of " << kOrphans << " owed RSTs were delivered\n";
  EXPECT_GT(resets, 0u);
  EXPECT_EQ(resets, kOrphans) << "owed replies were dropped";
}

}  // namespace
}  // namespace vhost_vsock::hostile
