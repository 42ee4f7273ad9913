#include "testing/guest_ram.h"

#include <gtest/gtest.h>
#include <sys/mman.h>

#include <new>
#include <stdexcept>

namespace vhost_vsock::testing {
namespace {

TEST(GuestRamTest, AllocReturnsAlignedDisjointRangesInsideRam) {
  GuestRam ram(4096, 0x100000);
  const uint64_t a = ram.alloc(10, 16);
  const uint64_t b = ram.alloc(1, 64);
  const uint64_t c = ram.alloc(3, 2);
  EXPECT_EQ(a, 0x100000u);
  EXPECT_EQ(b % 64, 0u);
  EXPECT_GE(b, a + 10);
  EXPECT_GE(c, b + 1);
  EXPECT_EQ(c % 2, 0u);
  EXPECT_TRUE(ram.contains(a, 10));
}

TEST(GuestRamTest, AlignsGuestAddressEvenWithOddBase) {
  GuestRam ram(4096, 0x100008);
  EXPECT_EQ(ram.alloc(8, 16) % 16, 0u);
}

TEST(GuestRamTest, ThrowsBadAllocWhenFull) {
  GuestRam ram(64);
  ram.alloc(60, 1);
  EXPECT_THROW(ram.alloc(5, 1), std::bad_alloc);
  EXPECT_NO_THROW(ram.alloc(4, 1));
  EXPECT_THROW(ram.alloc(1, 1), std::bad_alloc);
}

TEST(GuestRamTest, HostTranslatesAndRejectsOutOfRange) {
  GuestRam ram(4096, 0x200000);
  EXPECT_EQ(ram.host(0x200000), ram.data());
  EXPECT_EQ(ram.host(0x200010, 16), ram.data() + 16);
  EXPECT_EQ(ram.gpa_of(ram.data() + 100), 0x200064u);
  EXPECT_THROW(ram.host(0x1FFFFF), std::out_of_range);
  EXPECT_THROW(ram.host(0x200000 + 4095, 2), std::out_of_range);
  EXPECT_THROW(ram.host(0x200000 + 4096), std::out_of_range);
  EXPECT_THROW(ram.host(UINT64_MAX, 2), std::out_of_range);
}

TEST(GuestRamTest, FdMapsTheSameBytes) {
  GuestRam ram(8192);
  ram.data()[4100] = 0x5A;
  void* other = mmap(nullptr, 8192, PROT_READ | PROT_WRITE, MAP_SHARED, ram.fd(), 0);
  ASSERT_NE(other, MAP_FAILED);
  EXPECT_EQ(static_cast<uint8_t*>(other)[4100], 0x5A);
  static_cast<uint8_t*>(other)[7] = 0xA5;
  EXPECT_EQ(ram.data()[7], 0xA5);
  munmap(other, 8192);
}

}  // namespace
}  // namespace vhost_vsock::testing
