// A misbehaving guest and front-end: the daemon must drop or reset, never
// crash, hang or forward, and keep serving well-behaved traffic afterwards.
#include <sys/socket.h>

#include <chrono>
#include <cstring>
#include <thread>

#include "fixture.h"

namespace vhost_vsock::integration {
namespace {

using testing::CapturedPacket;
using vsock::Op;
using Clock = std::chrono::steady_clock;

class HostileTest : public RingDaemonTest {
 protected:
  void start_capturing(DaemonOptions d = {}) {
    GuestOptions g;
    g.capture_packets = true;
    start(std::move(d), g);
  }
  // Something to the guest port `port` within `timeout`?
  std::optional<CapturedPacket> packet_to(uint32_t port, Millis timeout) {
    return guest().wait_packet([&](const CapturedPacket& p) { return p.header.dst_port == port; }, timeout);
  }
  // The daemon still does its job.
  void expect_healthy(uint32_t port) {
    HostListener listener(daemon().uds_port_path(port));
    auto c = guest_connects(listener, port);
    ASSERT_TRUE(c.guest.established() && c.host.valid());
    ASSERT_TRUE(c.guest.send("still alive"));
    EXPECT_EQ(read_exactly(c.host.get(), 11), "still alive");
  }
};

TEST_P(HostileTest, SpoofedSourceCidIsDroppedWithoutReply) {
  start_capturing();
  HostListener listener(daemon().uds_port_path(1234));
  auto header = guest().make_header(Op::kRequest, 40000, 1234);
  header.src_cid = 99;  // another VM's CID
  ASSERT_TRUE(guest().send_raw(header));
  // Not the host, and no VM of this daemon: refused at once, from that CID.
  auto to_nobody = guest().make_header(Op::kRequest, 40010, 1234);
  to_nobody.dst_cid = 7;
  ASSERT_TRUE(guest().send_raw(to_nobody));
  EXPECT_FALSE(listener.accept(Millis(300)).valid()) << "spoofed REQUEST was forwarded to the host";
  EXPECT_FALSE(packet_to(40000, Millis(100)).has_value()) << "spoofed packets must not be answered";
  auto refused = packet_to(40010, Millis(1000));
  ASSERT_TRUE(refused.has_value()) << "a connect to an unknown CID must be reset at once";
  EXPECT_EQ(refused->header.operation(), Op::kRst);
  EXPECT_EQ(refused->header.src_cid, 7u);
  // The simulated driver expects packets from CID 2 only: that RST is its one complaint.
  expect_no_violations_ = false;
  for (const auto& v : guest().violations()) EXPECT_NE(v.find("RST 7:1234 -> 3:40010"), std::string::npos) << v;
  expect_healthy(1235);
}

TEST_P(HostileTest, PacketForUnknownConnectionGetsReset) {
  start_capturing();
  const std::string payload = "stray";
  auto header = guest().make_header(Op::kRw, 40001, 5555, static_cast<uint32_t>(payload.size()));
  ASSERT_TRUE(guest().send_raw(header, std::span(reinterpret_cast<const uint8_t*>(payload.data()), payload.size())));
  auto reply = packet_to(40001, Millis(2000));
  ASSERT_TRUE(reply.has_value());
  EXPECT_EQ(reply->header.operation(), Op::kRst);
  EXPECT_EQ(reply->header.src_port, 5555u);
}

TEST_P(HostileTest, OrphanResetIsNotAnswered) {
  start_capturing();
  ASSERT_TRUE(guest().send_raw(guest().make_header(Op::kRst, 40002, 5556)));
  EXPECT_FALSE(packet_to(40002, Millis(300)).has_value());
}

TEST_P(HostileTest, UnknownOpResetsTheConnection) {
  start();
  HostListener listener(daemon().uds_port_path(1300));
  auto c = guest_connects(listener, 1300);
  ASSERT_TRUE(c.host.valid());
  auto header = guest().make_header(static_cast<Op>(99), c.guest.local_port(), 1300);
  ASSERT_TRUE(guest().send_raw(header));
  EXPECT_TRUE(c.guest.wait_reset(Millis(2000)));
  EXPECT_TRUE(wait_peer_closed(c.host.get(), Millis(2000)));
}

TEST_P(HostileTest, CreditOverrunResetsTheConnection) {
  start();
  HostListener listener(daemon().uds_port_path(1301));
  auto c = guest_connects(listener, 1301);
  ASSERT_TRUE(c.host.valid());
  // The host does not read: use up all the device's credit legitimately...
  std::vector<uint8_t> filler(8 << 20, 'f');
  EXPECT_FALSE(c.guest.send(filler, Millis(1000)));
  ASSERT_EQ(c.guest.peer_free_credit(), 0u);
  // ...then send beyond it.
  const std::string extra(1024, 'x');
  auto header = guest().make_header(Op::kRw, c.guest.local_port(), 1301, static_cast<uint32_t>(extra.size()));
  ASSERT_TRUE(guest().send_raw(header, std::span(reinterpret_cast<const uint8_t*>(extra.data()), extra.size())));
  EXPECT_TRUE(c.guest.wait_reset(Millis(2000))) << "overrun was not reset (dropped data, or buffered without bound?)";
  EXPECT_TRUE(wait_peer_closed(c.host.get(), Millis(5000)));
  expect_healthy(1302);
}

TEST_P(HostileTest, LoopingAndOutOfRangeDescriptorsDoNotHurtTheDevice) {
  start();
  expect_no_violations_ = false;  // the device rightly returns heads we never published through the shadow
  uint64_t bad_before = 0;
  uint16_t used_before = 0;
  guest().with_rings([&](testing::GuestRam& ram, testing::GuestRing&, testing::GuestRing& ring) {
    bad_before = ring.bad_used_ids();
    const uint64_t buf = ram.gpa_base();
    if (testing::DriverVring* tx = ring.as_split()) {
      used_before = tx->device_used_idx();
      tx->write_descriptor(0, buf, 44, testing::kDescFlagNext, 0);         // loops on itself
      tx->write_descriptor(1, 0xdead000000000ULL, 44, 0, 0);               // outside guest memory
      tx->write_descriptor(2, ram.gpa_base() + ram.size() - 8, 44, 0, 0);  // runs off the end
      tx->write_descriptor(3, buf, 44, testing::kDescFlagIndirect, 0);     // indirect table of garbage
      for (uint16_t head = 0; head < 4; ++head) tx->publish_head(head);
      return;
    }
    // Packed: buffer ids the driver is not using (it hands out low ids first).
    testing::PackedDriverVring& tx = *ring.as_packed();
    const auto id = [&](int i) { return static_cast<uint16_t>(tx.size() - 1 - i); };
    const testing::PackedDriverVring::RawDescriptor chains[] = {
        {0xdead000000000ULL, 44, id(0), 0},                                      // outside guest memory
        {ram.gpa_base() + ram.size() - 8, 44, id(1), 0},                         // runs off the end
        {buf, 44, id(2), testing::kDescFlagIndirect},                            // indirect table of garbage
        {buf, 44, id(3), testing::kDescFlagIndirect | testing::kDescFlagWrite},  // indirect and writable
    };
    for (const auto& chain : chains) ASSERT_TRUE(tx.publish_raw(std::span(&chain, 1)));
  });
  guest().kick(1);
  // Each bad chain is handed back (len 0), not left dangling: the split ring's
  // used idx moves by 4; the packed driver pops 4 used descriptors it did not know.
  auto handed_back = [&] {
    uint64_t n = 0;
    guest().with_rings([&](testing::GuestRam&, testing::GuestRing&, testing::GuestRing& tx) {
      n = packed() ? tx.bad_used_ids() - bad_before
                   : static_cast<uint16_t>(tx.as_split()->device_used_idx() - used_before);
    });
    return n;
  };
  const auto deadline = Clock::now() + Millis(5000);
  while (handed_back() < 4 && Clock::now() < deadline) std::this_thread::sleep_for(Millis(20));
  ASSERT_TRUE(daemon().running());
  EXPECT_EQ(handed_back(), 4u);
  expect_healthy(1303);
}

TEST_P(HostileTest, GarbageVhostUserMessagesDoNotKillTheDaemon) {
  start_daemon();
  {
    testing::VhostUserFrontend raw(daemon().socket_path());
    const std::vector<uint8_t> junk(64, 0xAB);
    raw.send_message(9999, junk);                                       // unknown request
    raw.send_message(testing::vhost_user_request::kSetMemTable, junk);  // malformed table, no fds
    raw.send_message(testing::vhost_user_request::kSetVringAddr, {});   // short payload
    // The daemon may answer or hang up; either way it must not die.
    for (int i = 0; i < 3 && raw.receive_reply(Millis(100)); ++i) {
    }
  }
  {
    // A header that lies about its size, then disconnects mid-message.
    testing::VhostUserFrontend raw(daemon().socket_path());
    const uint8_t header[12] = {1, 0, 0, 0, 1, 0, 0, 0, 0xff, 0xff, 0xff, 0x7f};
    ::send(raw.socket_fd(), header, sizeof(header), MSG_NOSIGNAL);
  }
  std::this_thread::sleep_for(Millis(100));
  ASSERT_TRUE(daemon().running());
  start_guest();
  expect_healthy(1304);
}

TEST_P(HostileTest, MemoryTableWithBogusRegionIsRefused) {
  start_daemon();
  testing::GuestRam ram(1 << 20);
  {
    testing::VhostUserFrontend raw(daemon().socket_path());
    raw.get_features();
    // A region far larger than the memfd behind it: mapping it must fail cleanly.
    std::vector<uint8_t> table(8 + 32, 0);
    const uint32_t regions = 1;
    const uint64_t fields[4] = {0x100000, 1ULL << 40, reinterpret_cast<uint64_t>(ram.data()), 0};
    std::memcpy(table.data(), &regions, 4);
    std::memcpy(table.data() + 8, fields, sizeof(fields));
    const int fd = ram.fd();
    raw.send_message(testing::vhost_user_request::kSetMemTable, table, std::span(&fd, 1));
    raw.receive_reply(Millis(200));
  }
  std::this_thread::sleep_for(Millis(100));
  ASSERT_TRUE(daemon().running());
  start_guest();
  expect_healthy(1305);
}

VUV_FOR_EACH_RING_LAYOUT(HostileTest);

}  // namespace
}  // namespace vhost_vsock::integration
