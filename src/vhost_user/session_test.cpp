#include "vhost_user/session.h"

#include <endian.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstring>

#include "testing/captured_log.h"
#include "vhost_user/test_support.h"
#include "virtio/features.h"

namespace vhost_vsock::vhost_user {
namespace {

using test::FakeDevice;
using test::GuestRam;
using test::kRingSize;
using test::kUserBase;
using test::Reply;

std::vector<Reply> parse_replies(const std::vector<uint8_t>& bytes) {
  std::vector<Reply> replies;
  size_t offset = 0;
  while (offset + kHeaderSize <= bytes.size()) {
    Reply reply;
    reply.header = decode_header(std::span<const uint8_t, kHeaderSize>(bytes.data() + offset, kHeaderSize));
    offset += kHeaderSize;
    reply.payload.assign(bytes.begin() + static_cast<std::ptrdiff_t>(offset),
                         bytes.begin() + static_cast<std::ptrdiff_t>(offset + reply.header.size));
    offset += reply.header.size;
    replies.push_back(std::move(reply));
  }
  EXPECT_EQ(offset, bytes.size());
  return replies;
}

bool fd_is_open(int fd) {
  return ::fcntl(fd, F_GETFD) != -1;
}

class SessionTest : public ::testing::Test {
 protected:
  std::vector<Reply> send(Request request, std::vector<uint8_t> payload = {}, std::vector<base::UniqueFd> fds = {},
                          uint32_t flags = kFlagVersion) {
    Message message;
    message.header = MessageHeader{static_cast<uint32_t>(request), flags, static_cast<uint32_t>(payload.size())};
    message.payload = std::move(payload);
    message.fds = std::move(fds);
    std::vector<uint8_t> reply;
    last_outcome = session.handle(std::move(message), reply);
    return parse_replies(reply);
  }
  // Sends with NEED_REPLY and returns the REPLY_ACK value (requires REPLY_ACK negotiated).
  uint64_t send_acked(Request request, std::vector<uint8_t> payload = {}, std::vector<base::UniqueFd> fds = {}) {
    auto replies = send(request, std::move(payload), std::move(fds), kFlagVersion | kFlagNeedReply);
    EXPECT_EQ(replies.size(), 1u);
    if (replies.size() != 1) return ~0ULL;
    EXPECT_EQ(replies[0].header.request, static_cast<uint32_t>(request));
    return decode_u64(replies[0].payload).value_or(~0ULL);
  }

  void negotiate(bool protocol_features) {
    uint64_t features = session.offered_features();
    if (!protocol_features) features &= ~kFeatureProtocolFeatures;
    send(Request::kSetOwner);
    if (protocol_features) send(Request::kSetProtocolFeatures, encode_u64(kOfferedProtocolFeatures));
    send(Request::kSetFeatures, encode_u64(features));
  }

  uint64_t set_single_region_table() {
    std::vector<MemoryRegionDescription> regions = {{0, test::kRamSize, kUserBase, 0}};
    std::vector<base::UniqueFd> fds;
    fds.push_back(ram.dup_fd());
    return send_acked(Request::kSetMemTable, encode_memory_table(regions), std::move(fds));
  }

  // Sends `request` (SET_VRING_CALL or _KICK) for ring `index` with a new
  // eventfd attached, expecting ack 0; returns our copy of the eventfd.
  base::UniqueFd send_eventfd(Request request, uint32_t index) {
    base::UniqueFd sent = test::make_eventfd();
    base::UniqueFd ours(::dup(sent.get()));
    std::vector<base::UniqueFd> message;
    message.push_back(std::move(sent));
    EXPECT_EQ(send_acked(request, encode_u64(index), std::move(message)), 0u);
    return ours;
  }

  // Sends SET_VRING_CALL with a new eventfd; returns our copy of it.
  base::UniqueFd send_call_fd(uint32_t index) { return send_eventfd(Request::kSetVringCall, index); }

