// When a stream stalls for the guest's credit, the device waits for the
// CREDIT_UPDATE a guest sends unasked and asks (CREDIT_REQUEST) only if it
// does not come within credit_request_delay.
#include <gtest/gtest.h>

#include <chrono>
#include <optional>
#include <vector>

#include "vsock/muxer/muxer_test_fixture.h"

namespace vhost_vsock::vsock::test {
namespace {

using Clock = std::chrono::steady_clock;

class CreditRequestTest : public MuxerTest {
 protected:
  static constexpr std::chrono::milliseconds kDelay = 1000ms;
  MuxerLimits limits() override {
    MuxerLimits l = MuxerTest::limits();
    l.credit_request_delay = kDelay;
    return l;
  }

  // Runs the loop until a CREDIT_REQUEST reaches the guest; returns when, or nothing.
  std::optional<Clock::time_point> wait_for_credit_request(std::chrono::milliseconds max) {
    std::optional<Clock::time_point> at;
    h->run_until(
        [&] {
          if (count_op(h->received(), Op::kCreditRequest) > 0) at = Clock::now();
          return at.has_value();
        },
        max);
    return at;
  }

  void return_credit(uint32_t fwd_cnt) {
    h->guest_fwd_cnt = fwd_cnt;
    h->send(h->guest_header(Op::kCreditUpdate, kGuestPort, kHostPort));
  }
};

TEST_F(CreditRequestTest, AStalledStreamAsksOnlyAfterTheDelay) {
  base::UniqueFd host;
  const auto stalled = Clock::now();
  auto packets = host_writes_beyond_guest_credit(host, 8192, 20000);
  EXPECT_EQ(rw_payload_bytes(packets), 8192u);
  EXPECT_EQ(count_op(packets, Op::kCreditRequest), 0u);
  EXPECT_EQ(h->stats().credit_stalls, 1u);
  EXPECT_EQ(h->stats().credit_requests, 0u);
  // This guest never returns credit unasked: the device asks once the delay is over.
  const auto asked = wait_for_credit_request(kDelay + 5000ms);
  ASSERT_TRUE(asked.has_value());
  EXPECT_GE(*asked - stalled, kDelay);
  EXPECT_EQ(h->stats().credit_requests, 1u);
  return_credit(8192);
  EXPECT_EQ(rw_payload_bytes(drain()), 8192u);
}

TEST_F(CreditRequestTest, CreditReturnedUnaskedMeansNoRequest) {
  base::UniqueFd host;
  EXPECT_EQ(rw_payload_bytes(host_writes_beyond_guest_credit(host, 8192, 12000)), 8192u);
  EXPECT_EQ(h->stats().credit_stalls, 1u);
  return_credit(8192);  // as Linux does once its reader freed the window
  EXPECT_EQ(rw_payload_bytes(drain()), 12000u - 8192u);
  EXPECT_EQ(h->stats().credit_stalls, 1u);
  h->run_for(kDelay + 200ms);  // past the timer armed for the stall
  EXPECT_EQ(count_op(h->received(), Op::kCreditRequest), 0u);
  EXPECT_EQ(h->stats().credit_requests, 0u);
}

// The timer armed for the first stall finds a second one: that stall gets a
// full delay of its own before the device asks.
TEST_F(CreditRequestTest, ALaterStallGetsAFullDelayOfItsOwn) {
  base::UniqueFd host;
  EXPECT_EQ(rw_payload_bytes(host_writes_beyond_guest_credit(host, 8192, 20000)), 8192u);
  h->run_for(kDelay / 2);
  EXPECT_EQ(count_op(h->received(), Op::kCreditRequest), 0u);
  const auto second = Clock::now();
  return_credit(8192);
  EXPECT_EQ(rw_payload_bytes(drain()), 8192u);  // 3,616 bytes still wait: a second stall
  EXPECT_EQ(h->stats().credit_stalls, 2u);
  const auto asked = wait_for_credit_request(2 * kDelay + 5000ms);
  ASSERT_TRUE(asked.has_value());
  EXPECT_GE(*asked - second, kDelay);
  EXPECT_EQ(h->stats().credit_requests, 1u);
}

}  // namespace
}  // namespace vhost_vsock::vsock::test
