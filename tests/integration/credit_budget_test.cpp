// Guest->host memory (--tx-memory-limit): the VM's budget is shared out as
// the credit its connections advertise. Every connection gets at least the
// floor, the first ones get the whole window while the pool lasts, and a
// window grows again once another connection leaves.
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "fixture.h"

namespace vhost_vsock::integration {
namespace {

constexpr size_t kKiB = 1024;

class CreditBudgetTest : public DaemonTest {};

TEST_F(CreditBudgetTest, WindowsShareTheLimitAndGrowBackWhenAnotherConnectionLeaves) {
  // 8 connections of 16 KiB floors (512 KiB / 8 / 4) and a 384 KiB pool above them.
  DaemonOptions options;
  options.extra_args = {"--max-connections", "8", "--tx-memory-limit", "524288"};
  start(options);
  HostListener listener(daemon().uds_port_path(4000));
  auto first = guest_connects(listener, 4000);
  auto second = guest_connects(listener, 4000);
  auto third = guest_connects(listener, 4000);
  ASSERT_TRUE(first.guest.established() && second.guest.established() && third.guest.established());
  EXPECT_EQ(first.guest.peer_buf_alloc(), 256 * kKiB) << "the whole --tx-buffer-size window";
  EXPECT_EQ(second.guest.peer_buf_alloc(), 160 * kKiB) << "what the pool had left, 144 KiB, above its floor";
  EXPECT_EQ(third.guest.peer_buf_alloc(), 16 * kKiB) << "the floor";

  // The third stream still moves data, within its 16 KiB window.
  std::vector<uint8_t> data(1 << 20);
  fill_pattern(data, 7, 0);
  std::string received;
  {
    std::jthread reader([&] { received = read_exactly(third.host.get(), 256 * kKiB, Millis(10000)); });
    EXPECT_TRUE(third.guest.send(std::span<const uint8_t>(data).first(256 * kKiB), Millis(10000)));
  }
  ASSERT_EQ(received.size(), 256 * kKiB);
  EXPECT_EQ(std::memcmp(received.data(), data.data(), received.size()), 0);
  EXPECT_EQ(third.guest.peer_buf_alloc(), 16 * kKiB) << "the pool is empty while the first two stay open";

  // The first connection goes away; its 240 KiB return to the pool, and the
  // third connection's next credit updates take them.
  first.guest.close();
  first.host.reset();
  ASSERT_TRUE(first.guest.wait_closed(Millis(5000)));
  {
    std::jthread reader([&] { received = read_exactly(third.host.get(), data.size() - 256 * kKiB, Millis(10000)); });
    EXPECT_TRUE(third.guest.send(std::span<const uint8_t>(data).subspan(256 * kKiB), Millis(10000)));
  }
  ASSERT_EQ(received.size(), data.size() - 256 * kKiB);
  EXPECT_EQ(std::memcmp(received.data(), data.data() + 256 * kKiB, received.size()), 0);
  EXPECT_EQ(third.guest.peer_buf_alloc(), 256 * kKiB);
  EXPECT_EQ(second.guest.peer_buf_alloc(), 160 * kKiB);
}

TEST_F(CreditBudgetTest, DefaultWindowIs256KiB) {
  start();
  HostListener listener(daemon().uds_port_path(4001));
  auto c = guest_connects(listener, 4001);
  ASSERT_TRUE(c.guest.established());
  EXPECT_EQ(c.guest.peer_buf_alloc(), 256 * kKiB);
}

}  // namespace
}  // namespace vhost_vsock::integration
