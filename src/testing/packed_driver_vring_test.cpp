// The simulator's packed-ring driver, checked two ways: against a naive
// reading of the spec's layout (flags, ids, positions), and end to end
// against the daemon's PackedQueue over many laps at every ring size, so a
// wrap-counter slip on either side shows up as a mismatch.
#include "testing/packed_driver_vring.h"

#include <gtest/gtest.h>
#include <sys/eventfd.h>

#include <cstring>
#include <random>
#include <vector>

#include "memory/guest_memory.h"
#include "testing/driver_vring.h"
#include "virtio/features.h"
#include "virtio/packed_queue.h"

namespace vhost_vsock::testing {
namespace {

using Buffer = GuestRing::Buffer;

struct RawDesc {
  uint64_t addr;
  uint32_t len;
  uint16_t id;
  uint16_t flags;
};

RawDesc read_desc(const GuestRam& ram, uint64_t gpa) {
  RawDesc d{};
  std::memcpy(&d, ram.host(gpa, 16), 16);
  return d;
}
void write_desc(GuestRam& ram, uint64_t gpa, const RawDesc& d) {
  std::memcpy(ram.host(gpa, 16), &d, 16);
}
void write_u16(GuestRam& ram, uint64_t gpa, uint16_t v) {
  std::memcpy(ram.host(gpa, 2), &v, 2);
}
uint16_t read_u16(const GuestRam& ram, uint64_t gpa) {
  uint16_t v;
  std::memcpy(&v, ram.host(gpa, 2), 2);
  return v;
}

// A used descriptor for buffer `id` written at `position` in lap `wrap`.
void write_used(GuestRam& ram, const PackedDriverVring& ring, uint16_t position, bool wrap, uint16_t id, uint32_t len) {
  const uint16_t bits = wrap ? (kPackedDescFlagAvail | kPackedDescFlagUsed) : 0;
  write_desc(ram, ring.desc_gpa() + 16ULL * position, {0, len, id, bits});
}

TEST(PackedDriverVringTest, LayoutIsAlignedAndStartsAsQemuAndLinuxDo) {
  GuestRam ram(1 << 20);
  PackedDriverVring ring(ram, 256, true);
  EXPECT_TRUE(ring.packed());
  EXPECT_EQ(ring.desc_gpa() % 16, 0u);
  EXPECT_EQ(ring.driver_area_gpa() % 4, 0u);
  EXPECT_EQ(ring.device_area_gpa() % 4, 0u);
  EXPECT_TRUE(ram.contains(ring.desc_gpa(), 16 * 256));
  EXPECT_EQ(ring.initial_vring_base(), 0x80008000u);
  EXPECT_EQ(ring.avail_position(), 0x8000) << "position 0, avail wrap counter 1";
  EXPECT_EQ(ring.used_position(), 0x8000);
  EXPECT_EQ(ring.driver_event_flags(), kRingEventFlagsDesc) << "EVENT_IDX: interrupt at the first used position";
  EXPECT_EQ(ring.driver_event_off_wrap(), 0x8000);
  EXPECT_EQ(ring.free_descriptors(), 256);
  EXPECT_FALSE(ring.has_used()) << "a zeroed ring has nothing used in lap 1";

  PackedDriverVring plain(ram, 8, false);
  EXPECT_EQ(plain.driver_event_flags(), kRingEventFlagsEnable);
  EXPECT_THROW(PackedDriverVring(ram, 6, false), std::invalid_argument);
  EXPECT_THROW(PackedDriverVring(ram, 0, false), std::invalid_argument);
}

TEST(PackedDriverVringTest, ChainIsWrittenAsTheSpecSays) {
  GuestRam ram(1 << 20);
  PackedDriverVring ring(ram, 4, false);
  const uint64_t data = ram.alloc(4096);
  const Buffer three[] = {{data, 44, false}, {data + 44, 100, false}, {data + 144, 200, true}};
  const auto id = ring.add_chain(three);
  ASSERT_TRUE(id.has_value());
  EXPECT_EQ(ring.free_descriptors(), 1);
  for (uint16_t i = 0; i < 3; ++i) {
    const RawDesc d = read_desc(ram, ring.desc_gpa() + 16ULL * i);
    EXPECT_EQ(d.addr, three[i].gpa);
    EXPECT_EQ(d.len, three[i].len);
    EXPECT_EQ(d.id, *id) << "every descriptor carries the buffer id (the device reads the last)";
    EXPECT_EQ(d.flags & kPackedDescFlagAvail, kPackedDescFlagAvail) << "lap 1: AVAIL set";
    EXPECT_EQ(d.flags & kPackedDescFlagUsed, 0) << "lap 1: USED clear";
    EXPECT_EQ((d.flags & kDescFlagNext) != 0, i < 2);
    EXPECT_EQ((d.flags & kDescFlagWrite) != 0, i == 2);
  }
  EXPECT_EQ(ring.avail_position(), 0x8003);
  // Two more descriptors: the chain crosses the wrap, its second descriptor in lap 2.
  EXPECT_FALSE(ring.add_chain(three).has_value()) << "needs 3 slots, 1 free";
  write_used(ram, ring, 0, true, *id, 7);
  auto used = ring.pop_used();
  ASSERT_TRUE(used.has_value());
  EXPECT_EQ(used->id, *id);
  EXPECT_EQ(used->len, 7u);
  EXPECT_EQ(ring.used_position(), 0x8003) << "the used descriptor skips the whole chain";
  const Buffer two[] = {{data, 44, false}, {data + 44, 10, false}};
  const auto id2 = ring.add_chain(two);
  ASSERT_TRUE(id2.has_value());
  const RawDesc last_of_lap1 = read_desc(ram, ring.desc_gpa() + 16ULL * 3);
  const RawDesc first_of_lap2 = read_desc(ram, ring.desc_gpa());
  EXPECT_EQ(last_of_lap1.flags & (kPackedDescFlagAvail | kPackedDescFlagUsed), kPackedDescFlagAvail);
  EXPECT_EQ(first_of_lap2.flags & (kPackedDescFlagAvail | kPackedDescFlagUsed), kPackedDescFlagUsed)
      << "lap 2: AVAIL clear, USED set";
  EXPECT_EQ(ring.avail_position(), 0x0001) << "position 1, wrap counter 0";
}

TEST(PackedDriverVringTest, IndirectChainTakesOneSlotAndASequentialTable) {
  GuestRam ram(1 << 20);
  PackedDriverVring ring(ram, 8, true);
  const uint64_t data = ram.alloc(4096);
  const Buffer bufs[] = {{data, 44, true}, {data + 44, 10, true}, {data + 54, 30, true}};
  const auto id = ring.add_indirect_chain(bufs);
  ASSERT_TRUE(id.has_value());
  EXPECT_EQ(ring.free_descriptors(), 7);
  const RawDesc head = read_desc(ram, ring.desc_gpa());
  EXPECT_EQ(head.flags & kDescFlagIndirect, kDescFlagIndirect);
  EXPECT_EQ(head.len, 48u);
  EXPECT_EQ(head.id, *id);
  for (uint16_t i = 0; i < 3; ++i) {
    const RawDesc e = read_desc(ram, head.addr + 16ULL * i);
    EXPECT_EQ(e.addr, bufs[i].gpa);
    EXPECT_EQ(e.flags, kDescFlagWrite) << "no NEXT in a packed indirect table";
  }
  EXPECT_EQ(ring.chain_buffers(*id).size(), 3u);
}

TEST(PackedDriverVringTest, BogusUsedIdsAreCountedNotFreed) {
  GuestRam ram(1 << 20);
  PackedDriverVring ring(ram, 8, false);
  const uint64_t data = ram.alloc(64);
  const Buffer one[] = {{data, 44, true}};
  const auto id = ring.add_chain(one);
  ASSERT_TRUE(id.has_value());
  write_used(ram, ring, 0, true, 5, 44);  // id 5 was never handed out
  EXPECT_FALSE(ring.pop_used().has_value());
  EXPECT_EQ(ring.bad_used_ids(), 1u);
  EXPECT_FALSE(ring.chain_buffers(*id).empty()) << "the real buffer is still in flight";
  write_used(ram, ring, 1, true, 200, 44);  // beyond the ring size
  EXPECT_FALSE(ring.pop_used().has_value());
  EXPECT_EQ(ring.bad_used_ids(), 2u);
}

TEST(PackedDriverVringTest, KickDecisionFollowsTheDeviceEventStructure) {
  GuestRam ram(1 << 20);
  PackedDriverVring ring(ram, 4, true);
  const uint64_t data = ram.alloc(64);
  const Buffer one[] = {{data, 44, true}};
  const uint64_t device_event = ring.device_area_gpa();
  auto add_one = [&] {
    const uint16_t before = ring.avail_position();
    EXPECT_TRUE(ring.add_chain(one).has_value());
    return before;
  };
  write_u16(ram, device_event + 2, kRingEventFlagsDisable);
  EXPECT_FALSE(ring.device_wants_kick(add_one()));
  write_u16(ram, device_event + 2, kRingEventFlagsEnable);
  EXPECT_TRUE(ring.device_wants_kick(add_one()));
  // DESC: kick when the descriptor at off_wrap (position 2, lap 1) is made available.
  write_u16(ram, device_event, 0x8002);
  write_u16(ram, device_event + 2, kRingEventFlagsDesc);
  EXPECT_TRUE(ring.device_wants_kick(add_one()));  // position 2
  EXPECT_FALSE(ring.device_wants_kick(add_one())) << "position 3: the device asked for 2 only";
  // Across the wrap: the device waits for position 0 of lap 2.
  for (int i = 0; i < 4; ++i) {
    write_used(ram, ring, static_cast<uint16_t>(i), true, static_cast<uint16_t>(i), 0);
  }
  for (int i = 0; i < 4; ++i) ASSERT_TRUE(ring.pop_used().has_value());
  write_u16(ram, device_event, 0x0000);
  EXPECT_TRUE(ring.device_wants_kick(add_one())) << "lap 2 position 0";
  write_u16(ram, device_event, 0x8003);  // an offset from the previous lap: already passed
  EXPECT_FALSE(ring.device_wants_kick(add_one()));
}

TEST(PackedDriverVringTest, PopUsedMovesTheDriverEventWithEventIdx) {
  GuestRam ram(1 << 20);
  PackedDriverVring ring(ram, 2, true);
  const uint64_t data = ram.alloc(64);
  const Buffer one[] = {{data, 44, true}};
  for (int lap = 0; lap < 3; ++lap) {
    for (uint16_t pos = 0; pos < 2; ++pos) {
      const bool wrap = lap % 2 == 0;
      const auto id = ring.add_chain(one);
      ASSERT_TRUE(id.has_value());
      write_used(ram, ring, pos, wrap, *id, 1);
      ASSERT_TRUE(ring.pop_used().has_value());
      EXPECT_EQ(ring.driver_event_off_wrap(), ring.used_position());
    }
  }
  ring.set_no_interrupt(true);
  EXPECT_EQ(ring.driver_event_flags(), kRingEventFlagsDisable);
  ring.set_no_interrupt(false);
  EXPECT_EQ(ring.driver_event_flags(), kRingEventFlagsDesc);
  EXPECT_EQ(read_u16(ram, ring.driver_area_gpa()), ring.used_position());
}

// End to end against the device's ring at every size: random chain lengths,
// direct and indirect, completed out of order, over several laps.
class AgainstPackedQueue : public ::testing::TestWithParam<uint16_t> {};

TEST_P(AgainstPackedQueue, ManyLapsOfRandomChainsRoundTrip) {
  const uint16_t size = GetParam();
  GuestRam ram(size_t{size} * 16 * 5 + (4 << 20));
  PackedDriverVring ring(ram, size, true);
  auto memory = memory::GuestMemory::wrap_existing(ram.gpa_base(), {ram.data(), ram.size()});
  ASSERT_NE(memory, nullptr);
  virtio::PackedQueue queue;
  queue.set_features(virtio::kFeatureVersion1 | virtio::kFeatureRingPacked | virtio::kFeatureEventIdx |
                     virtio::kFeatureIndirectDesc);
  std::string error;
  ASSERT_TRUE(queue.configure(memory, size, ring.desc_gpa(), ring.driver_area_gpa(), ring.device_area_gpa(), &error))
      << error;
  queue.set_ring_state(ring.initial_vring_base());
  const uint64_t data = ram.alloc(4096);

  std::mt19937 rng(size);
  std::vector<uint16_t> popped;  // ids the device holds
  size_t completed = 0;
  const size_t target = size_t{size} * 4 + 16;
  virtio::DescriptorChain chain;
  for (size_t step = 0; completed < target && step < 10 * target; ++step) {
    // Driver: publish what fits.
    const auto length = static_cast<uint16_t>(1 + rng() % std::min<uint16_t>(size, 3));
    std::vector<Buffer> buffers;
    for (uint16_t i = 0; i < length; ++i) buffers.push_back({data + 16ULL * i, 16, i + 1 == length});
    const bool indirect = rng() % 4 == 0;
    const auto id = indirect ? ring.add_indirect_chain(buffers) : ring.add_chain(buffers);
    // Device: pop everything, complete a random one of those it holds.
    while (queue.pop(chain) == virtio::PopStatus::kChain) {
      ASSERT_EQ(chain.readable().size() + chain.writable().size(), ring.chain_buffers(chain.id()).size());
      popped.push_back(chain.id());
    }
    ASSERT_FALSE(queue.broken()) << "size " << size << " step " << step;
    if (id.has_value() && rng() % 2 == 0) continue;  // let some pile up
    if (popped.empty()) continue;
    const size_t pick = rng() % popped.size();
    const uint16_t done = popped[pick];
    popped.erase(popped.begin() + static_cast<std::ptrdiff_t>(pick));
    queue.add_used(done, done);
    queue.flush_used();
    auto used = ring.pop_used();
    ASSERT_TRUE(used.has_value()) << "size " << size << " step " << step << ": " << ring.describe();
    EXPECT_EQ(used->id, done);
    EXPECT_EQ(used->len, done);
    ++completed;
  }
  EXPECT_EQ(completed, target) << ring.describe();
  EXPECT_EQ(ring.bad_used_ids(), 0u);
  EXPECT_EQ(queue.stats().invalid_chains, 0u);
}

INSTANTIATE_TEST_SUITE_P(Sizes, AgainstPackedQueue, ::testing::Values(1, 2, 4, 8, 64, 256, 1024, 32768));

}  // namespace
}  // namespace vhost_vsock::testing
