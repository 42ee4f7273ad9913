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

TEST(JsonLineTest, PrintVerifiedEndsTheLineWithVerifiedAndReturnsZero) {
  ::testing::internal::CaptureStdout();
  const int status = JsonLine().add("bench", "x").add("count", 3).print_verified();
  EXPECT_EQ(::testing::internal::GetCapturedStdout(), "{\"bench\": \"x\", \"count\": 3, \"verified\": true}\n");
  EXPECT_EQ(status, 0);
}

int g_ran_size = 0;

TEST(RunModesTest, RunsTheNamedModeWithItsOptions) {
  char program[] = "bench_x", mode[] = "second", option[] = "--size", value[] = "7";
  char* argv[] = {program, mode, option, value};
  const int status = run_modes(4, argv, "bench_x first|second",
                               {{"first", [](const Options&) { return 10; }}, {"second", [](const Options& options) {
                                                                                 g_ran_size =
                                                                                     options.integer("size", 0);
                                                                                 return 11;
                                                                               }}});
  EXPECT_EQ(status, 11);
  EXPECT_EQ(g_ran_size, 7);
}

TEST(RunModesTest, AnUnknownOrMissingModeReturnsTwo) {
  char program[] = "bench_x", mode[] = "third";
  char* argv[] = {program, mode};
  EXPECT_EQ(run_modes(2, argv, "bench_x first", {{"first", [](const Options&) { return 0; }}}), 2);
  EXPECT_EQ(run_modes(1, argv, "bench_x first", {{"first", [](const Options&) { return 0; }}}), 2);
}

}  // namespace
}  // namespace vhost_vsock::bench
