#include "testing/driver_vring.h"

#include <gtest/gtest.h>

#include <cstring>
#include <vector>

namespace vhost_vsock::testing {
namespace {

// A deliberately naive device that reads the ring layout straight from the
// spec, to check the driver's layout independently.
struct FakeDevice {
  GuestRam& ram;
  const DriverVring& ring;
  uint16_t next_avail = 0;
  uint16_t used_idx = 0;

  template <typename T>
  T read(uint64_t gpa) {
    T v;
    std::memcpy(&v, ram.host(gpa, sizeof(T)), sizeof(T));
    return v;
  }
  template <typename T>
  void write(uint64_t gpa, T v) {
    std::memcpy(ram.host(gpa, sizeof(T)), &v, sizeof(T));
  }
  struct Desc {
    uint64_t addr;
    uint32_t len;
    uint16_t flags;
    uint16_t next;
  };
  Desc desc_at(uint64_t table, uint16_t i) {
    const uint64_t at = table + 16ULL * i;
    return {read<uint64_t>(at), read<uint32_t>(at + 8), read<uint16_t>(at + 12), read<uint16_t>(at + 14)};
  }
  // Pops one head and returns its flattened descriptors.
  std::optional<std::pair<uint16_t, std::vector<Desc>>> pop() {
    if (read<uint16_t>(ring.avail_gpa() + 2) == next_avail) return std::nullopt;
    const uint16_t head = read<uint16_t>(ring.avail_gpa() + 4 + 2ULL * (next_avail % ring.size()));
    ++next_avail;
    std::vector<Desc> out;
    Desc d = desc_at(ring.desc_gpa(), head);
    if (d.flags & kDescFlagIndirect) {
      const uint64_t table = d.addr;
      uint16_t i = 0;
      for (int n = 0; n < 64; ++n) {
        Desc e = desc_at(table, i);
        out.push_back(e);
        if (!(e.flags & kDescFlagNext)) break;
        i = e.next;
      }
    } else {
      for (int n = 0; n < ring.size(); ++n) {
        out.push_back(d);
        if (!(d.flags & kDescFlagNext)) break;
        d = desc_at(ring.desc_gpa(), d.next);
      }
    }
    return std::make_pair(head, out);
  }
  void push_used(uint32_t id, uint32_t len) {
    const uint64_t elem = ring.used_gpa() + 4 + 8ULL * (used_idx % ring.size());
    write<uint32_t>(elem, id);
    write<uint32_t>(elem + 4, len);
    ++used_idx;
    write<uint16_t>(ring.used_gpa() + 2, used_idx);
  }
};

TEST(DriverVringTest, LayoutIsAlignedAndInsideRam) {
  GuestRam ram(1 << 20);
  DriverVring ring(ram, 256, true);
  EXPECT_EQ(ring.desc_gpa() % 16, 0u);
  EXPECT_EQ(ring.avail_gpa() % 2, 0u);
  EXPECT_EQ(ring.used_gpa() % 4, 0u);
  EXPECT_GE(ring.avail_gpa(), ring.desc_gpa() + 16 * 256);
  EXPECT_GE(ring.used_gpa(), ring.avail_gpa() + 4 + 2 * 256 + 2);
  EXPECT_TRUE(ram.contains(ring.used_gpa(), 4 + 8 * 256 + 2));
  EXPECT_EQ(ring.free_descriptors(), 256);
}

TEST(DriverVringTest, RejectsBadSize) {
  GuestRam ram(1 << 16);
  EXPECT_THROW(DriverVring(ram, 3, false), std::invalid_argument);
  EXPECT_THROW(DriverVring(ram, 0, false), std::invalid_argument);
}

TEST(DriverVringTest, ChainRoundTripsThroughDevice) {
  GuestRam ram(1 << 20);
  DriverVring ring(ram, 8, false);
  FakeDevice dev{ram, ring};
  const uint64_t a = ram.alloc(44);
  const uint64_t b = ram.alloc(4096);
  const DriverVring::Buffer bufs[] = {{a, 44, false}, {b, 4096, true}};
  auto head = ring.add_chain(bufs);
  ASSERT_TRUE(head);
  EXPECT_EQ(ring.free_descriptors(), 6);
  EXPECT_EQ(ring.avail_idx(), 1);

  auto popped = dev.pop();
  ASSERT_TRUE(popped);
  EXPECT_EQ(popped->first, *head);
  ASSERT_EQ(popped->second.size(), 2u);
  EXPECT_EQ(popped->second[0].addr, a);
  EXPECT_EQ(popped->second[0].len, 44u);
  EXPECT_EQ(popped->second[0].flags, kDescFlagNext);
  EXPECT_EQ(popped->second[1].addr, b);
  EXPECT_EQ(popped->second[1].flags, kDescFlagWrite);

  EXPECT_FALSE(ring.pop_used());
  dev.push_used(*head, 100);
  auto used = ring.pop_used();
  ASSERT_TRUE(used);
  EXPECT_EQ(used->id, *head);
  EXPECT_EQ(used->len, 100u);
  EXPECT_EQ(ring.free_descriptors(), 8);
  EXPECT_FALSE(ring.pop_used());
}

TEST(DriverVringTest, RunsOutOfDescriptorsThenRecoversAcrossWrap) {
  GuestRam ram(1 << 20);
  DriverVring ring(ram, 4, false);
  FakeDevice dev{ram, ring};
  const uint64_t buf = ram.alloc(64);
  const DriverVring::Buffer three[] = {{buf, 8, false}, {buf, 8, false}, {buf, 8, true}};
  const DriverVring::Buffer two[] = {{buf, 8, false}, {buf, 8, true}};
  // Many rounds so indices wrap the ring several times and the free list is
  // exercised with chains of different lengths.
  for (int round = 0; round < 50; ++round) {
    auto h1 = ring.add_chain(three);
    ASSERT_TRUE(h1) << round;
    EXPECT_FALSE(ring.add_chain(two)) << "only one descriptor left";
    auto h2 = ring.add_chain(std::span(two).first(1));
    ASSERT_TRUE(h2);
    EXPECT_EQ(ring.free_descriptors(), 0);
    auto p1 = dev.pop();
    auto p2 = dev.pop();
    ASSERT_TRUE(p1 && p2);
    EXPECT_EQ(p1->second.size(), 3u);
    EXPECT_EQ(p2->second.size(), 1u);
    // Complete out of order.
    dev.push_used(p2->first, 0);
    dev.push_used(p1->first, 0);
    EXPECT_EQ(ring.pop_used()->id, *h2);
    EXPECT_EQ(ring.pop_used()->id, *h1);
    EXPECT_EQ(ring.free_descriptors(), 4);
  }
}

TEST(DriverVringTest, IndirectChainUsesOneDescriptor) {
  GuestRam ram(1 << 20);
  DriverVring ring(ram, 4, false);
  FakeDevice dev{ram, ring};
  const uint64_t buf = ram.alloc(256);
  std::vector<DriverVring::Buffer> bufs;
  for (uint32_t i = 0; i < 6; ++i) bufs.push_back({buf + i * 16, 16, i >= 2});
  auto head = ring.add_indirect_chain(bufs);
  ASSERT_TRUE(head);
  EXPECT_EQ(ring.free_descriptors(), 3);
  auto popped = dev.pop();
  ASSERT_TRUE(popped);
  ASSERT_EQ(popped->second.size(), 6u);
  for (uint32_t i = 0; i < 6; ++i) {
    EXPECT_EQ(popped->second[i].addr, buf + i * 16);
    EXPECT_EQ((popped->second[i].flags & kDescFlagWrite) != 0, i >= 2);
  }
  EXPECT_EQ(ring.chain_buffers(*head).size(), 6u);
  dev.push_used(*head, 64);
  EXPECT_EQ(ring.pop_used()->len, 64u);
  EXPECT_EQ(ring.free_descriptors(), 4);
  // The same head's table is reused without allocating again.
  const size_t before = ram.bytes_allocated();
  ASSERT_TRUE(ring.add_indirect_chain(bufs));
  EXPECT_EQ(ram.bytes_allocated(), before);
}

TEST(DriverVringTest, BogusUsedIdsAreCountedNotFreed) {
  GuestRam ram(1 << 20);
  DriverVring ring(ram, 4, false);
  FakeDevice dev{ram, ring};
  const uint64_t buf = ram.alloc(64);
  const DriverVring::Buffer one[] = {{buf, 8, true}};
  auto head = ring.add_chain(one);
  ASSERT_TRUE(head);
  dev.push_used(1000, 0);                              // out of range
  dev.push_used(static_cast<uint16_t>(*head + 1), 0);  // not in flight
  dev.push_used(*head, 8);
  auto used = ring.pop_used();
  ASSERT_TRUE(used);
  EXPECT_EQ(used->id, *head);
  EXPECT_EQ(ring.bad_used_ids(), 2u);
  EXPECT_EQ(ring.free_descriptors(), 4);
  dev.push_used(*head, 8);  // double completion
  EXPECT_FALSE(ring.pop_used());
  EXPECT_EQ(ring.free_descriptors(), 4);
}

TEST(DriverVringTest, RawAccessWritesWhatTheTestAsksFor) {
  GuestRam ram(1 << 20);
  DriverVring ring(ram, 4, false);
  FakeDevice dev{ram, ring};
  ring.write_descriptor(2, 0xdead0000, 77, kDescFlagNext, 2);  // self loop
  ring.publish_head(2);
  auto d = dev.desc_at(ring.desc_gpa(), 2);
  EXPECT_EQ(d.addr, 0xdead0000u);
  EXPECT_EQ(d.len, 77u);
  EXPECT_EQ(d.next, 2);
  EXPECT_EQ(dev.read<uint16_t>(ring.avail_gpa() + 4), 2);
  EXPECT_EQ(dev.read<uint16_t>(ring.avail_gpa() + 2), 1);
  ring.set_avail_idx(500);
  EXPECT_EQ(dev.read<uint16_t>(ring.avail_gpa() + 2), 500);
  ring.set_no_interrupt(true);
  EXPECT_EQ(dev.read<uint16_t>(ring.avail_gpa()), kAvailFlagNoInterrupt);
  ring.set_no_interrupt(false);
  EXPECT_EQ(dev.read<uint16_t>(ring.avail_gpa()), 0);
  ring.set_used_event(42);
  EXPECT_EQ(dev.read<uint16_t>(ring.avail_gpa() + 4 + 2 * 4), 42);
  dev.push_used(2, 5);
  auto raw = ring.pop_used_raw();
  ASSERT_TRUE(raw);
  EXPECT_EQ(raw->id, 2);
}

TEST(DriverVringTest, KickDecisionFollowsUsedFlagsWithoutEventIdx) {
  GuestRam ram(1 << 20);
  DriverVring ring(ram, 8, false);
  FakeDevice dev{ram, ring};
  const uint64_t buf = ram.alloc(64);
  const DriverVring::Buffer one[] = {{buf, 8, false}};
  uint16_t old = ring.avail_idx();
  ring.add_chain(one);
  EXPECT_TRUE(ring.device_wants_kick(old));
  dev.write<uint16_t>(ring.used_gpa(), kUsedFlagNoNotify);
  old = ring.avail_idx();
  ring.add_chain(one);
  EXPECT_FALSE(ring.device_wants_kick(old));
}

TEST(DriverVringTest, KickDecisionFollowsAvailEventWithEventIdx) {
  GuestRam ram(1 << 20);
  DriverVring ring(ram, 8, true);
  FakeDevice dev{ram, ring};
  const uint64_t buf = ram.alloc(64);
  const DriverVring::Buffer one[] = {{buf, 8, false}};
  const uint64_t avail_event_gpa = ring.used_gpa() + 4 + 8 * 8;
  dev.write<uint16_t>(avail_event_gpa, 2);  // device wants a kick once entry #2 is published
  uint16_t old = ring.avail_idx();
  ring.add_chain(one);  // idx 0 -> 1
  EXPECT_FALSE(ring.device_wants_kick(old));
  old = ring.avail_idx();
  ring.add_chain(one);  // 1 -> 2
  EXPECT_FALSE(ring.device_wants_kick(old));
  old = ring.avail_idx();
  ring.add_chain(one);
  ring.add_chain(one);  // 2 -> 4 crosses event 2
  EXPECT_TRUE(ring.device_wants_kick(old));
  EXPECT_EQ(ring.avail_event(), 2);
}

TEST(DriverVringTest, PopUsedMovesUsedEventWithEventIdx) {
  GuestRam ram(1 << 20);
  DriverVring ring(ram, 8, true);
  FakeDevice dev{ram, ring};
  const uint64_t buf = ram.alloc(64);
  const DriverVring::Buffer one[] = {{buf, 8, true}};
  const uint64_t used_event_gpa = ring.avail_gpa() + 4 + 2 * 8;
  auto h = ring.add_chain(one);
  dev.pop();
  dev.push_used(*h, 1);
  EXPECT_TRUE(ring.interrupt_expected(0, 1));
  ASSERT_TRUE(ring.pop_used());
  EXPECT_EQ(dev.read<uint16_t>(used_event_gpa), 1);
  EXPECT_FALSE(ring.interrupt_expected(0, 1));
  EXPECT_TRUE(ring.interrupt_expected(1, 2));
  ring.set_auto_used_event(false);
  ring.set_used_event(7);
  h = ring.add_chain(one);
  dev.pop();
  dev.push_used(*h, 1);
  ASSERT_TRUE(ring.pop_used());
  EXPECT_EQ(dev.read<uint16_t>(used_event_gpa), 7);
}

}  // namespace
}  // namespace vhost_vsock::testing
