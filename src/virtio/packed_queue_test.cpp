#include "virtio/packed_queue.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <vector>

#include "virtio/packed_queue_test_support.h"

namespace vhost_vsock::virtio::test {
namespace {

uint64_t data_addr(uint16_t id, uint16_t part) {
  return kPackedData + 0x40ULL * ((id * 3U + part) % 0x4000U);
}

// A chain of `length` descriptors for `id`: readable ones, then one writable.
std::vector<Buffer> chain_for(uint16_t id, uint16_t length) {
  std::vector<Buffer> buffers;
  for (uint16_t part = 0; part < length; ++part) {
    buffers.push_back({data_addr(id, part), 16U + part, part + 1 == length && length > 1});
  }
  return buffers;
}

class PackedQueueSizes : public PackedQueueTest, public ::testing::WithParamInterface<uint16_t> {};

// The driver fills what it can (chains of 1 to 3 descriptors, so chains cross
// the wrap), the device pops everything and completes it in reverse order,
// and the driver checks each used descriptor, until both wrap counters have
// flipped at least three times.
TEST_P(PackedQueueSizes, ChainsWrapAroundTheRingRepeatedly) {
  const uint16_t size = GetParam();
  start(size);
  std::vector<uint16_t> free_ids;
  for (uint16_t id = 0; id < size; ++id) free_ids.push_back(id);
  uint64_t descriptors_made_available = 0;
  uint32_t round = 0;
  while (descriptors_made_available < 3ULL * size + 5) {
    std::vector<uint16_t> added;
    for (int k = 0; k < 3; ++k) {
      const auto length = static_cast<uint16_t>(std::min<uint32_t>(1 + (round + k) % 3, ring_->free_descriptors()));
      if (length == 0 || free_ids.empty()) break;
      const uint16_t id = free_ids.back();
      free_ids.pop_back();
      ring_->add_chain(chain_for(id, length), id);
      descriptors_made_available += length;
      added.push_back(id);
    }
    ++round;
    std::vector<uint16_t> popped;
    for (uint16_t id : added) {
      ASSERT_EQ(queue_.pop(chain_), PopStatus::kChain) << "size " << size << " round " << round;
      ASSERT_EQ(chain_.id(), id);
      const size_t parts = chain_.readable().size() + chain_.writable().size();
      ASSERT_TRUE(parts >= 1 && parts <= 3);
      const std::vector<Buffer> expected = chain_for(id, static_cast<uint16_t>(parts));
      for (size_t i = 0; i < parts; ++i) {
        const iovec& got =
            i < chain_.readable().size() ? chain_.readable()[i] : chain_.writable()[i - chain_.readable().size()];
        ASSERT_EQ(got.iov_base, host_ + (expected[i].addr - kPackedBase));
        ASSERT_EQ(got.iov_len, expected[i].len);
      }
      popped.push_back(id);
    }
    ASSERT_EQ(queue_.pop(chain_), PopStatus::kEmpty);
    ASSERT_FALSE(queue_.has_available());
    std::reverse(popped.begin(), popped.end());
    for (uint16_t id : popped) queue_.add_used(id, id + 1U);
    queue_.notify();
    for (uint16_t id : popped) {
      auto used = ring_->take_used();
      ASSERT_TRUE(used.has_value()) << "size " << size << " round " << round;
      EXPECT_EQ(used->id, id);
      EXPECT_EQ(used->len, id + 1U);
      free_ids.push_back(used->id);
    }
    ASSERT_FALSE(ring_->take_used().has_value());
  }
  EXPECT_EQ(queue_.stats().invalid_chains, 0u);
  EXPECT_FALSE(queue_.broken());
  // The state QEMU reads back matches the driver's positions.
  const uint32_t state = queue_.ring_state();
  EXPECT_EQ(state & 0xffff, ring_->avail_off_wrap());
  EXPECT_EQ(state >> 16, ring_->used_off_wrap());
}

INSTANTIATE_TEST_SUITE_P(EveryPowerOfTwo, PackedQueueSizes,
                         ::testing::Values(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384,
                                           32768));

TEST_F(PackedQueueTest, ChainAcrossTheWrapKeepsItsBuffersInOrder) {
  start(4);
  ring_->add_chain({{kPackedData, 10}, {kPackedData + 0x100, 10}, {kPackedData + 0x200, 10}}, 0);
  ASSERT_EQ(queue_.pop(chain_), PopStatus::kChain);
  queue_.add_used(0, 0);
  queue_.notify();
  ASSERT_TRUE(ring_->take_used());
  // Starts at position 3: descriptors at 3 (wrap 1), then 0 and 1 (wrap 0).
  ring_->add_chain({{kPackedData + 0x1000, 7}, {kPackedData + 0x2000, 8}, {kPackedData + 0x3000, 9, true}}, 2);
  ASSERT_EQ(queue_.pop(chain_), PopStatus::kChain);
  EXPECT_EQ(chain_.id(), 2);
  ASSERT_EQ(chain_.readable().size(), 2u);
  ASSERT_EQ(chain_.writable().size(), 1u);
  EXPECT_EQ(chain_.readable()[0].iov_base, host_ + (kPackedData + 0x1000 - kPackedBase));
  EXPECT_EQ(chain_.readable()[1].iov_base, host_ + (kPackedData + 0x2000 - kPackedBase));
  EXPECT_EQ(chain_.writable()[0].iov_base, host_ + (kPackedData + 0x3000 - kPackedBase));
  EXPECT_EQ(chain_.readable_bytes(), 15u);
  EXPECT_EQ(chain_.writable_bytes(), 9u);
  queue_.add_used(2, 9);
  queue_.notify();
  auto used = ring_->take_used();
  ASSERT_TRUE(used);
  EXPECT_EQ(used->id, 2);
  EXPECT_EQ(used->len, 9u);
  EXPECT_EQ(queue_.ring_state(), 0x00020002u);  // both at position 2 with wrap counter 0
}

TEST_F(PackedQueueTest, IndirectTableIsWalkedInOrder) {
  start(8, kFeatureVersion1 | kFeatureRingPacked | kFeatureIndirectDesc);
  ring_->add_indirect(kTables, {{kPackedData, 44}, {kPackedData + 0x100, 8}, {kPackedData + 0x200, 64, true}}, 5,
                      kPackedNext);  // NEXT inside the table means nothing
  ASSERT_EQ(queue_.pop(chain_), PopStatus::kChain);
  EXPECT_EQ(chain_.id(), 5);
  EXPECT_EQ(chain_.readable().size(), 2u);
  EXPECT_EQ(chain_.readable_bytes(), 52u);
  EXPECT_EQ(chain_.writable_bytes(), 64u);
  EXPECT_EQ(queue_.stats().descriptors_walked, 4u);  // the ring descriptor and three entries
  queue_.add_used(5, 64);
  queue_.notify();
  auto used = ring_->take_used();
  ASSERT_TRUE(used);
  EXPECT_EQ(used->id, 5);
  EXPECT_EQ(ring_->used_pos(), 1);  // an indirect chain is one ring descriptor
}

TEST_F(PackedQueueTest, InvalidIndirectTablesAreReturnedAndTheRingStaysInStep) {
  start(8);
  ring_->add_indirect(kTables, {{kPackedData, 4}}, 1);
  expect_invalid(1);  // INDIRECT_DESC not negotiated
  queue_.set_features(kFeatureVersion1 | kFeatureRingPacked | kFeatureIndirectDesc);
  ring_->add_indirect(kTables, {{kPackedData, 4}}, 2, kPackedIndirect);
  expect_invalid(2);  // nested
  ring_->add_descriptors({{kTables, 16}, {kPackedData, 4}}, {kPackedIndirect | kPackedNext, 0}, 3);
  expect_invalid(3);  // INDIRECT with NEXT: both ring descriptors are consumed
  ring_->add_descriptors({{kTables, 24}}, {kPackedIndirect}, 4);
  expect_invalid(4);  // not a multiple of 16
  ring_->add_descriptors({{kTables, 16 * 9}}, {kPackedIndirect}, 5);
  expect_invalid(5);  // more entries than the queue size
  ring_->add_descriptors({{kPackedBase + kPackedMemSize - 8, 16}}, {kPackedIndirect}, 6);
  expect_invalid(6);  // outside guest memory
  ring_->add_chain({{kPackedData, 8}}, 7);
  ASSERT_EQ(queue_.pop(chain_), PopStatus::kChain);
  EXPECT_EQ(chain_.id(), 7);
}

TEST_F(PackedQueueTest, InvalidChainsAreReturnedWithLengthZero) {
  start(8);
  ring_->add_chain({{kPackedData, 8, true}, {kPackedData + 0x100, 8, false}}, 1);
  expect_invalid(1);  // readable after writable
  ring_->add_chain({{kPackedBase + kPackedMemSize - 4, 8}}, 2);
  expect_invalid(2);  // outside guest memory
  ring_->add_chain({{kPackedData, 8}}, 9);
  expect_invalid(9);  // buffer id not below the queue size
  ring_->add_chain({{kPackedData, 8}}, 3);
  ASSERT_EQ(queue_.pop(chain_), PopStatus::kChain);
  ring_->add_chain({{kPackedData, 8}}, 3);
  expect_invalid(3);  // id 3 is still in flight
  queue_.add_used(3, 1);
  queue_.notify();
  auto used = ring_->take_used();
  ASSERT_TRUE(used);
  EXPECT_EQ(used->len, 1u);
  EXPECT_EQ(queue_.stats().invalid_chains, 4u);
}

TEST_F(PackedQueueTest, CorruptRingsStopTheQueue) {
  start(4);
  // A chain whose head is available but whose second descriptor is not.
  ring_->add_descriptors({{kPackedData, 8}}, {kPackedNext}, 0);
  EXPECT_EQ(queue_.pop(chain_), PopStatus::kBroken);
  EXPECT_TRUE(queue_.broken());
  EXPECT_FALSE(queue_.has_available());

  start(4);
  // NEXT on every descriptor of the ring: a chain with no end.
  ring_->add_descriptors({{kPackedData, 8}, {kPackedData, 8}, {kPackedData, 8}, {kPackedData, 8}},
                         {kPackedNext, kPackedNext, kPackedNext, kPackedNext}, 0);
  EXPECT_EQ(queue_.pop(chain_), PopStatus::kBroken);
  // A new ring state from the front-end clears it.
  queue_.set_ring_state(PackedQueue::kInitialRingState);
  EXPECT_FALSE(queue_.broken());
  queue_.set_ring_state(0x80008004);  // position 4 in a ring of 4
  EXPECT_TRUE(queue_.broken());
}

TEST_F(PackedQueueTest, UsedDescriptorsArePublishedAsOneBatch) {
  start(8);
  for (uint16_t id = 0; id < 3; ++id) ring_->add_chain({{kPackedData, 8}, {kPackedData + 0x100, 8, true}}, id);
  for (int i = 0; i < 3; ++i) ASSERT_EQ(queue_.pop(chain_), PopStatus::kChain);
  queue_.add_used(2, 20);
  queue_.add_used(0, 0);
  EXPECT_FALSE(ring_->take_used()) << "the first used descriptor waits for the flush";
  queue_.add_used(1, 10);
  queue_.flush_used();
  for (uint16_t id : {2, 0, 1}) {
    auto used = ring_->take_used();
    ASSERT_TRUE(used);
    EXPECT_EQ(used->id, id);
  }
  EXPECT_FALSE(ring_->take_used());
  queue_.add_used(1, 0);  // not in flight any more: ignored
  queue_.flush_used();
  EXPECT_FALSE(ring_->take_used());
}

TEST_F(PackedQueueTest, UnpopGivesChainsBackInOrder) {
  start(8);
  ring_->add_chain({{kPackedData, 8}, {kPackedData + 0x100, 8}}, 4);
  ring_->add_chain({{kPackedData, 8}}, 6);
  ring_->add_chain({{kPackedData, 8}, {kPackedData, 8}, {kPackedData, 8, true}}, 1);
  for (int i = 0; i < 3; ++i) ASSERT_EQ(queue_.pop(chain_), PopStatus::kChain);
  queue_.unpop(2);
  ASSERT_EQ(queue_.pop(chain_), PopStatus::kChain);
  EXPECT_EQ(chain_.id(), 6);
  ASSERT_EQ(queue_.pop(chain_), PopStatus::kChain);
  EXPECT_EQ(chain_.id(), 1);
  EXPECT_EQ(chain_.writable_bytes(), 8u);
  queue_.unpop(5);  // clamped to the three popped
  ASSERT_EQ(queue_.pop(chain_), PopStatus::kChain);
  EXPECT_EQ(chain_.id(), 4);
}

TEST_F(PackedQueueTest, DriverEventSuppressionDecidesInterrupts) {
  start(8);
  auto complete = [&](uint16_t id) {
    ring_->add_chain({{kPackedData, 8}}, id);
    ASSERT_EQ(queue_.pop(chain_), PopStatus::kChain);
    queue_.add_used(id, 0);
    queue_.flush_used();
    ASSERT_TRUE(ring_->take_used());
  };
  ring_->set_driver_event(0, kEventDisable);
  complete(0);
  EXPECT_FALSE(queue_.should_notify());
  ring_->set_driver_event(0, kEventEnable);
  complete(1);
  EXPECT_TRUE(queue_.should_notify());
  EXPECT_FALSE(queue_.should_notify()) << "nothing new since the last decision";
  // DESC without EVENT_IDX negotiated: treated as ENABLE.
  ring_->set_driver_event(0x8000 | 6, kEventDesc);
  complete(2);
  EXPECT_TRUE(queue_.should_notify());
  EXPECT_EQ(queue_.stats().notifications_sent, 2u);
  EXPECT_EQ(queue_.stats().notifications_suppressed, 1u);
}

TEST_F(PackedQueueTest, EventIdxInterruptsWhenTheUsedDescriptorAtTheOffsetIsWritten) {
  start(4, kFeatureVersion1 | kFeatureRingPacked | kFeatureEventIdx);
  auto complete = [&](uint16_t id) {
    ring_->add_chain({{kPackedData, 8}}, id);
    ASSERT_EQ(queue_.pop(chain_), PopStatus::kChain);
    queue_.add_used(id, 0);
    queue_.flush_used();
    ASSERT_TRUE(ring_->take_used());
  };
  ring_->set_driver_event(0x8000 | 2, kEventDesc);  // at position 2, wrap 1
  complete(0);
  EXPECT_TRUE(queue_.should_notify()) << "the first decision has nothing to measure against";
  complete(1);  // wrote position 1
  EXPECT_FALSE(queue_.should_notify());
  complete(2);  // wrote position 2
  EXPECT_TRUE(queue_.should_notify());
  ring_->set_driver_event(1, kEventDesc);  // position 1 in the next lap (wrap 0)
  complete(3);                             // position 3, wrap 1
  EXPECT_FALSE(queue_.should_notify());
  complete(0);  // position 0, wrap 0
  EXPECT_FALSE(queue_.should_notify());
  complete(1);  // position 1, wrap 0
  EXPECT_TRUE(queue_.should_notify());
  // An offset past the ring is a driver bug: interrupt rather than hang it.
  ring_->set_driver_event(0x8000 | 9, kEventDesc);
  complete(2);
  EXPECT_TRUE(queue_.should_notify());
}

TEST_F(PackedQueueTest, DeviceEventSuppressionFollowsKickSuppression) {
  start(4);
  EXPECT_EQ(ring_->device_event_flags(), kEventEnable);
  queue_.disable_notifications();
  EXPECT_EQ(ring_->device_event_flags(), kEventDisable);
  queue_.enable_notifications();
  EXPECT_EQ(ring_->device_event_flags(), kEventEnable);

  start(4, kFeatureVersion1 | kFeatureRingPacked | kFeatureEventIdx);
  EXPECT_EQ(ring_->device_event_flags(), kEventDesc);
  EXPECT_EQ(ring_->device_event_off_wrap(), 0x8000);
  for (uint16_t id = 0; id < 2; ++id) ring_->add_chain({{kPackedData, 8}, {kPackedData, 8}}, id);
  queue_.disable_notifications();  // leaves the offset where it was
  for (int i = 0; i < 2; ++i) ASSERT_EQ(queue_.pop(chain_), PopStatus::kChain);
  EXPECT_EQ(ring_->device_event_off_wrap(), 0x8000);
  queue_.enable_notifications();  // kick me when you make position 0 (wrap 0) available
  EXPECT_EQ(ring_->device_event_flags(), kEventDesc);
  EXPECT_EQ(ring_->device_event_off_wrap(), 0);
}

TEST_F(PackedQueueTest, SuppressedNotificationsDisableKicksEvenWithEventIdx) {
  for (const uint64_t features :
       {kFeatureVersion1 | kFeatureRingPacked, kFeatureVersion1 | kFeatureRingPacked | kFeatureEventIdx}) {
    start(4, features);
    queue_.suppress_notifications();
    EXPECT_EQ(ring_->device_event_flags(), kEventDisable);
    // Published while kicks are off; enabling and re-checking must find it.
    ring_->add_chain({{kPackedData, 8}}, 0);
    queue_.enable_notifications();
    EXPECT_EQ(ring_->device_event_flags(), (features & kFeatureEventIdx) != 0 ? kEventDesc : kEventEnable);
    EXPECT_TRUE(queue_.has_available());
  }
}

TEST_F(PackedQueueTest, RingStateRoundTripsAndNotifyOnEmptyOverridesSuppression) {
  start(16, kFeatureVersion1 | kFeatureRingPacked | kFeatureNotifyOnEmpty);
  queue_.set_ring_state(0x00058007);  // avail at 7 wrap 1, used at 5 wrap 0
  EXPECT_EQ(queue_.ring_state(), 0x00058007u);
  queue_.set_ring_state(PackedQueue::kInitialRingState);
  ring_->set_driver_event(0, kEventDisable);
  ring_->add_chain({{kPackedData, 8}}, 0);
  ASSERT_EQ(queue_.pop(chain_), PopStatus::kChain);
  queue_.add_used(0, 0);
  queue_.flush_used();
  EXPECT_TRUE(queue_.should_notify()) << "out of buffers";
}

TEST_F(PackedQueueTest, ConfigureChecksSizeAlignmentAndBounds) {
  std::string error;
  EXPECT_FALSE(queue_.configure(memory_, 3, kPackedRing, kDriverEvent, kDeviceEvent, &error));
  EXPECT_FALSE(queue_.configure(memory_, 8, kPackedRing + 8, kDriverEvent, kDeviceEvent, &error));
  EXPECT_FALSE(queue_.configure(memory_, 8, kPackedRing, kDriverEvent + 2, kDeviceEvent, &error));
  EXPECT_FALSE(queue_.configure(memory_, 8, kPackedBase + kPackedMemSize - 64, kDriverEvent, kDeviceEvent, &error));
  EXPECT_FALSE(queue_.configure(memory_, 8, kPackedRing, kPackedBase + kPackedMemSize, kDeviceEvent, &error));
  EXPECT_NE(error.find("event suppression"), std::string::npos) << error;
  EXPECT_FALSE(queue_.configured());
  EXPECT_TRUE(queue_.configure(memory_, 8, kPackedRing, kDriverEvent, kDeviceEvent, &error)) << error;
}

}  // namespace
}  // namespace vhost_vsock::virtio::test
