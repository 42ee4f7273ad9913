// A hostile guest below the packet level: descriptors the device must refuse
// without crashing, hanging, forwarding anything or writing where it may not.
// Each attack descriptor carries (or points at) a valid REQUEST to a host
// listener, so a device that accepted the bad chain would be caught by the
// listener getting a connection.
#include <cstring>
#include <thread>

#include "hostile_support.h"
#include "raw_guest.h"

namespace vhost_vsock::hostile {
namespace {

using testing::kDescFlagIndirect;
using testing::kDescFlagNext;
using testing::kDescFlagWrite;
using vsock::Op;

constexpr uint32_t kTrapPort = 5001;  // a listener that must never see a connection
constexpr size_t kDescBytes = 16;

class GuestRingsTest : public HostileTest {
 protected:
  // A REQUEST to the trap port, in guest memory: what every bad chain points at.
  uint64_t trap_request(RawGuest& raw, uint32_t src_port) {
    const uint64_t gpa = raw.scratch(vsock::kHeaderSize);
    const auto bytes = vsock::encode_header(raw.header(Op::kRequest, src_port, kTrapPort));
    std::memcpy(raw.ram().host(gpa, bytes.size()), bytes.data(), bytes.size());
    return gpa;
  }
  // An indirect table of `entries` descriptors, filled by `fill(i, at)`.
  uint64_t indirect_table(RawGuest& raw, size_t entries, const std::function<void(size_t, uint8_t*)>& fill) {
    const uint64_t gpa = raw.scratch(kDescBytes * entries);
    for (size_t i = 0; i < entries; ++i) fill(i, raw.ram().host(gpa + kDescBytes * i, kDescBytes));
    return gpa;
  }
  static void encode(uint8_t* at, uint64_t addr, uint32_t len, uint16_t flags, uint16_t next) {
    std::memcpy(at, &addr, 8);
    std::memcpy(at + 8, &len, 4);
    std::memcpy(at + 12, &flags, 2);
    std::memcpy(at + 14, &next, 2);
  }
};

// One bad TX chain: descriptors written by `build`, published at `head`.
struct BadChain {
  const char* what;
  std::function<void(RawGuest&, uint16_t head, uint64_t request)> build;
};

TEST_F(GuestRingsTest, MalformedTxChainsAreReturnedAndNothingIsForwarded) {
  start();
  RawGuest raw(daemon().socket_path(0));
  HostListener healthy_listener(daemon().uds_port_path(0, 5000));
  HostListener trap(daemon().uds_port_path(0, kTrapPort));
  // The attacked VM's own healthy connection, opened before the attack.
  ASSERT_TRUE(raw.connect(1024, 5000, Millis(3000)));
  UniqueFd healthy = healthy_listener.accept(Millis(3000));
  ASSERT_TRUE(healthy.valid());
  const MemoryUse before = daemon().memory();

  const uint64_t end_of_ram = raw.ram().gpa_base() + raw.ram().size();
  const std::vector<BadChain> attacks = {
      {"address beyond guest memory",
       [&](RawGuest& g, uint16_t h, uint64_t) { g.write_descriptor(1, h, end_of_ram + 4096, 44, 0); }},
      {"address wraps past 2^64",
       [](RawGuest& g, uint16_t h, uint64_t) { g.write_descriptor(1, h, ~uint64_t{0} - 15, 44, 0); }},
      {"length runs off the end of memory",
       [](RawGuest& g, uint16_t h, uint64_t req) { g.write_descriptor(1, h, req, 0xFFFFFFFF, 0); }},
      {"descriptor that loops on itself",
       [](RawGuest& g, uint16_t h, uint64_t req) { g.write_descriptor(1, h, req, 44, kDescFlagNext, h); }},
      {"two descriptors in a loop",
       [](RawGuest& g, uint16_t h, uint64_t req) {
         g.write_descriptor(1, h, req, 44, kDescFlagNext, static_cast<uint16_t>(h + 1));
         g.write_descriptor(1, static_cast<uint16_t>(h + 1), req, 1, kDescFlagNext, h);
       }},
      {"next index outside the table",
       [](RawGuest& g, uint16_t h, uint64_t req) { g.write_descriptor(1, h, req, 44, kDescFlagNext, 1000); }},
      {"readable after writable (direction order)",
       [](RawGuest& g, uint16_t h, uint64_t req) {
         g.write_descriptor(1, h, req, 8, kDescFlagWrite | kDescFlagNext, static_cast<uint16_t>(h + 1));
         g.write_descriptor(1, static_cast<uint16_t>(h + 1), req, 44, 0);
       }},
      {"request only in a device-writable buffer",
       [](RawGuest& g, uint16_t h, uint64_t req) { g.write_descriptor(1, h, req, 44, kDescFlagWrite); }},
      {"only zero-length descriptors",
       [](RawGuest& g, uint16_t h, uint64_t req) {
         for (uint16_t i = 0; i < 4; ++i) {
           g.write_descriptor(1, static_cast<uint16_t>(h + i), req, 0, i < 3 ? kDescFlagNext : 0,
                              static_cast<uint16_t>(h + i + 1));
         }
       }},
      {"indirect table longer than the queue (200 one-byte pieces of a REQUEST)",
       [this](RawGuest& g, uint16_t h, uint64_t req) {
         const uint64_t table = indirect_table(g, 200, [&](size_t i, uint8_t* at) {
           encode(at, req + std::min<size_t>(i, 43), i < 44 ? 1 : 0, i + 1 < 200 ? kDescFlagNext : 0,
                  static_cast<uint16_t>(i + 1));
         });
         g.write_descriptor(1, h, table, 200 * kDescBytes, kDescFlagIndirect);
       }},
      {"indirect table that loops",
       [this](RawGuest& g, uint16_t h, uint64_t req) {
         const uint64_t table = indirect_table(
             g, 2, [&](size_t i, uint8_t* at) { encode(at, req, 44, kDescFlagNext, static_cast<uint16_t>(1 - i)); });
         g.write_descriptor(1, h, table, 2 * kDescBytes, kDescFlagIndirect);
       }},
      {"indirect table length not a multiple of 16",
       [this](RawGuest& g, uint16_t h, uint64_t req) {
         const uint64_t table = indirect_table(g, 1, [&](size_t, uint8_t* at) { encode(at, req, 44, 0, 0); });
         g.write_descriptor(1, h, table, 24, kDescFlagIndirect);
       }},
      {"indirect table outside memory",
       [&](RawGuest& g, uint16_t h, uint64_t) { g.write_descriptor(1, h, end_of_ram - 8, 32, kDescFlagIndirect); }},
      {"nested indirect table",
       [this](RawGuest& g, uint16_t h, uint64_t req) {
         const uint64_t inner = indirect_table(g, 1, [&](size_t, uint8_t* at) { encode(at, req, 44, 0, 0); });
         const uint64_t outer =
             indirect_table(g, 1, [&](size_t, uint8_t* at) { encode(at, inner, kDescBytes, kDescFlagIndirect, 0); });
         g.write_descriptor(1, h, outer, kDescBytes, kDescFlagIndirect);
       }},
      {"indirect with NEXT set",
       [this](RawGuest& g, uint16_t h, uint64_t req) {
         const uint64_t table = indirect_table(g, 1, [&](size_t, uint8_t* at) { encode(at, req, 44, 0, 0); });
         g.write_descriptor(1, h, table, kDescBytes, kDescFlagIndirect | kDescFlagNext, static_cast<uint16_t>(h + 1));
         g.write_descriptor(1, static_cast<uint16_t>(h + 1), req, 44, 0);
       }},
  };

  uint32_t src_port = 2000;
  for (const BadChain& attack : attacks) {
    SCOPED_TRACE(attack.what);
    raw.forget_used(RawGuest::kTx);
    const uint16_t head = RawGuest::kAttackBase;
    attack.build(raw, head, trap_request(raw, ++src_port));
    raw.publish(RawGuest::kTx, head);
    // Every chain comes back (the guest can reuse its descriptors), with nothing written.
    const auto used = raw.wait_used(RawGuest::kTx, head, Millis(2000));
    ASSERT_TRUE(used.has_value()) << "the device kept the bad chain";
    EXPECT_EQ(*used, 0u);
    ASSERT_TRUE(daemon().running());
  }
  EXPECT_FALSE(trap.accept(Millis(300)).valid()) << "a malformed chain was taken as a REQUEST and forwarded";
  EXPECT_FALSE(raw.wait_packet([&](const RawPacket& p) { return p.header.src_port == kTrapPort; }, Millis(100)))
      << "the device answered a malformed chain";

  // A valid packet whose header is split by zero-length descriptors is fine.
  const std::string data = "after the attack";
  const auto header_bytes = vsock::encode_header(raw.header(Op::kRw, 1024, 5000, static_cast<uint32_t>(data.size())));
  const uint64_t packet = raw.scratch(vsock::kHeaderSize + data.size());
  std::memcpy(raw.ram().host(packet, header_bytes.size()), header_bytes.data(), header_bytes.size());
  std::memcpy(raw.ram().host(packet + vsock::kHeaderSize, data.size()), data.data(), data.size());
  const uint16_t h = RawGuest::kAttackBase;
  raw.write_descriptor(1, h, packet, 20, kDescFlagNext, h + 1);
  raw.write_descriptor(1, h + 1, packet, 0, kDescFlagNext, h + 2);
  raw.write_descriptor(1, h + 2, packet + 20, 24, kDescFlagNext, h + 3);
  raw.write_descriptor(1, h + 3, packet + vsock::kHeaderSize, static_cast<uint32_t>(data.size()), 0);
  raw.publish(RawGuest::kTx, h);
  EXPECT_EQ(integration::read_exactly(healthy.get(), data.size(), Millis(3000)), data);
  // And the other direction of the pre-attack connection still works.
  ASSERT_TRUE(integration::write_all(healthy.get(), "reply"));
  auto reply = raw.wait_packet(
      [](const RawPacket& p) { return p.header.operation() == Op::kRw && p.header.dst_port == 1024; }, Millis(3000));
  ASSERT_TRUE(reply.has_value());
  EXPECT_EQ(reply->payload, "reply");
  expect_memory_growth_bounded(before, "malformed TX chains");
}

TEST_F(GuestRingsTest, BadRxBuffersAreNeverWrittenAndTheDeviceRecovers) {
  start();
  RawGuest raw(daemon().socket_path(0), /*post_rx_buffers=*/false);
  HostListener listener(daemon().uds_port_path(0, 5002));
  const uint64_t end_of_ram = raw.ram().gpa_base() + raw.ram().size();

  // A read-only buffer the device must not write, whatever it owes the guest.
  const uint64_t read_only = raw.scratch(4096);
  std::memset(raw.ram().host(read_only, 4096), 0xAA, 4096);
  const uint64_t small = raw.scratch(64);
  std::memset(raw.ram().host(small, 64), 0xBB, 64);
  uint16_t head = RawGuest::kAttackBase;
  std::vector<std::pair<uint16_t, const char*>> heads;
  auto add = [&](const char* what, auto&& build) {
    build(head);
    heads.emplace_back(head, what);
    raw.ring(RawGuest::kRx).publish_head(head);
    head = static_cast<uint16_t>(head + 2);
  };
  add("device-readable RX buffer", [&](uint16_t h) { raw.write_descriptor(0, h, read_only, 4096, 0); });
  add("zero-length writable buffer", [&](uint16_t h) { raw.write_descriptor(0, h, small, 0, kDescFlagWrite); });
  add("writable buffer too small for a header",
      [&](uint16_t h) { raw.write_descriptor(0, h, small, 10, kDescFlagWrite); });
  add("writable buffer outside memory",
      [&](uint16_t h) { raw.write_descriptor(0, h, end_of_ram, 4096, kDescFlagWrite); });
  add("writable loop", [&](uint16_t h) { raw.write_descriptor(0, h, small, 64, kDescFlagWrite | kDescFlagNext, h); });
  add("readable header area then writable", [&](uint16_t h) {
    raw.write_descriptor(0, h, read_only, 44, kDescFlagNext, static_cast<uint16_t>(h + 1));
    raw.write_descriptor(0, static_cast<uint16_t>(h + 1), small, 10, kDescFlagWrite);
  });
  raw.kick(RawGuest::kRx);

  // The device now owes a RESPONSE, which none of these buffers can take.
  ASSERT_TRUE(raw.send(raw.header(Op::kRequest, 3000, 5002)));
  UniqueFd host = listener.accept(Millis(3000));
  ASSERT_TRUE(host.valid()) << "the REQUEST was not forwarded";
  const double cpu_before = daemon().cpu_seconds();
  std::this_thread::sleep_for(Millis(500));
  for (const auto& [h, what] : heads) {
    SCOPED_TRACE(what);
    const auto used = raw.wait_used(RawGuest::kRx, h, Millis(5000));
    ASSERT_TRUE(used.has_value()) << "unusable RX buffer was not handed back";
    EXPECT_EQ(*used, 0u) << "the device claims to have written into it";
  }
  // Not spinning on buffers it cannot use.
  EXPECT_LT(daemon().cpu_seconds() - cpu_before, kSanitized ? 0.4 : 0.2);
  const uint8_t* bytes = raw.ram().host(read_only, 4096);
  EXPECT_TRUE(std::all_of(bytes, bytes + 4096, [](uint8_t b) { return b == 0xAA; }))
      << "the device wrote into a device-readable buffer";
  const uint8_t* small_bytes = raw.ram().host(small, 64);
  EXPECT_TRUE(std::all_of(small_bytes, small_bytes + 64, [](uint8_t b) { return b == 0xBB; }))
      << "the device wrote into a buffer too small for a header";

  // Proper buffers: the owed RESPONSE arrives.
  raw.post_ordinary_rx();
  auto response = raw.wait_packet([](const RawPacket& p) { return p.header.dst_port == 3000; }, Millis(3000));
  ASSERT_TRUE(response.has_value());
  EXPECT_EQ(response->header.operation(), Op::kResponse);
}

class AvailIndexTest : public GuestRingsTest, public ::testing::WithParamInterface<uint16_t> {};

TEST_P(AvailIndexTest, CorruptAvailRingStopsTheQueueNotTheDaemon) {
  const uint16_t queue = GetParam();
  start();
  HostListener listener(daemon().uds_port_path(0, 5003));
  {
    RawGuest raw(daemon().socket_path(0));
    ASSERT_TRUE(raw.connect(1025, 5003, Millis(3000)));
    UniqueFd before_attack = listener.accept(Millis(3000));
    ASSERT_TRUE(before_attack.valid());
    testing::DriverVring& ring = raw.ring(queue);
    std::this_thread::sleep_for(Millis(50));  // let the connect's control packets settle
    const uint16_t rx_used_before = raw.ring(RawGuest::kRx).device_used_idx();
    ring.set_avail_idx(static_cast<uint16_t>(ring.avail_idx() + 1000));  // > queue size ahead
    raw.kick(queue);
    // Give the device something to put into RX, so it looks at that ring too.
    ASSERT_TRUE(integration::write_all(before_attack.get(), "data for a broken ring"));
    ASSERT_TRUE(daemon().wait_log("queue is stopped", Millis(3000))) << "no log line about the broken queue";
    // Stopped means stopped.
    if (queue == RawGuest::kTx) {
      raw.send(raw.header(Op::kRequest, 1026, 5003));
      EXPECT_FALSE(listener.accept(Millis(300)).valid()) << "the device kept processing a corrupt TX ring";
    } else {
      std::this_thread::sleep_for(Millis(300));
      EXPECT_EQ(raw.ring(RawGuest::kRx).device_used_idx(), rx_used_before)
          << "the device kept filling a corrupt RX ring";
    }
    expect_daemon_healthy("with a broken " + std::string(queue == 0 ? "RX" : "TX") + " queue");
  }  // the front-end goes away; a new one must get a working device
  expect_next_frontend_works(5004);
}

TEST_F(GuestRingsTest, AvailHeadOutsideTheTableStopsTheQueue) {
  start();
  {
    RawGuest raw(daemon().socket_path(0));
    raw.publish(RawGuest::kTx, 4000);  // not a descriptor index of a 64-entry ring
    ASSERT_TRUE(daemon().wait_log("queue is stopped", Millis(3000)));
    expect_daemon_healthy("after a head index outside the table");
  }
  expect_next_frontend_works(5005);
}

INSTANTIATE_TEST_SUITE_P(Queues, AvailIndexTest, ::testing::Values(uint16_t{0}, uint16_t{1}),
                         [](const ::testing::TestParamInfo<uint16_t>& info) {
                           return info.param == 0 ? std::string("Rx") : std::string("Tx");
                         });

}  // namespace
}  // namespace vhost_vsock::hostile
