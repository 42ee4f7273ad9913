#include "vsock/connection/credit_budget.h"

#include <gtest/gtest.h>

namespace vhost_vsock::vsock {
namespace {

constexpr uint32_t kKiB = 1024;

TEST(CreditBudget, DefaultLimitIs64KiBPerConnectionWithAQuarterAsFloor) {
  std::string error;
  const auto sizes = derive_credit_budget(256 * kKiB, 0, 16384, &error);
  ASSERT_TRUE(sizes) << error;
  EXPECT_EQ(sizes->limit, uint64_t{16384} * 64 * kKiB);
  EXPECT_EQ(sizes->floor, 16 * kKiB);
  EXPECT_EQ(sizes->window, 256 * kKiB);
}

TEST(CreditBudget, FloorNeverExceedsTheWindow) {
  std::string error;
  const auto sizes = derive_credit_budget(8 * kKiB, 1ULL << 30, 4, &error);
  ASSERT_TRUE(sizes) << error;
  EXPECT_EQ(sizes->floor, 8 * kKiB);
}

TEST(CreditBudget, RefusesALimitThatCannotGiveEveryConnectionAPage) {
  std::string error;
  EXPECT_FALSE(derive_credit_budget(256 * kKiB, uint64_t{1024} * kKiB, 1024, &error));
  EXPECT_NE(error.find("raise the limit to 4194304"), std::string::npos) << error;
  // A window below a page only needs the window.
  EXPECT_TRUE(derive_credit_budget(1024, uint64_t{1024} * kKiB, 1024, &error));
}

TEST(CreditBudget, GrowthComesFromThePoolAndFloorsAreAlwaysThere) {
  // Room for 4 connections: 4 floors of 32 KiB, and a 384 KiB pool.
  const CreditBudgetSizes sizes{256 * kKiB, 32 * kKiB, uint64_t{512} * kKiB};
  CreditBudget budget(sizes, 4);
  EXPECT_EQ(budget.pool_available(), 384 * kKiB);

  uint32_t a = budget.join();
  uint32_t b = budget.join();
  EXPECT_EQ(a, 32 * kKiB);
  a = budget.rehold(a, 256 * kKiB);
  EXPECT_EQ(a, 256 * kKiB);
  b = budget.rehold(b, 256 * kKiB);  // only 160 KiB of the pool left
  EXPECT_EQ(b, 192 * kKiB);
  EXPECT_EQ(budget.pool_available(), 0U);
  EXPECT_EQ(budget.reserved(), 448 * kKiB);

  // Two more connections still get their floors: the limit is never passed.
  const uint32_t c = budget.join();
  const uint32_t d = budget.join();
  EXPECT_EQ(c + d, 64 * kKiB);
  EXPECT_EQ(budget.reserved(), budget.limit());
  EXPECT_EQ(budget.rehold(c, 256 * kKiB), 32 * kKiB);

  // Shrinking gives back to the pool, never below the floor.
  a = budget.rehold(a, 0);
  EXPECT_EQ(a, 32 * kKiB);
  EXPECT_EQ(budget.pool_available(), 224 * kKiB);
  budget.leave(b);
  EXPECT_EQ(budget.pool_available(), 384 * kKiB);
  budget.leave(a);
  budget.leave(c);
  budget.leave(d);
  EXPECT_EQ(budget.reserved(), 0U);
}

}  // namespace
}  // namespace vhost_vsock::vsock
