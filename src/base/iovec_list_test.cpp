#include "base/iovec_list.h"

#include <gtest/gtest.h>

#include <array>
#include <string>

namespace vhost_vsock::base {
namespace {

// A two-entry list over the bytes of `a` and `b`.
IovecList list_of(std::string& a, std::string& b) {
  IovecList list;
  list.push_back(a.data(), a.size());
  list.push_back(b.data(), b.size());
  return list;
}

TEST(IovecList, ConsumeFrontDropsWholeAndPartialEntries) {
  std::string a = "abc", b = "defgh";
  IovecList list = list_of(a, b);
  list.consume_front(4);
  ASSERT_EQ(list.size(), 1u);
  EXPECT_EQ(list.total_bytes(), 4u);
  EXPECT_EQ(*static_cast<char*>(list[0].iov_base), 'e');
}

TEST(IovecList, ClipKeepsPrefixOnly) {
  std::string a = "abc", b = "defgh";
  IovecList list = list_of(a, b);
  list.clip(5);
  EXPECT_EQ(list.total_bytes(), 5u);
  EXPECT_EQ(list.size(), 2u);
  list.clip(0);
  EXPECT_TRUE(list.empty());
}

TEST(IovecList, ZeroLengthEntriesAreNotStored) {
  char c = 0;
  IovecList list;
  list.push_back(&c, 0);
  EXPECT_TRUE(list.empty());
}

TEST(IovecCopy, CopiesAcrossSegmentBoundariesWithOffset) {
  std::string a = "0123", b = "456789";
  std::array<iovec, 2> iovs{iovec{a.data(), a.size()}, iovec{b.data(), b.size()}};
  std::array<uint8_t, 5> out{};
  EXPECT_EQ(copy_from_iovecs(iovs, 2, out), 5u);
  EXPECT_EQ(std::string(out.begin(), out.end()), "23456");
  std::array<uint8_t, 3> in{'x', 'y', 'z'};
  EXPECT_EQ(copy_to_iovecs(iovs, 3, in), 3u);
  EXPECT_EQ(a + b, "012xyz6789");
  IovecList slice;
  slice_iovecs(iovs, 1, 4, slice);
  EXPECT_EQ(slice.total_bytes(), 4u);
  EXPECT_EQ(slice.size(), 2u);
}

}  // namespace
}  // namespace vhost_vsock::base
