// The SessionTest fixture shared by the session unit tests: a Session with a
// FakeDevice and memfd guest RAM, driven message by message as a front-end would.
#pragma once

#include <endian.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <array>
#include <cstring>
#include <vector>

#include "vhost_user/session.h"
#include "vhost_user/test_support.h"
#include "virtio/features.h"

namespace vhost_vsock::vhost_user::test {

inline std::vector<Reply> parse_replies(const std::vector<uint8_t>& bytes) {
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

inline bool fd_is_open(int fd) {
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

  // Everything offered but the packed ring layout, unless `packed`.
  void negotiate(bool protocol_features, bool packed = false) {
    uint64_t features = session.offered_features();
    if (!protocol_features) features &= ~kFeatureProtocolFeatures;
    if (!packed) features &= ~virtio::kFeatureRingPacked;
    send(Request::kSetOwner);
    if (protocol_features) send(Request::kSetProtocolFeatures, encode_u64(kOfferedProtocolFeatures));
    send(Request::kSetFeatures, encode_u64(features));
  }

  uint64_t set_single_region_table() {
    std::vector<MemoryRegionDescription> regions = {{0, kRamSize, kUserBase, 0}};
    std::vector<base::UniqueFd> fds;
    fds.push_back(ram.dup_fd());
    return send_acked(Request::kSetMemTable, encode_memory_table(regions), std::move(fds));
  }

  // Sends `request` (SET_VRING_CALL or _KICK) for ring `index` with a new
  // eventfd attached, expecting ack 0; returns our copy of the eventfd.
  base::UniqueFd send_eventfd(Request request, uint32_t index) {
    base::UniqueFd sent = make_eventfd();
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
    EXPECT_EQ(send_acked(Request::kSetVringAddr, encode_vring_address(ring_address(index))), 0u);
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
    const VringAddress address = ring_address(index);
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
  GuestRam ram{kRamSize};
  std::array<base::UniqueFd, 2> call_fds;
  std::array<uint16_t, 2> next_avail_idx_{};
  Session::Outcome last_outcome = Session::Outcome::kContinue;
};

}  // namespace vhost_vsock::vhost_user::test