  // Everything but enable; returns the write side of the kick eventfd.
  base::UniqueFd configure_ring(uint32_t index, uint32_t base = 0, bool with_call = true) {
    EXPECT_EQ(send_acked(Request::kSetVringNum, encode_vring_state({index, kRingSize})), 0u);
    EXPECT_EQ(send_acked(Request::kSetVringBase, encode_vring_state({index, base})), 0u);
    EXPECT_EQ(send_acked(Request::kSetVringAddr, encode_vring_address(test::ring_address(index))), 0u);
    if (with_call) call_fds[index] = send_call_fd(index);
    return send_eventfd(Request::kSetVringKick, index);  // the kick fd's write side
  }

  // Negotiates (with protocol features), sets the memory table, configures
  // ring `index` and enables it; returns the write side of its kick eventfd.
  base::UniqueFd start_ring(uint32_t index, uint32_t base = 0, bool with_call = true) {
    negotiate(true);
    set_single_region_table();
    base::UniqueFd kick = configure_ring(index, base, with_call);
    send(Request::kSetVringEnable, encode_vring_state({index, 1}));
    return kick;
  }

  // Plays driver and device for one chain on a started ring: makes a chain
  // (one writable descriptor) available, pops it, completes it, notifies.
  void complete_one_chain(uint32_t index) {
    virtio::Queue* queue = device.queues.at(index);
    ASSERT_NE(queue, nullptr);
    const VringAddress address = test::ring_address(index);
    uint8_t* desc = ram.host() + (address.desc_user_addr - kUserBase);
    uint8_t* avail = ram.host() + (address.avail_user_addr - kUserBase);
    const uint16_t avail_idx = next_avail_idx_[index]++;
    const uint16_t head = avail_idx % kRingSize;
    const uint64_t buffer = htole64(0x80000 + 0x100ULL * head);
    const uint32_t length = htole32(64);
    const uint16_t flags = htole16(2);  // VIRTQ_DESC_F_WRITE
    std::memcpy(desc + 16 * head, &buffer, 8);
    std::memcpy(desc + 16 * head + 8, &length, 4);
    std::memcpy(desc + 16 * head + 12, &flags, 2);
    const uint16_t head_le = htole16(head);
    const uint16_t idx_le = htole16(static_cast<uint16_t>(avail_idx + 1));
    std::memcpy(avail + 4 + 2 * head, &head_le, 2);
    std::memcpy(avail + 2, &idx_le, 2);
    virtio::DescriptorChain chain;
    ASSERT_EQ(queue->pop(chain), virtio::PopStatus::kChain);
    queue->add_used(chain.id(), 0);
    queue->notify();
  }

