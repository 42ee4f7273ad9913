#include "vsock/router/port_allocator.h"

#include <gtest/gtest.h>

#include <set>

namespace vhost_vsock::vsock {
namespace {

TEST(LocalPortAllocator, RoundRobinFromTwoToTheThirty) {
  LocalPortAllocator allocator;
  auto free = [](uint32_t) { return false; };
  EXPECT_EQ(allocator.allocate(free, 1), 1u << 30);
  EXPECT_EQ(allocator.allocate(free, 1), (1u << 30) + 1);
  EXPECT_EQ(allocator.allocate(free, 1), (1u << 30) + 2);
}

TEST(LocalPortAllocator, SkipsPortsInUse) {
  LocalPortAllocator allocator;
  std::set<uint32_t> used{1u << 30, (1u << 30) + 1, (1u << 30) + 3};
  auto in_use = [&](uint32_t port) { return used.contains(port); };
  EXPECT_EQ(allocator.allocate(in_use, 10), (1u << 30) + 2);
  EXPECT_EQ(allocator.allocate(in_use, 10), (1u << 30) + 4);
}

TEST(LocalPortAllocator, WrapsBeforeTwoToTheThirtyOne) {
  LocalPortAllocator allocator((1u << 31) - 2);
  auto free = [](uint32_t) { return false; };
  EXPECT_EQ(allocator.allocate(free, 1), (1u << 31) - 2);
  EXPECT_EQ(allocator.allocate(free, 1), (1u << 31) - 1);
  EXPECT_EQ(allocator.allocate(free, 1), 1u << 30);
}

TEST(LocalPortAllocator, GivesUpAfterTheBound) {
  LocalPortAllocator allocator;
  uint64_t calls = 0;
  auto all_used = [&](uint32_t) {
    ++calls;
    return true;
  };
  EXPECT_FALSE(allocator.allocate(all_used, 100));
  EXPECT_EQ(calls, 100u);
}

TEST(LocalPortAllocator, OutOfRangeStartIsClamped) {
  LocalPortAllocator allocator(5);
  EXPECT_EQ(allocator.peek_next(), 1u << 30);
}

}  // namespace
}  // namespace vhost_vsock::vsock
