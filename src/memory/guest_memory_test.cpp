#include "memory/guest_memory.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cstring>
#include <limits>

namespace vhost_vsock::memory {
namespace {

constexpr uint64_t kPage = 4096;

// A memfd of `length` bytes whose byte i holds (i * 7 + seed) & 0xff, so a
// translated pointer can be checked to land on the right file offset.
base::UniqueFd make_memfd(size_t length, uint8_t seed) {
  base::UniqueFd fd(::memfd_create("guest_memory_test", MFD_CLOEXEC));
  EXPECT_TRUE(fd.valid());
  EXPECT_EQ(::ftruncate(fd.get(), static_cast<off_t>(length)), 0);
  std::vector<uint8_t> pattern(length);
  for (size_t i = 0; i < length; ++i) pattern[i] = static_cast<uint8_t>(i * 7 + seed);
  EXPECT_EQ(::pwrite(fd.get(), pattern.data(), length, 0), static_cast<ssize_t>(length));
  return fd;
}

uint8_t pattern_at(size_t file_offset, uint8_t seed) {
  return static_cast<uint8_t>(file_offset * 7 + seed);
}

RegionSpec region(uint64_t gpa, uint64_t size, uint64_t user, uint64_t mmap_offset, uint8_t seed = 0) {
  RegionSpec spec;
  spec.guest_phys_addr = gpa;
  spec.size = size;
  spec.user_addr = user;
  spec.mmap_offset = mmap_offset;
  spec.fd = make_memfd(size + mmap_offset, seed);
  return spec;
}

std::shared_ptr<const GuestMemory> map_ok(std::vector<RegionSpec> regions) {
  std::string error;
  auto memory = GuestMemory::map(std::move(regions), &error);
  EXPECT_NE(memory, nullptr) << error;
  return memory;
}

std::string map_error(std::vector<RegionSpec> regions) {
  std::string error;
  auto memory = GuestMemory::map(std::move(regions), &error);
  EXPECT_EQ(memory, nullptr);
  return error;
}

template <typename... Specs>
std::vector<RegionSpec> specs(Specs&&... s) {
  std::vector<RegionSpec> out;
  (out.push_back(std::move(s)), ...);
  return out;
}

TEST(GuestMemory, TranslateHonoursMmapOffset) {
  auto memory = map_ok(specs(region(0x10000, 4 * kPage, 0x7f0000000000, 2 * kPage + 100, 3)));
  ASSERT_NE(memory, nullptr);
  EXPECT_EQ(memory->region_count(), 1u);

  uint8_t* start = memory->translate(0x10000, 16);
  ASSERT_NE(start, nullptr);
  // gpa 0x10000 is file offset mmap_offset.
  EXPECT_EQ(start[0], pattern_at(2 * kPage + 100, 3));
  uint8_t* later = memory->translate(0x10000 + 1234, 1);
  ASSERT_NE(later, nullptr);
  EXPECT_EQ(later, start + 1234);
  EXPECT_EQ(*later, pattern_at(2 * kPage + 100 + 1234, 3));
}

TEST(GuestMemory, WritesReachTheSharedFile) {
  std::vector<RegionSpec> regions = specs(region(0, kPage, 0x1000, kPage));
  const int raw_fd = ::dup(regions[0].fd.get());
  base::UniqueFd observer(raw_fd);
  auto memory = map_ok(std::move(regions));
  ASSERT_NE(memory, nullptr);
  uint8_t* p = memory->translate(10, 4);
  ASSERT_NE(p, nullptr);
  const uint8_t marker[4] = {0xde, 0xad, 0xbe, 0xef};
  std::memcpy(p, marker, sizeof(marker));
  uint8_t back[4] = {};
  ASSERT_EQ(::pread(observer.get(), back, 4, static_cast<off_t>(kPage + 10)), 4);
  EXPECT_EQ(std::memcmp(back, marker, sizeof(marker)), 0);
}

TEST(GuestMemory, MapClosesTheFds) {
  std::vector<RegionSpec> regions = specs(region(0, kPage, 0, 0));
  const int raw = regions[0].fd.get();
  auto memory = map_ok(std::move(regions));
  ASSERT_NE(memory, nullptr);
  EXPECT_EQ(::fcntl(raw, F_GETFD), -1);
  EXPECT_EQ(errno, EBADF);
  // The mapping outlives the fd.
  EXPECT_NE(memory->translate(0, kPage), nullptr);
}

TEST(GuestMemory, TranslateRejectsOutOfRangeAndBoundaries) {
  auto memory = map_ok(specs(region(0x100000, kPage, 0, 0)));
  ASSERT_NE(memory, nullptr);
  EXPECT_NE(memory->translate(0x100000, kPage), nullptr);
  EXPECT_EQ(memory->translate(0x100000, kPage + 1), nullptr);
  EXPECT_NE(memory->translate(0x100000 + kPage - 1, 1), nullptr);
  EXPECT_EQ(memory->translate(0x100000 + kPage - 1, 2), nullptr);
  EXPECT_EQ(memory->translate(0x100000 - 1, 1), nullptr);
  EXPECT_EQ(memory->translate(0x100000 + kPage, 0), nullptr);  // len 0 at an unmapped address
  EXPECT_NE(memory->translate(0x100000 + 5, 0), nullptr);      // len 0 inside is fine
  EXPECT_EQ(memory->translate(0, 1), nullptr);
}

TEST(GuestMemory, WrapAroundIsRejected) {
  auto memory = map_ok(specs(region(0x100000, kPage, 0, 0)));
  ASSERT_NE(memory, nullptr);
  const uint64_t huge = std::numeric_limits<uint64_t>::max();
  EXPECT_EQ(memory->translate(0x100000, huge), nullptr);
  EXPECT_EQ(memory->translate(0x100010, huge - 0x10), nullptr);  // gpa + len wraps to 0x100000
  base::IovecList out;
  EXPECT_FALSE(memory->translate_to_iovecs(0x100010, huge - 0x10, out));
  EXPECT_FALSE(memory->translate_to_iovecs(huge, 2, out));
  EXPECT_TRUE(out.empty());
}

TEST(GuestMemory, RegionNearTopOfAddressSpace) {
  const uint64_t top = std::numeric_limits<uint64_t>::max() - 2 * kPage + 1;  // ends one byte below 2^64
  auto memory = map_ok(specs(region(top, 2 * kPage - 1, 0, 0)));
  ASSERT_NE(memory, nullptr);
  EXPECT_NE(memory->translate(top, 2 * kPage - 1), nullptr);
  EXPECT_EQ(memory->translate(top, 2 * kPage), nullptr);
  EXPECT_NE(memory->translate(std::numeric_limits<uint64_t>::max() - 1, 1), nullptr);
  EXPECT_EQ(memory->translate(std::numeric_limits<uint64_t>::max(), 1), nullptr);
  base::IovecList out;
  EXPECT_FALSE(memory->translate_to_iovecs(std::numeric_limits<uint64_t>::max() - 1, 2, out));
}

TEST(GuestMemory, SeveralRegionsInAnyOrderWithGaps) {
  // Given out of order: the map must still find each.
  auto memory = map_ok(specs(region(0x300000, kPage, 0x9000000, 0, 30), region(0x100000, kPage, 0x7000000, 0, 10),
                             region(0x200000, 2 * kPage, 0x8000000, kPage, 20)));
  ASSERT_NE(memory, nullptr);
  EXPECT_EQ(memory->region_count(), 3u);
  uint8_t* a = memory->translate(0x100008, 1);
  uint8_t* b = memory->translate(0x200008, 1);
  uint8_t* c = memory->translate(0x300008, 1);
  ASSERT_TRUE(a && b && c);
  EXPECT_EQ(*a, pattern_at(8, 10));
  EXPECT_EQ(*b, pattern_at(kPage + 8, 20));
  EXPECT_EQ(*c, pattern_at(8, 30));
  // The gaps are unmapped.
  EXPECT_EQ(memory->translate(0x100000 + kPage, 1), nullptr);
  EXPECT_EQ(memory->translate(0x200000 + 2 * kPage, 1), nullptr);
  base::IovecList out;
  EXPECT_FALSE(memory->translate_to_iovecs(0x100000, kPage + 1, out));
  EXPECT_TRUE(out.empty());
}

TEST(GuestMemory, TranslateToIovecsSpansAdjacentRegions) {
  auto memory = map_ok(specs(region(0x1000, kPage, 0x10000, 0, 1), region(0x2000, kPage, 0x20000, 0, 2),
                             region(0x3000, kPage, 0x30000, 0, 3)));
  ASSERT_NE(memory, nullptr);
  // translate() needs one region.
  EXPECT_EQ(memory->translate(0x1ff0, 0x20), nullptr);

  base::IovecList out;
  ASSERT_TRUE(memory->translate_to_iovecs(0x1ff0, 0x1020, out));
  ASSERT_EQ(out.size(), 3u);
  EXPECT_EQ(out[0].iov_len, 0x10u);
  EXPECT_EQ(out[1].iov_len, kPage);
  EXPECT_EQ(out[2].iov_len, 0x10u);
  EXPECT_EQ(out.total_bytes(), 0x1020u);
  EXPECT_EQ(*static_cast<uint8_t*>(out[0].iov_base), pattern_at(kPage - 0x10, 1));
  EXPECT_EQ(*static_cast<uint8_t*>(out[1].iov_base), pattern_at(0, 2));
  EXPECT_EQ(*static_cast<uint8_t*>(out[2].iov_base), pattern_at(0, 3));

  // Appends after what is already there.
  ASSERT_TRUE(memory->translate_to_iovecs(0x1000, 4, out));
  EXPECT_EQ(out.size(), 4u);

  // Too many pieces: nothing appended.
  base::IovecList limited;
  EXPECT_FALSE(memory->translate_to_iovecs(0x1ff0, 0x1020, limited, 2));
  EXPECT_TRUE(limited.empty());
  EXPECT_TRUE(memory->translate_to_iovecs(0x1ff0, 0x1020, limited, 3));

  // Runs off the end of the last region: nothing appended.
  base::IovecList past_end;
  EXPECT_FALSE(memory->translate_to_iovecs(0x2000, 2 * kPage + 1, past_end));
  EXPECT_TRUE(past_end.empty());

  // Inside one region, up to its last byte: one piece, and none allowed is a failure.
  base::IovecList single;
  EXPECT_FALSE(memory->translate_to_iovecs(0x3000, kPage, single, 0));
  EXPECT_TRUE(single.empty());
  ASSERT_TRUE(memory->translate_to_iovecs(0x3000, kPage, single, 1));
  ASSERT_EQ(single.size(), 1u);
  EXPECT_EQ(single[0].iov_len, kPage);
  EXPECT_EQ(*static_cast<uint8_t*>(single[0].iov_base), pattern_at(0, 3));

  // Empty range: succeeds with nothing.
  base::IovecList empty;
  EXPECT_TRUE(memory->translate_to_iovecs(0x1000, 0, empty));
  EXPECT_TRUE(empty.empty());
}

TEST(GuestMemory, UserToGuest) {
  auto memory = map_ok(specs(region(0x100000, kPage, 0x7f0000001000, 0), region(0x0, kPage, 0x7f0000005000, 0)));
  ASSERT_NE(memory, nullptr);
  EXPECT_EQ(memory->user_to_guest(0x7f0000001000, 16), std::optional<uint64_t>(0x100000));
  EXPECT_EQ(memory->user_to_guest(0x7f0000001010, kPage - 0x10), std::optional<uint64_t>(0x100010));
  EXPECT_EQ(memory->user_to_guest(0x7f0000005ff0, 0x10), std::optional<uint64_t>(0xff0));
  EXPECT_EQ(memory->user_to_guest(0x7f0000001010, kPage), std::nullopt);  // straddles the end
  EXPECT_EQ(memory->user_to_guest(0x7f0000000fff, 1), std::nullopt);
  EXPECT_EQ(memory->user_to_guest(0x7f0000002000, 1), std::nullopt);
  EXPECT_EQ(memory->user_to_guest(0x7f0000001010, std::numeric_limits<uint64_t>::max()), std::nullopt);
}

TEST(GuestMemory, RejectsOverlapInGuestPhysicalAddresses) {
  const std::string error =
      map_error(specs(region(0x1000, 2 * kPage, 0x100000, 0), region(0x2000, kPage, 0x200000, 0)));
  EXPECT_NE(error.find("overlaps"), std::string::npos) << error;
  EXPECT_NE(error.find("guest physical"), std::string::npos) << error;
}

TEST(GuestMemory, RejectsOverlapInUserAddresses) {
  const std::string error = map_error(specs(region(0x1000, kPage, 0x100000, 0), region(0x9000, kPage, 0x100800, 0)));
  EXPECT_NE(error.find("user"), std::string::npos) << error;
}

TEST(GuestMemory, AdjacentRegionsDoNotOverlap) {
  auto memory = map_ok(specs(region(0x1000, kPage, 0x100000, 0), region(0x2000, kPage, 0x101000, 0)));
  EXPECT_NE(memory, nullptr);
}

TEST(GuestMemory, RejectsTooManyRegions) {
  std::vector<RegionSpec> regions;
  for (size_t i = 0; i <= GuestMemory::kMaxRegions; ++i) regions.push_back(region(i * kPage, kPage, i * kPage, 0));
  const std::string error = map_error(std::move(regions));
  EXPECT_NE(error.find("regions"), std::string::npos) << error;

  std::vector<RegionSpec> at_limit;
  for (size_t i = 0; i < GuestMemory::kMaxRegions; ++i) at_limit.push_back(region(i * kPage, kPage, i * kPage, 0));
  auto memory = map_ok(std::move(at_limit));
  ASSERT_NE(memory, nullptr);
  EXPECT_EQ(memory->region_count(), GuestMemory::kMaxRegions);
  base::IovecList out;
  EXPECT_TRUE(memory->translate_to_iovecs(0, GuestMemory::kMaxRegions * kPage, out, GuestMemory::kMaxRegions));
  EXPECT_EQ(out.size(), GuestMemory::kMaxRegions);
}

TEST(GuestMemory, RejectsZeroSizeWrappingAndMissingFd) {
  EXPECT_NE(map_error(specs(region(0x1000, 0, 0, 0))).find("size 0"), std::string::npos);

  RegionSpec wrapping = region(0, kPage, 0, 0);
  wrapping.guest_phys_addr = std::numeric_limits<uint64_t>::max() - 10;
  EXPECT_NE(map_error(specs(std::move(wrapping))).find("wraps"), std::string::npos);

  RegionSpec user_wrapping = region(0, kPage, 0, 0);
  user_wrapping.user_addr = std::numeric_limits<uint64_t>::max() - 10;
  EXPECT_NE(map_error(specs(std::move(user_wrapping))).find("wraps"), std::string::npos);

  RegionSpec offset_overflow = region(0, kPage, 0, 0);
  offset_overflow.mmap_offset = std::numeric_limits<uint64_t>::max() - 10;
  EXPECT_NE(map_error(specs(std::move(offset_overflow))).find("overflow"), std::string::npos);

  RegionSpec no_fd;
  no_fd.size = kPage;
  EXPECT_NE(map_error(specs(std::move(no_fd))).find("file descriptor"), std::string::npos);
}

TEST(GuestMemory, MmapFailureIsReported) {
  // A read-only fd cannot be mapped PROT_WRITE with MAP_SHARED.
  RegionSpec good = region(0, kPage, 0, 0);
  RegionSpec bad = region(0x10000, kPage, 0x10000, 0);
  char path[64];
  std::snprintf(path, sizeof(path), "/proc/self/fd/%d", bad.fd.get());
  bad.fd = base::UniqueFd(::open(path, O_RDONLY | O_CLOEXEC));
  ASSERT_TRUE(bad.fd.valid());
  const std::string error = map_error(specs(std::move(good), std::move(bad)));
  EXPECT_NE(error.find("mmap"), std::string::npos) << error;
}

TEST(GuestMemory, WrapExisting) {
  std::vector<uint8_t> buffer(256);
  for (size_t i = 0; i < buffer.size(); ++i) buffer[i] = static_cast<uint8_t>(i);
  auto memory = GuestMemory::wrap_existing(0x5000, buffer);
  ASSERT_NE(memory, nullptr);
  EXPECT_EQ(memory->translate(0x5010, 1), buffer.data() + 0x10);
  EXPECT_EQ(memory->translate(0x5000, 257), nullptr);
  EXPECT_EQ(memory->user_to_guest(reinterpret_cast<uint64_t>(buffer.data()) + 3, 1), std::optional<uint64_t>(0x5003));
  EXPECT_EQ(GuestMemory::wrap_existing(std::numeric_limits<uint64_t>::max() - 10, buffer), nullptr);
  EXPECT_EQ(GuestMemory::wrap_existing(0, {}), nullptr);
  memory.reset();
  // Not unmapped by the wrapper.
  EXPECT_EQ(buffer[0x10], 0x10);
}

}  // namespace
}  // namespace vhost_vsock::memory
