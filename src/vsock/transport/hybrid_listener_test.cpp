#include "vsock/transport/hybrid_listener.h"

#include <gtest/gtest.h>
#include <linux/sockios.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/un.h>

#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "testing/loop_wait.h"
#include "vsock/transport/send_buffer_test_support.h"

namespace vhost_vsock::vsock {
namespace {

using namespace std::chrono_literals;
using Clock = base::EventLoop::Clock;
using testing::kTimerSlack;

constexpr auto kHandshakeTimeout = 300ms;

base::UniqueFd connect_unix(const std::string& path, int type = SOCK_STREAM) {
  base::UniqueFd fd(::socket(AF_UNIX, type | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
  sockaddr_un address{};
  address.sun_family = AF_UNIX;
  std::strncpy(address.sun_path, path.c_str(), sizeof(address.sun_path) - 1);
  if (::connect(fd.get(), reinterpret_cast<const sockaddr*>(&address), sizeof(address)) != 0) return {};
  return fd;
}

base::UniqueFd listen_unix(const std::string& path) {
  base::UniqueFd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
  sockaddr_un address{};
  address.sun_family = AF_UNIX;
  std::strncpy(address.sun_path, path.c_str(), sizeof(address.sun_path) - 1);
  if (::bind(fd.get(), reinterpret_cast<const sockaddr*>(&address), sizeof(address)) != 0) return {};
  if (::listen(fd.get(), 16) != 0) return {};
  return fd;
}

// Returns true once the peer is closed (read returns 0 or ECONNRESET).
bool peer_closed(int fd) {
  char c;
  ssize_t n = ::recv(fd, &c, 1, MSG_DONTWAIT | MSG_PEEK);
  return n == 0 || (n < 0 && errno == ECONNRESET);
}

// Bytes written on an AF_UNIX socket that its peer has not read yet.
int unread_by_peer(int fd) {
  int bytes = -1;
  return ::ioctl(fd, SIOCOUTQ, &bytes) == 0 ? bytes : -1;
}

struct Connected {
  std::unique_ptr<HostEndpoint> endpoint;
  uint32_t guest_port;
  std::string early_bytes;
};

struct HybridListenerTest : ::testing::Test {
  void SetUp() override {
    char dir_template[] = "/tmp/vhlXXXXXX";
    ASSERT_NE(::mkdtemp(dir_template), nullptr);
    dir = dir_template;
    path = dir + "/v";
  }
  void TearDown() override {
    listener.reset();
    ::unlink(path.c_str());
    ::rmdir(dir.c_str());
  }

  HybridListener::Callbacks callbacks() {
    return {[this] { return admit; },
            [this](std::unique_ptr<HostEndpoint> endpoint, uint32_t port, std::span<const uint8_t> early) {
              connected.push_back({std::move(endpoint), port, std::string(early.begin(), early.end())});
            },
            [this](const char* reason) { failures.emplace_back(reason); }};
  }
  void start(bool seqpacket = false) {
    listener = std::make_unique<HybridListener>(loop, HybridListener::Options{path, kHandshakeTimeout, 64, seqpacket},
                                                callbacks());
  }
  template <typename Done>
  bool run_until(Done&& done) {
    return testing::run_until(loop, std::forward<Done>(done));
  }

  base::EventLoop loop;
  std::string dir;
  std::string path;
  std::unique_ptr<HybridListener> listener;
  bool admit = true;
  std::vector<Connected> connected;
  std::vector<std::string> failures;
};

TEST_F(HybridListenerTest, CompletedLineHandsOverAnEndpointThePortAndTheBytesAfterIt) {
  start();
  auto host = connect_unix(path);
  ASSERT_EQ(::write(host.get(), "CONNECT 40000\nearly bytes", 25), 25);
  ASSERT_TRUE(run_until([&] { return !connected.empty(); }));
  EXPECT_EQ(connected.size(), 1u);
  EXPECT_EQ(connected[0].guest_port, 40000u);
  EXPECT_EQ(connected[0].early_bytes, "early bytes");
  EXPECT_EQ(listener->pending(), 0u);
  EXPECT_EQ(send_buffer_test::send_buffer_of(*connected[0].endpoint), send_buffer_test::expected_host_send_buffer());
  // The endpoint greets the host peer once the guest accepts.
  std::array<uint8_t, kMaxGreetingBytes> greeting{};
  const size_t n = connected[0].endpoint->accept_greeting(1073741824, greeting);
  EXPECT_EQ(std::string(greeting.begin(), greeting.begin() + static_cast<std::ptrdiff_t>(n)), "OK 1073741824\n");
  EXPECT_TRUE(failures.empty());
}

TEST_F(HybridListenerTest, ConnectLineSplitAcrossWrites) {
  start();
  auto host = connect_unix(path);
  for (const char* piece : {"con", "NECT 4", "0000", "\r"}) {
    ASSERT_GT(::write(host.get(), piece, std::strlen(piece)), 0);
    // The listener reads each piece on its own before the next is written.
    ASSERT_TRUE(run_until([&] { return unread_by_peer(host.get()) == 0; })) << piece;
    EXPECT_TRUE(connected.empty()) << "handed over before the line ended";
  }
  ASSERT_EQ(::write(host.get(), "\n", 1), 1);
  ASSERT_TRUE(run_until([&] { return !connected.empty(); }));
  EXPECT_EQ(connected.size(), 1u);
  EXPECT_EQ(connected[0].guest_port, 40000u);
  EXPECT_EQ(connected[0].early_bytes, "");
}

TEST_F(HybridListenerTest, MalformedOrOverlongConnectLineClosesThatPeerOnly) {
  start();
  auto good = connect_unix(path);
  auto bad = connect_unix(path);
  auto long_one = connect_unix(path);
  ASSERT_EQ(::write(bad.get(), "HELLO 12\n", 9), 9);
  std::string overlong(100, '1');
  ASSERT_EQ(::write(long_one.get(), overlong.data(), overlong.size()), 100);
  ASSERT_TRUE(run_until([&] { return failures.size() >= 2; }));
  EXPECT_TRUE(peer_closed(bad.get()));
  EXPECT_TRUE(peer_closed(long_one.get()));
  EXPECT_FALSE(peer_closed(good.get()));
  EXPECT_EQ(failures.size(), 2u);
  EXPECT_EQ(listener->pending(), 1u);
  EXPECT_TRUE(connected.empty());
}

// Closed when its timeout runs out: not before (the clock starts before the
// connect, so no earlier than the timeout after it), and not much after.
TEST_F(HybridListenerTest, SilentHostPeerTimesOut) {
  start();
  const auto connected_by = Clock::now();
  auto silent = connect_unix(path);
  ASSERT_EQ(::write(silent.get(), "CONN", 4), 4);
  ASSERT_TRUE(run_until([&] { return unread_by_peer(silent.get()) == 0; }));
  // Still waiting for its line, unless a stalled test thread let the timeout pass.
  if (Clock::now() - connected_by < kHandshakeTimeout) {
    EXPECT_EQ(listener->pending(), 1u);
  }
  ASSERT_TRUE(run_until([&] { return peer_closed(silent.get()); }));
  const auto closed_after = Clock::now() - connected_by;
  EXPECT_GE(closed_after, kHandshakeTimeout) << "closed before its handshake timeout";
  EXPECT_LT(closed_after, kHandshakeTimeout + kTimerSlack) << "closed long after its handshake timeout";
  ASSERT_EQ(failures.size(), 1u);
  EXPECT_EQ(failures[0], "no CONNECT line before the handshake timeout");
  EXPECT_EQ(listener->pending(), 0u);
}

// The socket of a finished handshake stays in epoll until its endpoint
// watches; meanwhile the loop must sleep, even once the peer has sent more
// and hung up, and the endpoint must then see all of it.
void expect_quiet_until_watched(HybridListenerTest& test, int type) {
  test.start(type == SOCK_SEQPACKET);
  auto host = connect_unix(test.path, type);
  ASSERT_EQ(::send(host.get(), "CONNECT 7\n", 10, 0), 10);
  ASSERT_TRUE(test.run_until([&] { return !test.connected.empty(); }));
  ASSERT_EQ(test.connected.size(), 1u);
  EXPECT_EQ(send_buffer_test::send_buffer_of(*test.connected[0].endpoint),
            send_buffer_test::expected_host_send_buffer());
  ASSERT_EQ(::send(host.get(), "data", 4, 0), 4);
  host.reset();
  test.loop.run_once(20ms);  // takes whatever those edges queued
  const auto start = base::EventLoop::Clock::now();
  for (int i = 0; i < 4; ++i) test.loop.run_once(25ms);
  EXPECT_GE(base::EventLoop::Clock::now() - start, 90ms) << "the loop spun on a handed-over socket";
  HostEndpoint& endpoint = *test.connected[0].endpoint;
  HostEvents seen;
  endpoint.watch([&](HostEvents events) { seen = events; });
  test.loop.run_once(1000ms);
  EXPECT_TRUE(seen.readable);
  std::array<uint8_t, 16> buffer{};
  const iovec into{buffer.data(), buffer.size()};
  const auto received = endpoint.receive(std::span<const iovec>(&into, 1));
  ASSERT_EQ(received.status, HostEndpoint::ReceiveStatus::kData);
  EXPECT_EQ(std::string(buffer.begin(), buffer.begin() + static_cast<std::ptrdiff_t>(received.bytes)), "data");
  EXPECT_TRUE(test.failures.empty());
}

TEST_F(HybridListenerTest, AHandedOverStreamStaysQuietUntilItsEndpointWatches) {
  expect_quiet_until_watched(*this, SOCK_STREAM);
}

TEST_F(HybridListenerTest, AHandedOverSeqpacketStaysQuietUntilItsEndpointWatches) {
  expect_quiet_until_watched(*this, SOCK_SEQPACKET);
}

// The router refuses a finished peer (connection cap, no free port) by
// dropping its endpoint unwatched: the socket closes and leaves epoll, so
// the next peer, given the same fd number, is watched normally.
TEST_F(HybridListenerTest, AnEndpointDroppedUnwatchedClosesAndFreesItsFdNumber) {
  start();
  for (int round = 0; round < 3; ++round) {
    auto host = connect_unix(path);
    ASSERT_EQ(::write(host.get(), "CONNECT 9\n", 10), 10);
    ASSERT_TRUE(run_until([&] { return !connected.empty(); })) << "round " << round;
    ASSERT_EQ(connected.size(), 1u) << "round " << round;
    EXPECT_EQ(listener->pending(), 0u);
    connected.clear();
    EXPECT_TRUE(peer_closed(host.get()));
  }
  EXPECT_TRUE(failures.empty());
}

TEST_F(HybridListenerTest, PeerRefusedByAdmitIsClosedBeforeItsHandshake) {
  start();
  admit = false;
  auto refused = connect_unix(path);
  ASSERT_EQ(::write(refused.get(), "CONNECT 1\n", 10), 10);
  ASSERT_TRUE(run_until([&] { return peer_closed(refused.get()); }));
  EXPECT_EQ(listener->pending(), 0u);
  EXPECT_TRUE(connected.empty());
}

TEST_F(HybridListenerTest, PeersStillInTheirHandshakeCloseWithTheListener) {
  start();
  auto waiting = connect_unix(path);
  ASSERT_TRUE(run_until([&] { return listener->pending() == 1; }));
  listener.reset();
  EXPECT_TRUE(peer_closed(waiting.get()));
}

TEST_F(HybridListenerTest, ListenerSocketFileIsRemovedOnExit) {
  start();
  listener.reset();
  EXPECT_NE(::access(path.c_str(), F_OK), 0);
}

TEST_F(HybridListenerTest, ListenerLeavesASuccessorsSocketFileOnExit) {
  start();
  ASSERT_EQ(::unlink(path.c_str()), 0);  // e.g. an operator started another daemon on the path
  auto successor = listen_unix(path);
  ASSERT_TRUE(successor.valid());
  listener.reset();
  EXPECT_EQ(::access(path.c_str(), F_OK), 0);
}

TEST_F(HybridListenerTest, ReplacesStaleSocketRefusesLiveOneAndNamesThePath) {
  {
    // A socket file left behind by a dead process.
    auto stale = listen_unix(path);
    ASSERT_TRUE(stale.valid());
  }
  {
    start();
    auto client = connect_unix(path);
    EXPECT_TRUE(client.valid());
    // While it lives, a second one must not take the path over.
    try {
      HybridListener second(loop, HybridListener::Options{path, 300ms, 64}, callbacks());
      ADD_FAILURE() << "second listener on a live path";
    } catch (const std::runtime_error& error) {
      EXPECT_NE(std::string(error.what()).find(path), std::string::npos) << error.what();
    }
    listener.reset();
  }
  // A regular file is never removed.
  FILE* file = std::fopen(path.c_str(), "w");
  ASSERT_NE(file, nullptr);
  std::fclose(file);
  EXPECT_THROW(start(), std::runtime_error);
  EXPECT_EQ(::access(path.c_str(), F_OK), 0);
}

}  // namespace
}  // namespace vhost_vsock::vsock
