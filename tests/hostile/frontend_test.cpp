// A hostile or broken vhost-user front-end: messages out of order, of the
// wrong size, with rings outside the memory table, kicks before there is
// memory, and descriptors attached where none belong. The daemon must refuse
// (or hang up), keep every descriptor and mapping bounded, and serve the next
// front-end normally.
#include "testing/frontend.h"

#include <sys/eventfd.h>
#include <sys/socket.h>

#include <cstring>
#include <thread>

#include "hostile_support.h"
#include "testing/driver_vring.h"
#include "testing/guest_ram.h"
#include "testing/vhost_user_payload.h"

namespace vhost_vsock::hostile {
namespace {

namespace req = testing::vhost_user_request;
using testing::encode_mem_table;
using testing::encode_u64;
using testing::encode_vring_addr;
using testing::encode_vring_state;
using testing::MemoryRegion;
using testing::VhostUserFrontend;

UniqueFd make_eventfd() {
  return UniqueFd(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
}

class FrontendTest : public HostileTest {
 protected:
  // A raw front-end with REPLY_ACK negotiated, so refusals are visible.
  std::unique_ptr<VhostUserFrontend> raw_frontend() {
    auto fe = std::make_unique<VhostUserFrontend>(daemon().socket_path(0));
    fe->get_features();
    const uint64_t protocol = fe->get_protocol_features();
    fe->set_protocol_features(protocol & (testing::kProtocolFeatureReplyAck | testing::kProtocolFeatureConfig));
    return fe;
  }
  // Sends with NEED_REPLY. The ack's status (0 = accepted), or nullopt if the
  // daemon hung up or sent nothing.
  static std::optional<uint64_t> ack(VhostUserFrontend& fe, uint32_t request, std::span<const uint8_t> payload,
                                     std::span<const int> fds = {}) {
    if (!fe.send_message(request, payload, fds, testing::kVhostUserVersion | testing::kVhostUserFlagNeedReply)) {
      return std::nullopt;
    }
    auto reply = fe.receive_reply(Millis(1000));
    if (!reply || reply->payload.size() != 8) return std::nullopt;
    uint64_t status = 0;
    std::memcpy(&status, reply->payload.data(), 8);
    return status;
  }
  // Refused means a non-zero ack status or a closed connection; never a silent yes.
  static void expect_refused(VhostUserFrontend& fe, uint32_t request, std::span<const uint8_t> payload,
                             const char* what, std::span<const int> fds = {}) {
    const auto status = ack(fe, request, payload, fds);
    EXPECT_TRUE(!status.has_value() || *status != 0) << what << " was accepted";
  }
  // Whether VM 0's ring `index` was ever started (the log says so).
  bool ring_started(int index) {
    return daemon().log().find(daemon().socket_path(0) + ": ring " + std::to_string(index) + " started") !=
           std::string::npos;
  }
  // Gives ring `index` a kick eventfd, enables it and kicks it `kicks` times:
  // the daemon must survive and must not start the ring.
  void expect_kicks_ignored(VhostUserFrontend& fe, uint32_t index, int kicks, const char* why) {
    UniqueFd kick = make_eventfd();
    const int fd = kick.get();
    ack(fe, req::kSetVringKick, encode_u64(index), std::span(&fd, 1));
    ack(fe, req::kSetVringEnable, encode_vring_state(index, 1));
    const uint64_t one = 1;
    for (int i = 0; i < kicks; ++i) ASSERT_EQ(::write(fd, &one, sizeof(one)), 8);
    std::this_thread::sleep_for(Millis(100));
    ASSERT_TRUE(daemon().running());
    EXPECT_FALSE(ring_started(static_cast<int>(index))) << why;
  }
};

TEST_F(FrontendTest, KickBeforeMemoryTable) {
  start();
  {
    auto fe = raw_frontend();
    fe->set_owner();
    // Rings "configured" and enabled with no memory at all.
    ack(*fe, req::kSetVringNum, encode_vring_state(1, 64));
    // Addresses may be refused now or when the ring would start; never used.
    ack(*fe, req::kSetVringAddr, encode_vring_addr(1, 0x1000, 0x3000, 0x2000));
    expect_kicks_ignored(*fe, 1, 100, "a ring started without any guest memory");
  }
  expect_next_frontend_works(8000);
}

TEST_F(FrontendTest, VringAddressesOutsideTheMemoryTable) {
  start();
  {
    testing::GuestRam ram(1 << 20);
    testing::DriverVring ring(ram, 64, false);
    auto fe = raw_frontend();
    fe->set_owner();
    fe->set_features(testing::kVirtioFeatureVersion1 | testing::kVhostUserFeatureProtocolFeatures);
    fe->set_mem_table(ram);
    const auto base = reinterpret_cast<uint64_t>(ram.data());
    const uint64_t end = base + ram.size();
    ASSERT_EQ(ack(*fe, req::kSetVringNum, encode_vring_state(0, 64)), uint64_t{0});
    expect_refused(*fe, req::kSetVringAddr, encode_vring_addr(0, 0xdead0000, base + 0x2000, base + 0x1000),
                   "a descriptor table outside memory");
    expect_refused(*fe, req::kSetVringAddr, encode_vring_addr(0, end - 16, base + 0x2000, base + 0x1000),
                   "a descriptor table running off the end of memory");
    expect_refused(*fe, req::kSetVringAddr, encode_vring_addr(0, base, ~uint64_t{0} - 8, base + 0x1000),
                   "a used ring that wraps past 2^64");
    // Misalignment may be refused now or when the ring would start.
    ack(*fe, req::kSetVringAddr, encode_vring_addr(0, base + 1, base + 0x2000, base + 0x1000));
    // Kicks on the refused ring must not make the device read anything.
    expect_kicks_ignored(*fe, 0, 1, "a ring with bad addresses was started");
  }
  expect_next_frontend_works(8001);
}

TEST_F(FrontendTest, MessagesWithBadSizesOrFields) {
  start();
  testing::GuestRam ram(1 << 20);
  const auto base = reinterpret_cast<uint64_t>(ram.data());
  const int ram_fd = ram.fd();
  struct Case {
    const char* what;
    uint32_t request;
    std::vector<uint8_t> payload;
    std::vector<int> fds;
  };
  const std::vector<uint8_t> junk(100, 0x5A);
  const std::vector<Case> cases = {
      {"SET_FEATURES with 4 bytes", req::kSetFeatures, {1, 2, 3, 4}, {}},
      {"SET_FEATURES with 100 bytes", req::kSetFeatures, junk, {}},
      {"SET_VRING_NUM for queue 200", req::kSetVringNum, encode_vring_state(200, 64), {}},
      {"SET_VRING_NUM of 0", req::kSetVringNum, encode_vring_state(0, 0), {}},
      {"SET_VRING_NUM of 3 (not a power of two)", req::kSetVringNum, encode_vring_state(0, 3), {}},
      {"SET_VRING_NUM of 65536", req::kSetVringNum, encode_vring_state(1, 65536), {}},
      {"SET_VRING_BASE for queue 9", req::kSetVringBase, encode_vring_state(9, 0), {}},
      {"SET_VRING_ADDR 12 bytes short", req::kSetVringAddr, std::vector<uint8_t>(28, 0), {}},
      {"SET_MEM_TABLE with 0 regions", req::kSetMemTable, encode_mem_table(0, {}), {}},
      {"SET_MEM_TABLE with 9 regions", req::kSetMemTable,
       encode_mem_table(9, std::vector<MemoryRegion>(9, MemoryRegion{0x100000, 4096, base, 0})),
       std::vector<int>(8, ram_fd)},
      {"SET_MEM_TABLE claiming 2 regions, carrying 1",
       req::kSetMemTable,
       encode_mem_table(2, {MemoryRegion{0x100000, 4096, base, 0}}),
       {ram_fd}},
      {"SET_MEM_TABLE without its fd",
       req::kSetMemTable,
       encode_mem_table(1, {MemoryRegion{0x100000, 4096, base, 0}}),
       {}},
      {"SET_MEM_TABLE region larger than its memfd",
       req::kSetMemTable,
       encode_mem_table(1, {MemoryRegion{0x100000, 1ULL << 40, base, 0}}),
       {ram_fd}},
      {"SET_MEM_TABLE region with gpa + size wrapping",
       req::kSetMemTable,
       encode_mem_table(1, {MemoryRegion{~uint64_t{0} - 4095, 8192, base, 0}}),
       {ram_fd}},
      {"SET_MEM_TABLE mmap_offset past the file",
       req::kSetMemTable,
       encode_mem_table(1, {MemoryRegion{0x100000, 4096, base, 1ULL << 40}}),
       {ram_fd}},
      {"GET_CONFIG of 4000 bytes", req::kGetConfig, std::vector<uint8_t>(12 + 4000, 0), {}},
      {"SET_VRING_KICK for queue 5", req::kSetVringKick, encode_u64(5), {ram_fd}},
      {"SET_VRING_CALL with two fds", req::kSetVringCall, encode_u64(0), {ram_fd, ram_fd}},
      {"unknown request 0xFFFF", 0xFFFF, junk, {}},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.what);
    auto fe = raw_frontend();
    fe->set_owner();
    expect_refused(*fe, c.request, c.payload, c.what, c.fds);
    ASSERT_TRUE(daemon().running());
  }
  {
    // A header that promises more than the protocol allows, then nothing.
    auto fe = raw_frontend();
    const uint8_t header[12] = {1, 0, 0, 0, 1, 0, 0, 0, 0xff, 0xff, 0xff, 0x7f};
    ASSERT_EQ(::send(fe->socket_fd(), header, sizeof(header), MSG_NOSIGNAL), 12);
    auto reply = fe->receive_reply(Millis(500));
    EXPECT_FALSE(reply.has_value()) << "an oversize message was answered";
  }
  {
    // A message cut short by a disconnect.
    auto fe = raw_frontend();
    const uint8_t header[12] = {2, 0, 0, 0, 1, 0, 0, 0, 8, 0, 0, 0};
    ASSERT_EQ(::send(fe->socket_fd(), header, sizeof(header), MSG_NOSIGNAL), 12);
  }
  expect_next_frontend_works(8002);
}

TEST_F(FrontendTest, OutOfOrderMessagesWhileRunning) {
  start();
  {
    testing::GuestRam ram(1 << 20);
    auto fe = raw_frontend();
    // Ring queries before anything is set up.
    auto early = std::vector<uint8_t>(encode_vring_state(0, 0));
    fe->send_message(req::kGetVringBase, early);
    fe->receive_reply(Millis(300));
    ack(*fe, req::kSetVringEnable, encode_vring_state(1, 1));
    ack(*fe, req::kSetVringAddr, encode_vring_addr(0, 0, 0, 0));
    // RESET_OWNER (which forgets what was negotiated), then more messages.
    fe->send_message(req::kResetOwner, {});
    fe->send_message(req::kSetOwner, {});
    fe->send_message(req::kSetOwner, {});
    fe->send_message(req::kSetVringEnable, encode_vring_state(0, 1));
    fe->receive_reply(Millis(200));
    ASSERT_TRUE(daemon().running());
  }
  {
    // A running device whose memory table is replaced, then reset, mid-traffic.
    attach_guest();
    HostListener listener(daemon().uds_port_path(0, 8003));
    Stream s = guest().connect(8003, Millis(3000));
    ASSERT_TRUE(s.established());
    testing::GuestRam other(1 << 20);
    guest().frontend().send_message(req::kResetOwner, {});
    guest().frontend().send_message(req::kSetVringBase, encode_vring_state(1, 7));
    std::this_thread::sleep_for(Millis(100));
    ASSERT_TRUE(daemon().running());
    guest_.reset();  // its device was yanked away on purpose: no violation check
  }
  expect_next_frontend_works(8004);
}

// Descriptors sent where none belong (or more than needed) must be closed,
// and memory tables replaced many times must not pile up mappings or fds.
TEST_F(FrontendTest, DescriptorsAndMappingsDoNotLeak) {
  start();
  const size_t fds_idle = daemon().open_fds();
  const MemoryUse before = daemon().memory();
  {
    auto fe = raw_frontend();
    fe->set_owner();
    const size_t fds_connected = daemon().open_fds();
    std::vector<UniqueFd> eventfds;
    std::vector<int> raw_fds;
    for (int i = 0; i < 8; ++i) {
      eventfds.push_back(make_eventfd());
      raw_fds.push_back(eventfds.back().get());
    }
    for (int i = 0; i < 50; ++i) {
      fe->send_message(req::kGetFeatures, {}, raw_fds);  // 8 fds on a message that takes none
      fe->receive_reply(Millis(200));
      if (fe->backend_closed()) break;
    }
    EXPECT_LE(daemon().open_fds_settled(fds_connected + 1), fds_connected + 1)
        << "fds attached to GET_FEATURES were kept";
  }
  {
    testing::GuestRam ram(4 << 20);
    auto fe = raw_frontend();
    fe->set_owner();
    fe->set_features(testing::kVirtioFeatureVersion1 | testing::kVhostUserFeatureProtocolFeatures);
    const auto base = reinterpret_cast<uint64_t>(ram.data());
    std::vector<MemoryRegion> eight;
    for (uint64_t i = 0; i < 8; ++i)
      eight.push_back({0x100000 + i * 0x80000, 0x80000, base + i * 0x80000, i * 0x80000});
    const std::vector<int> fds(8, ram.fd());
    for (int i = 0; i < 200; ++i) {
      ASSERT_EQ(ack(*fe, req::kSetMemTable, encode_mem_table(8, eight), fds), uint64_t{0}) << "table " << i;
    }
    EXPECT_LE(daemon().open_fds(), fds_idle + 8 + 2) << "replaced memory tables left descriptors open";
  }
  EXPECT_LE(daemon().open_fds_settled(fds_idle + 1), fds_idle + 1) << "descriptors leaked after the front-end left";
  expect_memory_growth_bounded(before, "200 memory tables, 400 stray fds");
  expect_next_frontend_works(8005);
}

}  // namespace
}  // namespace vhost_vsock::hostile