  base::EventLoop loop;
  FakeDevice device;
  ServerStats stats;
  Session session{loop, device, stats, "session-test"};
  GuestRam ram{test::kRamSize};
  std::array<base::UniqueFd, 2> call_fds;
  std::array<uint16_t, 2> next_avail_idx_{};
  Session::Outcome last_outcome = Session::Outcome::kContinue;
};

TEST_F(SessionTest, OffersDeviceRingAndProtocolFeatures) {
  auto replies = send(Request::kGetFeatures);
  ASSERT_EQ(replies.size(), 1u);
  EXPECT_EQ(replies[0].header.flags, kFlagVersion | kFlagReply);
  uint64_t expected = test::kDeviceFeature | virtio::kFeatureVersion1 | virtio::kFeatureEventIdx |
                      virtio::kFeatureIndirectDesc | virtio::kFeatureNotifyOnEmpty | kFeatureProtocolFeatures;
  EXPECT_EQ(decode_u64(replies[0].payload), expected);

  replies = send(Request::kGetProtocolFeatures);
  ASSERT_EQ(replies.size(), 1u);
  EXPECT_EQ(decode_u64(replies[0].payload), (1ULL << 0) | (1ULL << 3) | (1ULL << 9));

  replies = send(Request::kGetQueueNum);
  ASSERT_EQ(replies.size(), 1u);
  EXPECT_EQ(decode_u64(replies[0].payload), 2u);
}

TEST_F(SessionTest, SetFeaturesNotifiesDeviceAndRejectsUnofferedBits) {
  send(Request::kSetProtocolFeatures, encode_u64(kProtocolFeatureReplyAck));
  EXPECT_NE(send_acked(Request::kSetFeatures, encode_u64(session.offered_features() | (1ULL << 40))), 0u);
  EXPECT_EQ(device.count("features"), 0u);
  EXPECT_EQ(session.acked_features(), 0u);

  uint64_t features = virtio::kFeatureVersion1 | kFeatureProtocolFeatures;
  EXPECT_EQ(send_acked(Request::kSetFeatures, encode_u64(features)), 0u);
  EXPECT_EQ(device.negotiated, features);
  EXPECT_EQ(session.acked_features(), features);
  EXPECT_NE(send_acked(Request::kSetProtocolFeatures, encode_u64(1ULL << 5)), 0u);  // SLAVE_REQ not offered
}

TEST_F(SessionTest, SetFeaturesWithUnofferedRingPackedStopsTheRingsAndSaysWhy) {
  testing::CapturedLog capture;
  auto kick = start_ring(0);
  ASSERT_TRUE(session.ring_started(0));
  // QEMU 7.2 with packed=on forwards bit 34 although we did not offer it.
  const uint64_t packed = session.offered_features() | virtio::kFeatureRingPacked;
  EXPECT_NE(send_acked(Request::kSetFeatures, encode_u64(packed)), 0u);
  EXPECT_FALSE(session.ring_started(0));
  EXPECT_EQ(capture.lines_containing("acks VIRTIO_F_RING_PACKED (bit 34)"), 1u) << capture.text();
  // Nothing the front-end sets up afterwards starts a ring...
  send(Request::kSetVringEnable, encode_vring_state({0, 1}));
  base::UniqueFd new_kick = send_eventfd(Request::kSetVringKick, 0);
  EXPECT_FALSE(session.ring_started(0));
  // ...until it acks features we implement.
  EXPECT_EQ(send_acked(Request::kSetFeatures, encode_u64(session.offered_features())), 0u);
  EXPECT_TRUE(session.ring_started(0));
  EXPECT_NE(send_acked(Request::kSetFeatures, encode_u64(session.offered_features() | (1ULL << 40))), 0u);
  EXPECT_FALSE(session.ring_started(0));
  EXPECT_EQ(capture.lines_containing("that were not offered"), 1u) << capture.text();
}

TEST_F(SessionTest, ReplyAckOnlyWhenNegotiatedAndRequested) {
  // NEED_REPLY before REPLY_ACK is negotiated: no reply.
  EXPECT_TRUE(send(Request::kSetOwner, {}, {}, kFlagVersion | kFlagNeedReply).empty());
  send(Request::kSetProtocolFeatures, encode_u64(kOfferedProtocolFeatures));
  EXPECT_EQ(session.acked_protocol_features(), kOfferedProtocolFeatures);
  EXPECT_TRUE(send(Request::kSetOwner).empty());  // not requested
  EXPECT_EQ(send_acked(Request::kSetOwner), 0u);
  EXPECT_NE(send_acked(Request::kSetVringNum, encode_vring_state({0, 100})), 0u);  // not a power of two
  EXPECT_NE(send_acked(static_cast<Request>(99)), 0u);                             // unknown request
  EXPECT_NE(send_acked(Request::kSetConfig, encode_config_access(0, 8, 0, std::vector<uint8_t>(8))), 0u);
  EXPECT_NE(send_acked(Request::kSetLogBase, encode_u64(0)), 0u);
  // A request with its own reply gets that reply, not an extra ack.
  auto replies = send(Request::kGetFeatures, {}, {}, kFlagVersion | kFlagNeedReply);
  ASSERT_EQ(replies.size(), 1u);
  EXPECT_EQ(decode_u64(replies[0].payload), session.offered_features());
  EXPECT_EQ(stats.protocol_errors, 4u);
}

TEST_F(SessionTest, GetConfigReturnsTheRequestedBytes) {
  send(Request::kSetProtocolFeatures, encode_u64(kOfferedProtocolFeatures));
  device.config = {0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88};
  auto replies = send(Request::kGetConfig, encode_config_access(0, 8, 0, std::vector<uint8_t>(8)));
  ASSERT_EQ(replies.size(), 1u);
  ASSERT_EQ(replies[0].header.size, kConfigHeaderSize + 8);
  EXPECT_EQ(std::vector<uint8_t>(replies[0].payload.begin() + kConfigHeaderSize, replies[0].payload.end()),
            device.config);

  replies = send(Request::kGetConfig, encode_config_access(6, 2, 0, std::vector<uint8_t>(2)));
  ASSERT_EQ(replies.size(), 1u);
  ASSERT_EQ(replies[0].payload.size(), kConfigHeaderSize + 2);
  EXPECT_EQ(replies[0].payload[kConfigHeaderSize], 0x77);
  EXPECT_EQ(replies[0].payload[kConfigHeaderSize + 1], 0x88);

  // Past the end, or an offset that would wrap: a zero-size reply, no crash.
  for (uint32_t offset : {4u, 0xfffffffcu}) {
    replies = send(Request::kGetConfig, encode_config_access(offset, 8, 0, std::vector<uint8_t>(8)));
    ASSERT_EQ(replies.size(), 1u);
    EXPECT_EQ(replies[0].header.size, 0u);
  }
  EXPECT_EQ(last_outcome, Session::Outcome::kContinue);
}

TEST_F(SessionTest, MemoryTableWithTwoRegionsHonoursMmapOffsets) {
  send(Request::kSetProtocolFeatures, encode_u64(kOfferedProtocolFeatures));
  ram.host()[0x1000 + 0x10] = 0xa1;   // region 0 starts 4 KiB into the file
  ram.host()[0x40000 + 0x20] = 0xb2;  // region 1 starts 256 KiB into the file
  std::vector<MemoryRegionDescription> regions = {{0x0, 0x10000, 0x7f0000000000, 0x1000},
                                                  {0x100000, 0x20000, 0x7f0000800000, 0x40000}};
  std::vector<base::UniqueFd> fds;
  fds.push_back(ram.dup_fd());
  fds.push_back(ram.dup_fd());
  ASSERT_EQ(send_acked(Request::kSetMemTable, encode_memory_table(regions), std::move(fds)), 0u);
  const auto& memory = session.guest_memory();
  ASSERT_TRUE(memory);
  EXPECT_EQ(memory->region_count(), 2u);
  uint8_t* first = memory->translate(0x10, 1);
  uint8_t* second = memory->translate(0x100020, 1);
  ASSERT_NE(first, nullptr);
  ASSERT_NE(second, nullptr);
  EXPECT_EQ(*first, 0xa1);
  EXPECT_EQ(*second, 0xb2);
  EXPECT_EQ(memory->user_to_guest(0x7f0000800020, 1), 0x100020u);
  // Writes through our mapping reach the front-end's memory.
  *second = 0xc3;
  EXPECT_EQ(ram.host()[0x40000 + 0x20], 0xc3);
}

TEST_F(SessionTest, MemoryTableRejectsFdMismatchAndRegionsPastTheFile) {
  send(Request::kSetProtocolFeatures, encode_u64(kOfferedProtocolFeatures));
  std::vector<MemoryRegionDescription> two = {{0x0, 0x1000, kUserBase, 0}, {0x100000, 0x1000, kUserBase + 0x100000, 0}};
  std::vector<base::UniqueFd> one_fd;
  one_fd.push_back(ram.dup_fd());
  int fd_number = one_fd[0].get();
  EXPECT_NE(send_acked(Request::kSetMemTable, encode_memory_table(two), std::move(one_fd)), 0u);
  EXPECT_FALSE(fd_is_open(fd_number));  // the unused fd was closed

  std::vector<MemoryRegionDescription> too_long = {{0x0, test::kRamSize, kUserBase, 0x1000}};
  std::vector<base::UniqueFd> fds;
  fds.push_back(ram.dup_fd());
  EXPECT_NE(send_acked(Request::kSetMemTable, encode_memory_table(too_long), std::move(fds)), 0u);
  EXPECT_FALSE(session.guest_memory());
}

TEST_F(SessionTest, RingStartsOnlyAfterEnableWhenProtocolFeaturesNegotiated) {
  negotiate(true);
  ASSERT_EQ(set_single_region_table(), 0u);
  auto kick = configure_ring(0);
  EXPECT_EQ(device.count("started 0"), 0u);
  EXPECT_FALSE(session.ring_started(0));

  EXPECT_EQ(send_acked(Request::kSetVringEnable, encode_vring_state({0, 1})), 0u);
  ASSERT_TRUE(session.ring_started(0));
  ASSERT_GE(device.events.size(), 2u);
  // Started, then treated as kicked once for buffers posted before the kick fd was watched.
  EXPECT_EQ(device.events[device.events.size() - 2], "started 0");
  EXPECT_EQ(device.events.back(), "kicked 0");
  ASSERT_NE(device.queues[0], nullptr);
  EXPECT_EQ(device.queues[0]->size(), kRingSize);

  EXPECT_EQ(send_acked(Request::kSetVringEnable, encode_vring_state({0, 0})), 0u);
  EXPECT_FALSE(session.ring_started(0));
  EXPECT_EQ(device.events.back(), "stopped 0");
  EXPECT_NE(send_acked(Request::kSetVringEnable, encode_vring_state({0, 2})), 0u);
}

TEST_F(SessionTest, RingStartsOnKickWithoutProtocolFeatures) {
  negotiate(false);
  ASSERT_EQ(session.acked_features() & kFeatureProtocolFeatures, 0u);
  // REPLY_ACK is unavailable here, so use plain sends.
  std::vector<MemoryRegionDescription> regions = {{0, test::kRamSize, kUserBase, 0}};
  std::vector<base::UniqueFd> fds;
  fds.push_back(ram.dup_fd());
  send(Request::kSetMemTable, encode_memory_table(regions), std::move(fds));
  send(Request::kSetVringNum, encode_vring_state({1, kRingSize}));
  send(Request::kSetVringAddr, encode_vring_address(test::ring_address(1)));
  EXPECT_FALSE(session.ring_started(1));
  std::vector<base::UniqueFd> kick;
  kick.push_back(test::make_eventfd());
  send(Request::kSetVringKick, encode_u64(1), std::move(kick));
  EXPECT_TRUE(session.ring_started(1));
  EXPECT_EQ(device.count("started 1"), 1u);
}

TEST_F(SessionTest, KickEventfdReachesTheDevice) {
  auto kick = start_ring(0);
  int kicks_before = device.kicks[0];
  uint64_t one = 1;
  ASSERT_EQ(::write(kick.get(), &one, sizeof(one)), 8);
  loop.run_once(std::chrono::milliseconds(100));
  EXPECT_EQ(device.kicks[0], kicks_before + 1);
  EXPECT_EQ(test::drain_eventfd(kick.get()), 0u);  // the server drained it
}

TEST_F(SessionTest, QueueNotifySignalsTheCallFdSetBeforeTheRingStarted) {
  auto kick = start_ring(0);
  ASSERT_NE(device.queues[0], nullptr);
  complete_one_chain(0);
  EXPECT_EQ(test::drain_eventfd(call_fds[0].get()), 1u);
  device.queues[0]->notify();  // nothing new: no second interrupt
  EXPECT_EQ(test::drain_eventfd(call_fds[0].get()), 0u);
  EXPECT_EQ(device.queues[0]->stats().notifications_sent, 1u);
}

TEST_F(SessionTest, CallFdArrivingAfterTheRingStartedIsUsed) {
  auto kick = start_ring(0, 0, /*with_call=*/false);
  ASSERT_NE(device.queues[0], nullptr);
  complete_one_chain(0);  // no call fd yet: counted, nothing written, no crash
  EXPECT_EQ(device.queues[0]->stats().notifications_without_fd, 1u);
  base::UniqueFd call = send_call_fd(0);
  complete_one_chain(0);
  EXPECT_EQ(test::drain_eventfd(call.get()), 1u);
}

TEST_F(SessionTest, ReplacedCallFdIsUsedAndNoFdStopsSignalling) {
  auto kick = start_ring(0);
  ASSERT_NE(device.queues[0], nullptr);
  base::UniqueFd replacement = send_call_fd(0);
  complete_one_chain(0);
  EXPECT_EQ(test::drain_eventfd(call_fds[0].get()), 0u);
  EXPECT_EQ(test::drain_eventfd(replacement.get()), 1u);
  // SET_VRING_CALL with the no-fd flag clears the fd.
  EXPECT_EQ(send_acked(Request::kSetVringCall, encode_u64(0 | kVringNoFdFlag)), 0u);
  complete_one_chain(0);
  EXPECT_EQ(test::drain_eventfd(replacement.get()), 0u);
  EXPECT_EQ(device.queues[0]->stats().notifications_sent, 1u);
  EXPECT_EQ(device.queues[0]->stats().notifications_without_fd, 1u);
}

TEST_F(SessionTest, CallFdSurvivesARingStopAndRestart) {
  auto kick = start_ring(0);
  send(Request::kGetVringBase, encode_vring_state({0, 0}));
  ASSERT_EQ(device.queues[0], nullptr);
  // The front-end restarts the ring with a new kick fd only, as QEMU does.
  base::UniqueFd new_kick = send_eventfd(Request::kSetVringKick, 0);
  ASSERT_NE(device.queues[0], nullptr);
  complete_one_chain(0);
  EXPECT_EQ(test::drain_eventfd(call_fds[0].get()), 1u);
}

TEST_F(SessionTest, ShutdownLogsTheStatsOfEachRingSetUp) {
  testing::CapturedLog capture;
  auto kick = start_ring(0);
  complete_one_chain(0);
  session.shutdown();
  const std::string log = capture.text();
  EXPECT_NE(log.find("ring 0 queue stats: chains_popped=1 descriptors_walked=1 invalid_chains=0 "
                     "notifications sent=1 suppressed=0 without_fd=0 call_fd_errors=0"),
            std::string::npos)
      << log;
  EXPECT_EQ(log.find("ring 1 queue stats"), std::string::npos) << "ring 1 was never set up";
}

TEST_F(SessionTest, GetVringBaseStopsTheRingAndReturnsItsIndex) {
  auto kick = start_ring(1, 5);
  ASSERT_TRUE(session.ring_started(1));
  auto replies = send(Request::kGetVringBase, encode_vring_state({1, 0}));
  ASSERT_EQ(replies.size(), 1u);
  EXPECT_EQ(replies[0].header.request, static_cast<uint32_t>(Request::kGetVringBase));
  auto state = decode_vring_state(replies[0].payload);
  ASSERT_TRUE(state);
  EXPECT_EQ(state->index, 1u);
  EXPECT_EQ(state->num, 5u);
  EXPECT_FALSE(session.ring_started(1));
  EXPECT_EQ(device.events.back(), "stopped 1");
  EXPECT_EQ(device.queues[1], nullptr);

  // A stopped ring needs a new kick fd before it runs again.
  send(Request::kSetVringEnable, encode_vring_state({1, 1}));
  EXPECT_FALSE(session.ring_started(1));
  std::vector<base::UniqueFd> fds;
  fds.push_back(test::make_eventfd());
  EXPECT_EQ(send_acked(Request::kSetVringKick, encode_u64(1), std::move(fds)), 0u);
  EXPECT_TRUE(session.ring_started(1));
  EXPECT_EQ(device.count("started 1"), 2u);
}

TEST_F(SessionTest, GetVringBaseForAMissingRingDropsTheFrontend) {
  send(Request::kGetVringBase, encode_vring_state({7, 0}));
  EXPECT_EQ(last_outcome, Session::Outcome::kDisconnect);
}

TEST_F(SessionTest, BadVringAddressIsRejectedWithoutCrashing) {
  negotiate(true);
  set_single_region_table();
  send_acked(Request::kSetVringNum, encode_vring_state({0, kRingSize}));
  VringAddress outside = test::ring_address(0);
  outside.used_user_addr = kUserBase + test::kRamSize - 8;  // straddles the end of memory
  EXPECT_NE(send_acked(Request::kSetVringAddr, encode_vring_address(outside)), 0u);
  outside.desc_user_addr = 0x1000;  // not a front-end address at all
  EXPECT_NE(send_acked(Request::kSetVringAddr, encode_vring_address(outside)), 0u);
  EXPECT_NE(send_acked(Request::kSetVringAddr, std::vector<uint8_t>(12)), 0u);  // truncated payload
  VringAddress bad_index = test::ring_address(0);
  bad_index.index = 200;
  EXPECT_NE(send_acked(Request::kSetVringAddr, encode_vring_address(bad_index)), 0u);
  EXPECT_EQ(last_outcome, Session::Outcome::kContinue);
}

TEST_F(SessionTest, AddressesCheckedAtStartWhenSetBeforeTheMemoryTable) {
  negotiate(true);
  send_acked(Request::kSetVringNum, encode_vring_state({0, kRingSize}));
  VringAddress outside = test::ring_address(0);
  outside.avail_user_addr = 0x42;
  EXPECT_EQ(send_acked(Request::kSetVringAddr, encode_vring_address(outside)), 0u);  // cannot check yet
  base::UniqueFd err = test::make_eventfd();
  base::UniqueFd err_reader(::dup(err.get()));
  std::vector<base::UniqueFd> err_message;
  err_message.push_back(std::move(err));
  send_acked(Request::kSetVringErr, encode_u64(0), std::move(err_message));
  std::vector<base::UniqueFd> kick;
  kick.push_back(test::make_eventfd());
  send_acked(Request::kSetVringKick, encode_u64(0), std::move(kick));
  send_acked(Request::kSetVringEnable, encode_vring_state({0, 1}));
  uint64_t errors_before = stats.protocol_errors;
  set_single_region_table();
  EXPECT_FALSE(session.ring_started(0));
  EXPECT_GT(stats.protocol_errors, errors_before);
  EXPECT_EQ(test::drain_eventfd(err_reader.get()), 1u);  // the front-end hears about it
}

TEST_F(SessionTest, NewMemoryTableRestartsRunningRings) {
  auto kick = start_ring(0, 3);
  device.events.clear();
  ASSERT_EQ(set_single_region_table(), 0u);
  ASSERT_GE(device.events.size(), 2u);
  EXPECT_EQ(device.events[0], "stopped 0");
  EXPECT_EQ(device.events[1], "started 0");
  EXPECT_TRUE(session.ring_started(0));
  // The session's rings are split queues; the device sees only the interface.
  const auto* split = dynamic_cast<const virtio::SplitQueue*>(device.queues[0]);
  ASSERT_NE(split, nullptr);
  EXPECT_EQ(split->next_avail(), 3u);  // position kept across the remap
}

TEST_F(SessionTest, VringValidation) {
  negotiate(true);
  EXPECT_NE(send_acked(Request::kSetVringNum, encode_vring_state({0, 0})), 0u);
  EXPECT_NE(send_acked(Request::kSetVringNum, encode_vring_state({0, 65536})), 0u);
  EXPECT_NE(send_acked(Request::kSetVringNum, encode_vring_state({2, 8})), 0u);  // only rings 0 and 1
  device.max_size = 256;                                                         // the daemon's --queue-size
  EXPECT_NE(send_acked(Request::kSetVringNum, encode_vring_state({0, 512})), 0u);
  EXPECT_EQ(send_acked(Request::kSetVringNum, encode_vring_state({0, 256})), 0u);
  EXPECT_NE(send_acked(Request::kSetVringBase, encode_vring_state({0, 0x10000})), 0u);
  // Kick: no-fd (polling) unsupported, fd count must match the flag, reserved bits rejected.
  EXPECT_NE(send_acked(Request::kSetVringKick, encode_u64(kVringNoFdFlag)), 0u);
  EXPECT_NE(send_acked(Request::kSetVringKick, encode_u64(0)), 0u);
  std::vector<base::UniqueFd> fds;
  fds.push_back(test::make_eventfd());
  EXPECT_NE(send_acked(Request::kSetVringKick, encode_u64(1ULL << 20), std::move(fds)), 0u);
  EXPECT_EQ(last_outcome, Session::Outcome::kContinue);
}

TEST_F(SessionTest, UnexpectedFdsAreClosedAndTheRequestRejected) {
  negotiate(true);
  std::vector<base::UniqueFd> fds;
  fds.push_back(test::make_eventfd());
  int fd_number = fds[0].get();
  EXPECT_NE(send_acked(Request::kSetVringNum, encode_vring_state({0, 8}), std::move(fds)), 0u);
  EXPECT_FALSE(fd_is_open(fd_number));
}

TEST_F(SessionTest, KickFdAtEndOfFileStopsTheRing) {
  negotiate(true);
  set_single_region_table();
  configure_ring(0);
  int pipe_fds[2];
  ASSERT_EQ(::pipe2(pipe_fds, O_CLOEXEC), 0);
  std::vector<base::UniqueFd> fds;
  fds.emplace_back(pipe_fds[0]);
  send_acked(Request::kSetVringKick, encode_u64(0), std::move(fds));
  send(Request::kSetVringEnable, encode_vring_state({0, 1}));
  ASSERT_TRUE(session.ring_started(0));
  ::close(pipe_fds[1]);  // the kick fd now reads EOF forever
  loop.run_once(std::chrono::milliseconds(100));
  EXPECT_FALSE(session.ring_started(0));
  EXPECT_EQ(device.events.back(), "stopped 0");
  loop.run_once(std::chrono::milliseconds(0));  // and it is no longer watched
}

TEST_F(SessionTest, ResetOwnerStopsRingsAndForgetsState) {
  auto kick = start_ring(0);
  send(Request::kResetOwner);
  EXPECT_FALSE(session.ring_started(0));
  ASSERT_GE(device.events.size(), 2u);
  EXPECT_EQ(device.events[device.events.size() - 2], "stopped 0");
  EXPECT_EQ(device.events.back(), "disconnected");
  EXPECT_EQ(session.acked_features(), 0u);
  EXPECT_FALSE(session.guest_memory());
}

TEST_F(SessionTest, ShutdownStopsRingsBeforeTellingTheDevice) {
  negotiate(true);
  set_single_region_table();
  auto kick0 = configure_ring(0);
  auto kick1 = configure_ring(1);
  send(Request::kSetVringEnable, encode_vring_state({0, 1}));
  send(Request::kSetVringEnable, encode_vring_state({1, 1}));
  device.events.clear();
  session.shutdown();
  EXPECT_EQ(device.events, (std::vector<std::string>{"stopped 0", "stopped 1", "disconnected"}));
  session.shutdown();  // idempotent
  EXPECT_EQ(device.events.size(), 3u);
  // Messages after shutdown are refused.
  send(Request::kGetFeatures);
  EXPECT_EQ(last_outcome, Session::Outcome::kDisconnect);
}

}  // namespace
}  // namespace vhost_vsock::vhost_user
