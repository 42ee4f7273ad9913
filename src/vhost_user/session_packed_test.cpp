// The session with VIRTIO_F_RING_PACKED negotiated: QEMU's ring state in
// SET/GET_VRING_BASE, the event suppression areas in SET_VRING_ADDR, and the
// layout following the features.
#include <endian.h>
#include <gtest/gtest.h>

#include <cstring>

#include "vhost_user/session.h"
#include "vhost_user/session_test_fixture.h"
#include "vhost_user/test_support.h"
#include "virtio/features.h"
#include "virtio/packed_queue.h"
#include "virtio/split_queue.h"

namespace vhost_vsock::vhost_user {
namespace {

using test::kUserBase;

class PackedSessionTest : public test::SessionTest {
 protected:
  // Negotiates the packed layout and starts ring `index` from `base`.
  base::UniqueFd start_packed_ring(uint32_t index, uint32_t base) {
    negotiate(true, true);
    set_single_region_table();
    base::UniqueFd kick = configure_ring(index, base);
    send(Request::kSetVringEnable, encode_vring_state({index, 1}));
    return kick;
  }

  // The driver's side: one writable descriptor with buffer id `id` at ring
  // position `position`, made available for the driver's wrap counter `wrap`.
  void make_available(uint32_t index, uint16_t position, uint16_t id, bool wrap) {
    uint8_t* desc = ram.host() + (test::ring_address(index).desc_user_addr - kUserBase) + 16 * size_t{position};
    const uint64_t addr = htole64(0x80000 + 0x100ULL * id);
    const uint32_t len = htole32(64);
    const uint16_t id_le = htole16(id);
    const uint16_t flags = htole16(static_cast<uint16_t>(2 | (wrap ? 1 << 7 : 1 << 15)));  // WRITE, AVAIL/USED
    std::memcpy(desc, &addr, 8);
    std::memcpy(desc + 8, &len, 4);
    std::memcpy(desc + 12, &id_le, 2);
    std::memcpy(desc + 14, &flags, 2);
  }

  uint32_t get_vring_base(uint32_t index) {
    auto replies = send(Request::kGetVringBase, encode_vring_state({index, 0}));
    EXPECT_EQ(replies.size(), 1u);
    if (replies.size() != 1) return 0;
    auto state = decode_vring_state(replies[0].payload);
    EXPECT_TRUE(state);
    return state ? state->num : 0;
  }
};

TEST_F(PackedSessionTest, RingRunsFromQemusInitialStateAndResumesFromTheStateItReports) {
  auto kick = start_packed_ring(0, virtio::PackedQueue::kInitialRingState);  // what QEMU 7.2 sends
  ASSERT_TRUE(session.ring_started(0));
  auto* queue = dynamic_cast<virtio::PackedQueue*>(device.queues[0]);
  ASSERT_NE(queue, nullptr);
  make_available(0, 0, 5, true);
  virtio::DescriptorChain chain;
  ASSERT_EQ(queue->pop(chain), virtio::PopStatus::kChain);
  EXPECT_EQ(chain.id(), 5);
  queue->add_used(chain.id(), 0);
  queue->notify();
  EXPECT_EQ(test::drain_eventfd(call_fds[0].get()), 1u);

  // Both positions at 1, both wrap counters still 1.
  EXPECT_EQ(get_vring_base(0), 0x80018001u);
  EXPECT_FALSE(session.ring_started(0));
  // QEMU gives the state back when the ring (or a new daemon) starts again.
  EXPECT_EQ(send_acked(Request::kSetVringBase, encode_vring_state({0, 0x80018001})), 0u);
  base::UniqueFd new_kick = send_eventfd(Request::kSetVringKick, 0);
  ASSERT_TRUE(session.ring_started(0));
  queue = dynamic_cast<virtio::PackedQueue*>(device.queues[0]);
  ASSERT_NE(queue, nullptr);
  EXPECT_EQ(queue->pop(chain), virtio::PopStatus::kEmpty) << "position 0 was consumed before the stop";
  make_available(0, 1, 6, true);
  ASSERT_EQ(queue->pop(chain), virtio::PopStatus::kChain);
  EXPECT_EQ(chain.id(), 6);
}

TEST_F(PackedSessionTest, RingStateOutsideTheRingIsRefused) {
  negotiate(true, true);
  EXPECT_EQ(send_acked(Request::kSetVringNum, encode_vring_state({0, test::kRingSize})), 0u);
  EXPECT_NE(send_acked(Request::kSetVringBase, encode_vring_state({0, 0x80008008})), 0u);  // avail at 8 of 8
  EXPECT_NE(send_acked(Request::kSetVringBase, encode_vring_state({0, 0x80088000})), 0u);  // used at 8 of 8
  EXPECT_EQ(send_acked(Request::kSetVringBase, encode_vring_state({0, 0x00078007})), 0u);
}

TEST_F(PackedSessionTest, LayoutFollowsTheFeaturesAndTheCallFdFollowsTheLayout) {
  auto kick = start_ring(0);  // split
  ASSERT_NE(dynamic_cast<virtio::SplitQueue*>(device.queues[0]), nullptr);
  device.events.clear();
  EXPECT_EQ(send_acked(Request::kSetFeatures, encode_u64(session.offered_features())), 0u);
  ASSERT_EQ(device.events.size(), 4u);
  EXPECT_EQ(device.events[0], "stopped 0");
  EXPECT_EQ(device.events[2], "started 0");
  auto* queue = dynamic_cast<virtio::PackedQueue*>(device.queues[0]);
  ASSERT_NE(queue, nullptr);
  EXPECT_EQ(queue->ring_state(), virtio::PackedQueue::kInitialRingState) << "a split base means nothing here";
  make_available(0, 0, 2, true);
  virtio::DescriptorChain chain;
  ASSERT_EQ(queue->pop(chain), virtio::PopStatus::kChain);
  queue->add_used(chain.id(), 0);
  queue->notify();
  EXPECT_EQ(test::drain_eventfd(call_fds[0].get()), 1u);
}

}  // namespace
}  // namespace vhost_vsock::vhost_user
