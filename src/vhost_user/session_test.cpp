#include "vhost_user/session.h"

#include <endian.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstring>

#include "testing/captured_log.h"
#include "vhost_user/session_test_fixture.h"
#include "vhost_user/test_support.h"
#include "virtio/features.h"

namespace vhost_vsock::vhost_user {
namespace {

using test::fd_is_open;
using test::kRingSize;
using test::kUserBase;
using test::SessionTest;

TEST_F(SessionTest, OffersDeviceRingAndProtocolFeatures) {
  auto replies = send(Request::kGetFeatures);
  ASSERT_EQ(replies.size(), 1u);
  EXPECT_EQ(replies[0].header.flags, kFlagVersion | kFlagReply);
  uint64_t expected = test::kDeviceFeature | virtio::kFeatureVersion1 | virtio::kFeatureEventIdx |
                      virtio::kFeatureIndirectDesc | virtio::kFeatureNotifyOnEmpty | virtio::kFeatureRingPacked |
                      kFeatureProtocolFeatures;
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

TEST_F(SessionTest, SetFeaturesWithUnofferedBitsStopsTheRingsUntilAGoodOne) {
  testing::CapturedLog capture;
  auto kick = start_ring(0);
  ASSERT_TRUE(session.ring_started(0));
  const uint64_t split = session.offered_features() & ~virtio::kFeatureRingPacked;
  EXPECT_NE(send_acked(Request::kSetFeatures, encode_u64(split | (1ULL << 40))), 0u);
  EXPECT_FALSE(session.ring_started(0));
  EXPECT_EQ(capture.lines_containing("that were not offered"), 1u) << capture.text();
  // Nothing the front-end sets up afterwards starts a ring...
  send(Request::kSetVringEnable, encode_vring_state({0, 1}));
  base::UniqueFd new_kick = send_eventfd(Request::kSetVringKick, 0);
  EXPECT_FALSE(session.ring_started(0));
  // ...until it acks features we implement.
  EXPECT_EQ(send_acked(Request::kSetFeatures, encode_u64(split)), 0u);
  EXPECT_TRUE(session.ring_started(0));
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
  loop.run_once(std::chrono::milliseconds(0));  // edge-triggered: no new write, no kick
  EXPECT_EQ(device.kicks[0], kicks_before + 1);
  // The counter is never read back (a syscall per kick saved); the next
  // write is a new edge all the same.
  ASSERT_EQ(::write(kick.get(), &one, sizeof(one)), 8);
  loop.run_once(std::chrono::milliseconds(100));
  EXPECT_EQ(device.kicks[0], kicks_before + 2);
  EXPECT_EQ(test::drain_eventfd(kick.get()), 2u);
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
  EXPECT_NE(send_acked(Request::kSetVringBase, encode_vring_state({0, 0x10000})), 0u);  // packed state, split ring
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
  ::close(pipe_fds[1]);  // the kick fd hangs up: no writer is left
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
