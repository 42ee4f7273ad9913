#include "bench_common.h"

#include <gtest/gtest.h>

namespace vhost_vsock::bench {
namespace {

TEST(PatternTest, SameSeedAndOffsetGiveSameBytes) {
  Pattern a(3, 4096), b(3, 4096);
  EXPECT_EQ(0, std::memcmp(a.at(12345), b.at(12345), 4096));
  EXPECT_TRUE(a.matches(12345, b.at(12345), 4096));
}

TEST(PatternTest, WrapsAroundThePeriodSeamlessly) {
  Pattern p(5, 64);
  // A chunk that straddles the period boundary equals the start of the stream.
  const uint64_t near_end = Pattern::kPeriod - 10;
  EXPECT_EQ(0, std::memcmp(p.at(near_end) + 10, p.at(0), 54));
  EXPECT_TRUE(p.matches(Pattern::kPeriod + 3, p.at(3), 60));
}

TEST(PatternTest, DetectsShiftedDuplicatedAndCorruptedData) {
  Pattern p(9, 65536);
  std::vector<uint8_t> data(p.at(65536), p.at(65536) + 65536);
  EXPECT_TRUE(p.matches(65536, data.data(), data.size()));
  EXPECT_FALSE(p.matches(0, data.data(), data.size()));          // a lost 64 KiB write
  EXPECT_FALSE(p.matches(2 * 65536, data.data(), data.size()));  // a duplicated one
  data[40000] ^= 1;
  EXPECT_FALSE(p.matches(65536, data.data(), data.size()));
}

TEST(PatternTest, SeedsDiffer) {
  Pattern a(1, 256), b(2, 256);
  EXPECT_NE(0, std::memcmp(a.at(0), b.at(0), 256));
}

TEST(PatternTest, MatchesLongerThanMaxChunkInPieces) {
  Pattern p(4, 100);
  std::vector<uint8_t> data;
  for (uint64_t off = 1000; off < 1000 + 1000; off += 100) data.insert(data.end(), p.at(off), p.at(off) + 100);
  EXPECT_TRUE(p.matches(1000, data.data(), data.size()));
  EXPECT_FALSE(p.matches(1001, data.data(), data.size()));
}

TEST(ParseSizeTest, AcceptsSuffixesAndRejectsJunk) {
  EXPECT_EQ(parse_size("4096"), 4096u);
  EXPECT_EQ(parse_size("64K"), 65536u);
  EXPECT_EQ(parse_size("2m"), 2u << 20);
  EXPECT_EQ(parse_size("1G"), 1ull << 30);
  EXPECT_FALSE(parse_size(""));
  EXPECT_FALSE(parse_size("K"));
  EXPECT_FALSE(parse_size("12x"));
  EXPECT_FALSE(parse_size("-1"));
  EXPECT_FALSE(parse_size("99999999999999999999"));
  EXPECT_FALSE(parse_size("17179869184G"));  // overflows after the multiplier
}

TEST(JsonLineTest, PrintsOneFlatObject) {
  ::testing::internal::CaptureStdout();
  JsonLine().add("bench", "x").add("n", uint64_t{3}).add("ok", true).add("v", 1.5).print();
  EXPECT_EQ(::testing::internal::GetCapturedStdout(), "{\"bench\": \"x\", \"n\": 3, \"ok\": true, \"v\": 1.5}\n");
}

}  // namespace
}  // namespace vhost_vsock::bench
