#include "base/log_limiter.h"

#include <gtest/gtest.h>

#include <chrono>
#include <string>

#include "testing/captured_log.h"

namespace vhost_vsock::base {
namespace {

using testing::CapturedLog;

TEST(LogLimiterTest, AllowsPerWindowThenSummarizesAtTheNextWindow) {
  CapturedLog log;
  LogLimiter limiter("test lines", 3);
  const auto t0 = LogLimiter::Clock::now();
  int allowed = 0;
  for (int i = 0; i < 10; ++i) allowed += limiter.allow(t0) ? 1 : 0;
  EXPECT_EQ(allowed, 3);
  EXPECT_EQ(limiter.suppressed_in_window(), 7u);
  EXPECT_EQ(log.text().find("suppressed"), std::string::npos);
  EXPECT_TRUE(limiter.allow(t0 + LogLimiter::kWindow));
  EXPECT_NE(log.text().find("7 more test lines suppressed"), std::string::npos) << log.text();
  EXPECT_EQ(limiter.suppressed_in_window(), 0u);
}

TEST(LogLimiterTest, HonoursAShorterWindow) {
  CapturedLog log;
  LogLimiter limiter("short-window lines", 1, std::chrono::milliseconds(250));
  const auto t0 = LogLimiter::Clock::now();
  EXPECT_TRUE(limiter.allow(t0));
  EXPECT_FALSE(limiter.allow(t0 + std::chrono::milliseconds(249)));
  EXPECT_TRUE(limiter.allow(t0 + std::chrono::milliseconds(250)));
  EXPECT_NE(log.text().find("1 more short-window lines suppressed in the last 250 ms"), std::string::npos)
      << log.text();
}

TEST(LogLimiterTest, SummarizesWhatIsLeftWhenDestroyed) {
  CapturedLog log;
  {
    LogLimiter limiter("test lines", 1);
    for (int i = 0; i < 5; ++i) limiter.allow();
  }
  EXPECT_NE(log.text().find("4 more test lines suppressed"), std::string::npos) << log.text();
}

TEST(LogLimiterTest, NothingSuppressedWritesNoSummary) {
  CapturedLog log;
  {
    LogLimiter limiter("test lines", 5);
    limiter.allow();
  }
  EXPECT_EQ(log.text(), "");
}

}  // namespace
}  // namespace vhost_vsock::base
