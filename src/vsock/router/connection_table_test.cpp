#include "vsock/router/connection_table.h"

#include <gtest/gtest.h>
#include <sys/socket.h>

#include <chrono>
#include <unordered_set>

#include "vsock/router/connection_timers.h"
#include "vsock/transport/unix_stream_endpoint.h"

namespace vhost_vsock::vsock {
namespace {

using namespace std::chrono_literals;

class ConnectionTableTest : public ::testing::Test {
 protected:
  std::unique_ptr<RoutedConnection> make(uint32_t local, uint32_t peer, ConnectionState state, uint64_t cid = 3) {
    int fds[2];
    EXPECT_EQ(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, fds), 0);
    peers_.emplace_back(fds[1]);
    auto endpoint = std::make_unique<UnixStreamEndpoint>(loop_, base::UniqueFd(fds[0]));
    return std::make_unique<RoutedConnection>(ConnectionParams{cid, local, peer}, std::move(endpoint), state,
                                              next_id_++);
  }
  base::EventLoop loop_;
  std::vector<base::UniqueFd> peers_;
  uint64_t next_id_ = 1;
};

TEST(ConnectionKeyTest, EveryFieldCounts) {
  const ConnectionKey key{3, 1000, 2000};
  EXPECT_EQ(key, (ConnectionKey{3, 1000, 2000}));
  EXPECT_NE(key, (ConnectionKey{4, 1000, 2000}));
  EXPECT_NE(key, (ConnectionKey{3, 2000, 1000}));
  std::unordered_set<size_t> hashes;
  for (uint32_t port = 0; port < 1000; ++port) hashes.insert(ConnectionKeyHash{}({3, 5000, port}));
  EXPECT_EQ(hashes.size(), 1000u);
  EXPECT_NE(ConnectionKeyHash{1}(key), ConnectionKeyHash{2}(key)) << "the seed counts";
}

TEST_F(ConnectionTableTest, FindInsertEraseAndLocalPortCounts) {
  ConnectionTable table(3);
  EXPECT_TRUE(table.has_room());
  RoutedConnection& a = table.insert(make(5000, 1, ConnectionState::kEstablished));
  table.insert(make(5000, 2, ConnectionState::kEstablished));
  EXPECT_EQ(table.find({3, 5000, 1}), &a);
  EXPECT_EQ(table.find({4, 5000, 1}), nullptr) << "another VM's CID is another connection";
  EXPECT_TRUE(table.local_port_in_use(5000));
  EXPECT_TRUE(table.has_room());
  EXPECT_FALSE(table.has_room(1)) << "host peers still handshaking count against the cap";
  table.erase(a);
  EXPECT_EQ(table.find({3, 5000, 1}), nullptr);
  EXPECT_TRUE(table.local_port_in_use(5000)) << "still used by the second connection";
  table.erase(*table.find({3, 5000, 2}));
  EXPECT_FALSE(table.local_port_in_use(5000));
  EXPECT_EQ(table.size(), 0u);
}

TEST_F(ConnectionTableTest, FindForgetsAnErasedConnection) {
  ConnectionTable table(3);
  RoutedConnection& old = table.insert(make(5000, 1, ConnectionState::kEstablished));
  ASSERT_EQ(table.find({3, 5000, 1}), &old);
  table.erase(old);
  RoutedConnection& fresh = table.insert(make(5000, 1, ConnectionState::kEstablished));
  EXPECT_EQ(table.find({3, 5000, 1}), &fresh) << "same key, new connection";
  table.clear();
  EXPECT_EQ(table.find({3, 5000, 1}), nullptr);
}

TEST_F(ConnectionTableTest, TimerFiresForItsConnectionOnly) {
  ConnectionTable table(8);
  std::vector<uint64_t> expired;
  ConnectionTimers timers(loop_, table, {20ms, 20ms}, [&](RoutedConnection& c) { expired.push_back(c.id); });
  RoutedConnection& waiting = table.insert(make(1, 1, ConnectionState::kAwaitingResponse));
  timers.arm_for_state(waiting);
  RoutedConnection& established = table.insert(make(2, 2, ConnectionState::kEstablished));
  timers.arm_for_state(established);
  EXPECT_EQ(established.timer, 0u) << "an established connection has no timer";
  // A stale timer: its connection is replaced by a new one under the same key.
  RoutedConnection& old = table.insert(make(3, 3, ConnectionState::kAwaitingResponse));
  timers.arm_for_state(old);
  const uint64_t old_timer = old.timer;
  table.erase(old);
  RoutedConnection& fresh = table.insert(make(3, 3, ConnectionState::kEstablished));
  EXPECT_NE(old_timer, 0u);
  const auto until = std::chrono::steady_clock::now() + 200ms;
  while (std::chrono::steady_clock::now() < until) loop_.run_once(5ms);
  ASSERT_EQ(expired.size(), 1u);
  EXPECT_EQ(expired[0], waiting.id);
  EXPECT_EQ(waiting.timer, 0u);
  EXPECT_EQ(fresh.timer, 0u);
}

TEST_F(ConnectionTableTest, TimerAfterTheTimersAreGoneIsIgnored) {
  ConnectionTable table(8);
  int fired = 0;
  {
    ConnectionTimers timers(loop_, table, {10ms, 10ms}, [&](RoutedConnection&) { ++fired; });
    timers.arm_for_state(table.insert(make(1, 1, ConnectionState::kAwaitingResponse)));
  }
  const auto until = std::chrono::steady_clock::now() + 100ms;
  while (std::chrono::steady_clock::now() < until) loop_.run_once(5ms);
  EXPECT_EQ(fired, 0);
}

}  // namespace
}  // namespace vhost_vsock::vsock
