// Chain walking: valid and hostile descriptor chains.
#include <limits>
#include <vector>

#include "virtio/split_queue_test_support.h"

namespace vhost_vsock::virtio {
namespace {

using namespace test;  // NOLINT(google-build-using-namespace): test helpers

TEST_F(SplitQueueTest, PopsASimpleChainThenEmpty) {
  start(8);
  EXPECT_FALSE(queue_.has_available());
  EXPECT_EQ(queue_.pop(chain_), PopStatus::kEmpty);
  ring_->set_desc(3, kData, 100);
  ring_->make_available(3);
  EXPECT_TRUE(queue_.has_available());
  ASSERT_EQ(queue_.pop(chain_), PopStatus::kChain);
  EXPECT_EQ(chain_.id(), 3);
  ASSERT_EQ(chain_.readable().size(), 1u);
  EXPECT_EQ(chain_.readable()[0].iov_base, host(kData));
  EXPECT_EQ(chain_.readable()[0].iov_len, 100u);
  EXPECT_EQ(chain_.readable_bytes(), 100u);
  EXPECT_TRUE(chain_.writable().empty());
  EXPECT_EQ(chain_.writable_bytes(), 0u);
  EXPECT_EQ(queue_.next_avail(), 1);
  EXPECT_FALSE(queue_.has_available());
  EXPECT_EQ(queue_.pop(chain_), PopStatus::kEmpty);
  EXPECT_EQ(queue_.stats().chains_popped, 1u);
}

TEST_F(SplitQueueTest, SplitHeaderPayloadAndWritableTail) {
  start(8);
  ring_->set_desc(0, kData, 44, kNext, 5);
  ring_->set_desc(5, kData + 0x1000, 4096, kNext, 2);
  ring_->set_desc(2, kData + 0x3000, 512, kWrite | kNext, 7);
  ring_->set_desc(7, kData + 0x4000, 256, kWrite);
  ring_->make_available(0);
  ASSERT_EQ(queue_.pop(chain_), PopStatus::kChain);
  ASSERT_EQ(chain_.readable().size(), 2u);
  EXPECT_EQ(chain_.readable()[0].iov_base, host(kData));
  EXPECT_EQ(chain_.readable()[0].iov_len, 44u);
  EXPECT_EQ(chain_.readable()[1].iov_base, host(kData + 0x1000));
  EXPECT_EQ(chain_.readable_bytes(), 44u + 4096u);
  ASSERT_EQ(chain_.writable().size(), 2u);
  EXPECT_EQ(chain_.writable()[0].iov_base, host(kData + 0x3000));
  EXPECT_EQ(chain_.writable()[1].iov_len, 256u);
  EXPECT_EQ(chain_.writable_bytes(), 768u);
}

TEST_F(SplitQueueTest, ReusedChainObjectIsClearedBetweenPops) {
  start(4);
  ring_->set_desc(0, kData, 10, kNext, 1);
  ring_->set_desc(1, kData + 100, 20, kWrite);
  ring_->set_desc(2, kData + 200, 30);
  ring_->make_available(0);
  ring_->make_available(2);
  ASSERT_EQ(queue_.pop(chain_), PopStatus::kChain);
  ASSERT_EQ(queue_.pop(chain_), PopStatus::kChain);
  EXPECT_EQ(chain_.id(), 2);
  EXPECT_EQ(chain_.readable().size(), 1u);
  EXPECT_EQ(chain_.readable_bytes(), 30u);
  EXPECT_TRUE(chain_.writable().empty());
  EXPECT_EQ(chain_.writable_bytes(), 0u);
}

TEST_F(SplitQueueTest, IndirectTable) {
  start(4, kFeatureVersion1 | kFeatureIndirectDesc);
  const uint64_t table_gpa = kData + 0x8000;
  uint8_t* table = host(table_gpa);
  DriverRing::write_desc(table, 0, kData, 44, kNext, 2);
  DriverRing::write_desc(table, 2, kData + 0x100, 60, kNext, 1);
  DriverRing::write_desc(table, 1, kData + 0x200, 1000, kWrite);
  // The WRITE flag on the indirect descriptor itself must be ignored.
  ring_->set_desc(1, table_gpa, 3 * 16, kIndirect | kWrite);
  ring_->make_available(1);
  ASSERT_EQ(queue_.pop(chain_), PopStatus::kChain);
  EXPECT_EQ(chain_.id(), 1);
  ASSERT_EQ(chain_.readable().size(), 2u);
  EXPECT_EQ(chain_.readable()[1].iov_base, host(kData + 0x100));
  EXPECT_EQ(chain_.readable_bytes(), 104u);
  ASSERT_EQ(chain_.writable().size(), 1u);
  EXPECT_EQ(chain_.writable_bytes(), 1000u);
}

TEST_F(SplitQueueTest, IndirectAfterDirectDescriptorsInTheChain) {
  start(4, kFeatureVersion1 | kFeatureIndirectDesc);
  const uint64_t table_gpa = kData + 0x8000;
  DriverRing::write_desc(host(table_gpa), 0, kData + 0x100, 8, kWrite);
  ring_->set_desc(0, kData, 44, kNext, 1);
  ring_->set_desc(1, table_gpa, 16, kIndirect);
  ring_->make_available(0);
  ASSERT_EQ(queue_.pop(chain_), PopStatus::kChain);
  EXPECT_EQ(chain_.readable_bytes(), 44u);
  EXPECT_EQ(chain_.writable_bytes(), 8u);
}

TEST_F(SplitQueueTest, IndirectWithoutFeatureIsInvalid) {
  start(4);
  DriverRing::write_desc(host(kData + 0x8000), 0, kData, 44, 0, 0);
  ring_->set_desc(0, kData + 0x8000, 16, kIndirect);
  ring_->make_available(0);
  expect_invalid(0);
}

TEST_F(SplitQueueTest, InvalidIndirectTables) {
  start(4, kFeatureVersion1 | kFeatureIndirectDesc);
  const uint64_t table_gpa = kData + 0x8000;
  uint8_t* table = host(table_gpa);
  DriverRing::write_desc(table, 0, kData, 44, 0, 0);
  DriverRing::write_desc(table, 1, table_gpa, 16, kIndirect, 0);  // nested
  DriverRing::write_desc(table, 2, kData, 4, kNext, 3);           // loop 2 -> 3 -> 2
  DriverRing::write_desc(table, 3, kData, 4, kNext, 2);
  DriverRing::write_desc(table, 4, kData, 4, kNext, 9);  // next beyond table of 5

  ring_->set_desc(0, table_gpa, 0, kIndirect);              // empty table
  ring_->set_desc(1, table_gpa, 24, kIndirect);             // not a multiple of 16
  ring_->set_desc(2, table_gpa, 16, kIndirect | kNext, 3);  // INDIRECT with NEXT
  ring_->set_desc(3, table_gpa, 5 * 16, kIndirect);         // more entries (5) than the queue size (4)
  for (uint16_t head = 0; head < 4; ++head) {
    ring_->make_available(head);
    expect_invalid(head);
  }

  // Nested indirect: a 2-entry table whose 2nd entry is indirect again.
  ring_->set_desc(0, table_gpa, 2 * 16, kIndirect);
  DriverRing::write_desc(table, 0, kData, 44, kNext, 1);
  ring_->make_available(0);
  expect_invalid(0);

  // Loop inside the table (entries 2 and 3 of a 4-entry table starting at 2).
  ring_->set_desc(1, table_gpa + 32, 2 * 16, kIndirect);
  DriverRing::write_desc(table, 2, kData, 4, kNext, 1);
  DriverRing::write_desc(table, 3, kData, 4, kNext, 0);
  ring_->make_available(1);
  expect_invalid(1);

  // Table outside guest memory.
  ring_->set_desc(2, kEnd - 16, 32, kIndirect);
  ring_->make_available(2);
  expect_invalid(2);

  // A good one still works afterwards.
  DriverRing::write_desc(table, 0, kData, 44, 0, 0);
  ring_->set_desc(3, table_gpa, 16, kIndirect);
  ring_->make_available(3);
  EXPECT_EQ(queue_.pop(chain_), PopStatus::kChain);
  EXPECT_EQ(queue_.stats().invalid_chains, 7u);
}

TEST_F(SplitQueueTest, IndirectNextBeyondTableIsInvalid) {
  start(8, kFeatureVersion1 | kFeatureIndirectDesc);
  const uint64_t table_gpa = kData + 0x8000;
  DriverRing::write_desc(host(table_gpa), 0, kData, 4, kNext, 2);  // table has 2 entries
  DriverRing::write_desc(host(table_gpa), 1, kData, 4, 0, 0);
  ring_->set_desc(0, table_gpa, 2 * 16, kIndirect);
  ring_->make_available(0);
  expect_invalid(0);
}

TEST_F(SplitQueueTest, BufferOutsideMemoryIsInvalid) {
  start(4);
  ring_->set_desc(0, kEnd - 10, 11);  // one byte past the end
  ring_->set_desc(1, kBase - 1, 1);
  ring_->set_desc(2, kData, 8, kNext, 3);
  ring_->set_desc(3, kEnd, 1, kWrite);  // second descriptor bad
  for (uint16_t head : {0, 1, 2}) {
    ring_->make_available(head);
    expect_invalid(head);
  }
  ring_->set_desc(0, kEnd - 10, 10);  // exactly up to the end is fine
  ring_->make_available(0);
  EXPECT_EQ(queue_.pop(chain_), PopStatus::kChain);
}

TEST_F(SplitQueueTest, AddressWrappingPast2To64IsInvalid) {
  start(4);
  ring_->set_desc(0, std::numeric_limits<uint64_t>::max() - 7, 16);
  ring_->make_available(0);
  expect_invalid(0);
  // Wraps around onto mapped memory: kBase - 16 + 2^64 ... must not alias.
  ring_->set_desc(1, 0 - uint64_t{16}, static_cast<uint32_t>(kBase + 32));
  ring_->make_available(1);
  expect_invalid(1);
}

TEST_F(SplitQueueTest, LoopInDescriptorTableIsInvalid) {
  start(8);
  ring_->set_desc(0, kData, 4, kNext, 1);
  ring_->set_desc(1, kData, 4, kNext, 2);
  ring_->set_desc(2, kData, 4, kNext, 0);
  ring_->make_available(1);
  expect_invalid(1);
  ring_->set_desc(4, kData, 4, kNext, 4);  // self loop
  ring_->make_available(4);
  expect_invalid(4);
}

TEST_F(SplitQueueTest, ChainUsingEveryDescriptorIsValid) {
  start(16);
  for (uint16_t i = 0; i < 16; ++i) {
    ring_->set_desc(i, kData + uint64_t{64} * i, 64, i < 15 ? kNext : 0, static_cast<uint16_t>(i + 1));
  }
  ring_->make_available(0);
  ASSERT_EQ(queue_.pop(chain_), PopStatus::kChain);
  EXPECT_EQ(chain_.readable().size(), 16u);
  EXPECT_EQ(chain_.readable_bytes(), 16u * 64u);
}

TEST_F(SplitQueueTest, NextOutOfRangeIsInvalid) {
  start(8);
  ring_->set_desc(0, kData, 4, kNext, 8);
  ring_->make_available(0);
  expect_invalid(0);
}

TEST_F(SplitQueueTest, ZeroLengthDescriptorsAreSkipped) {
  start(8);
  ring_->set_desc(0, kData, 0, kNext, 1);
  ring_->set_desc(1, kData + 8, 16, kNext, 2);
  ring_->set_desc(2, 0xdead0000, 0, kWrite | kNext, 3);  // unmapped but empty: fine
  ring_->set_desc(3, kData + 64, 32, kWrite);
  ring_->make_available(0);
  ASSERT_EQ(queue_.pop(chain_), PopStatus::kChain);
  ASSERT_EQ(chain_.readable().size(), 1u);
  EXPECT_EQ(chain_.readable()[0].iov_base, host(kData + 8));
  ASSERT_EQ(chain_.writable().size(), 1u);
  EXPECT_EQ(chain_.writable_bytes(), 32u);
}

TEST_F(SplitQueueTest, ReadableAfterWritableIsInvalid) {
  start(8);
  ring_->set_desc(0, kData, 8, kWrite | kNext, 1);
  ring_->set_desc(1, kData + 8, 8);
  ring_->make_available(0);
  expect_invalid(0);
  // Even when the readable one is empty.
  ring_->set_desc(2, kData, 8, kWrite | kNext, 3);
  ring_->set_desc(3, kData + 8, 0);
  ring_->make_available(2);
  expect_invalid(2);
}

TEST_F(SplitQueueTest, TooManyIovecsIsInvalid) {
  constexpr uint16_t kSize = 2048;
  start(kSize);
  // 1025 one-byte descriptors: over the per-chain iovec cap.
  for (uint16_t i = 0; i < 1025; ++i)
    ring_->set_desc(i, kData + i, 1, i < 1024 ? kNext : 0, static_cast<uint16_t>(i + 1));
  ring_->make_available(0);
  expect_invalid(0);
  // 1024 is fine.
  ring_->set_desc(1023, kData + 1023, 1, 0, 0);
  ring_->make_available(0);
  ASSERT_EQ(queue_.pop(chain_), PopStatus::kChain);
  EXPECT_EQ(chain_.readable().size(), 1024u);
}

TEST_F(SplitQueueTest, HeadOutOfRangeBreaksTheQueue) {
  start(8);
  ring_->make_available(8);
  EXPECT_EQ(queue_.pop(chain_), PopStatus::kBroken);
  EXPECT_TRUE(queue_.broken());
  EXPECT_EQ(ring_->used_idx(), 0);  // nothing we could return
  ring_->set_desc(0, kData, 4);
  ring_->make_available(0);
  EXPECT_EQ(queue_.pop(chain_), PopStatus::kBroken);
  EXPECT_FALSE(queue_.has_available());
  // A new base from the front-end (driver reset) revives it.
  queue_.set_next_avail(1);
  EXPECT_FALSE(queue_.broken());
  EXPECT_EQ(queue_.pop(chain_), PopStatus::kChain);
}

TEST_F(SplitQueueTest, AvailIndexJumpBreaksTheQueue) {
  start(8);
  ring_->set_desc(0, kData, 4);
  ring_->set_avail_idx(9);
  EXPECT_EQ(queue_.pop(chain_), PopStatus::kBroken);
  EXPECT_TRUE(queue_.broken());
  queue_.add_used(0, 0);
  queue_.flush_used();
  EXPECT_EQ(ring_->used_idx(), 0);  // a broken queue writes nothing
  EXPECT_FALSE(queue_.should_notify());
}

TEST_F(SplitQueueTest, FullRingIsNotAJump) {
  start(4);
  for (uint16_t i = 0; i < 4; ++i) {
    ring_->set_desc(i, kData + uint64_t{16} * i, 16);
    ring_->make_available(i);
  }
  for (uint16_t i = 0; i < 4; ++i) {
    ASSERT_EQ(queue_.pop(chain_), PopStatus::kChain);
    EXPECT_EQ(chain_.id(), i);
  }
  EXPECT_EQ(queue_.pop(chain_), PopStatus::kEmpty);
}

TEST_F(SplitQueueTest, IndicesWrapAt65536) {
  start(4);
  queue_.set_next_avail(65534);
  ring_->set_avail_idx(65534);
  ring_->set_used_idx(65534);
  queue_.set_next_avail(65534);  // takes used idx from the ring now that it is set
  for (uint16_t i = 0; i < 4; ++i) {
    ring_->set_desc(i, kData, 16);
    ring_->make_available(i);
  }
  for (uint16_t i = 0; i < 4; ++i) {
    ASSERT_EQ(queue_.pop(chain_), PopStatus::kChain);
    EXPECT_EQ(chain_.id(), i);
    queue_.add_used(i, i);
  }
  queue_.flush_used();
  EXPECT_EQ(queue_.next_avail(), 2);
  EXPECT_EQ(ring_->used_idx(), 2);
  // Slots follow idx % size: 65534 % 4 == 2.
  EXPECT_EQ(ring_->used_elem(2).first, 0u);
  EXPECT_EQ(ring_->used_elem(1).first, 3u);
}

TEST_F(SplitQueueTest, ChainSpanningAdjacentRegions) {
  // Two memfd regions back to back in guest physical space.
  auto make_region = [](uint64_t gpa, uint64_t size, uint64_t user) {
    memory::RegionSpec spec;
    spec.guest_phys_addr = gpa;
    spec.size = size;
    spec.user_addr = user;
    spec.fd = base::UniqueFd(::memfd_create("virtqueue_test", MFD_CLOEXEC));
    EXPECT_EQ(::ftruncate(spec.fd.get(), static_cast<off_t>(size)), 0);
    return spec;
  };
  std::vector<memory::RegionSpec> regions;
  regions.push_back(make_region(0, 0x10000, 0x7000000));
  regions.push_back(make_region(0x10000, 0x10000, 0x9000000));
  std::string error;
  auto two = memory::GuestMemory::map(std::move(regions), &error);
  ASSERT_NE(two, nullptr) << error;

  DriverRing ring(two, 4, 0x1000, 0x2000, 0x3000);
  SplitQueue q;
  ASSERT_TRUE(q.configure(two, 4, 0x1000, 0x2000, 0x3000, &error)) << error;
  ring.set_desc(0, 0xff00, 0x200, kWrite);  // 0x100 bytes in each region
  ring.make_available(0);
  ASSERT_EQ(q.pop(chain_), PopStatus::kChain);
  ASSERT_EQ(chain_.writable().size(), 2u);
  EXPECT_EQ(chain_.writable()[0].iov_len, 0x100u);
  EXPECT_EQ(chain_.writable()[1].iov_len, 0x100u);
  EXPECT_EQ(chain_.writable()[1].iov_base, two->translate(0x10000, 1));
  EXPECT_EQ(chain_.writable_bytes(), 0x200u);

  ring.set_desc(1, 0x1ff00, 0x200, kWrite);  // runs off the end of the second
  ring.make_available(1);
  EXPECT_EQ(q.pop(chain_), PopStatus::kInvalidChain);
}

}  // namespace
}  // namespace vhost_vsock::virtio
