// The hybrid listener's "CONNECT <port>\n" handshake and its edge cases, and
// refused connects in both directions.
#include <chrono>
#include <thread>

#include "fixture.h"

namespace vhost_vsock::integration {
namespace {

using Clock = std::chrono::steady_clock;

class ConnectLineTest : public DaemonTest {
 protected:
  void SetUp() override {
    DaemonOptions d;
    d.extra_args = {"--handshake-timeout", "400"};
    start(d);
    guest().listen(1234);
  }
  // A host socket that has sent `line` and expects no OK: the daemon must
  // close it without ever writing "OK".
  void expect_closed_without_ok(int fd, Millis timeout = Millis(3000)) {
    bool eof = false;
    const std::string got = read_some(fd, 256, timeout, &eof);
    EXPECT_EQ(got, "") << "daemon answered a bad handshake";
    EXPECT_TRUE(eof) << "daemon left the socket open";
  }
};

TEST_F(ConnectLineTest, LowerCaseCommandIsAccepted) {
  UniqueFd host = unix_connect(daemon().uds_path());
  ASSERT_TRUE(write_all(host.get(), "connect 1234\n"));
  auto line = read_line(host.get(), 64);
  ASSERT_TRUE(line.has_value());
  EXPECT_EQ(line->rfind("OK ", 0), 0u) << *line;
  ASSERT_TRUE(guest().accept(1234).has_value());
}

TEST_F(ConnectLineTest, LineSplitAcrossWritesIsReassembled) {
  UniqueFd host = unix_connect(daemon().uds_path());
  for (const char* piece : {"CON", "NECT 1", "2", "34", "\n"}) {
    ASSERT_TRUE(write_all(host.get(), piece));
    std::this_thread::sleep_for(Millis(30));
  }
  auto line = read_line(host.get(), 64);
  ASSERT_TRUE(line.has_value());
  EXPECT_EQ(line->rfind("OK ", 0), 0u);
  auto stream = guest().accept(1234);
  ASSERT_TRUE(stream.has_value());
  ASSERT_TRUE(write_all(host.get(), "after"));
  EXPECT_EQ(stream->recv_exactly(5), "after");
}

TEST_F(ConnectLineTest, BytesRightAfterNewlineAreForwarded) {
  UniqueFd host = unix_connect(daemon().uds_path());
  ASSERT_TRUE(write_all(host.get(), "CONNECT 1234\nearly payload"));
  auto stream = guest().accept(1234);
  ASSERT_TRUE(stream.has_value());
  auto line = read_line(host.get(), 64);
  ASSERT_TRUE(line.has_value());
  EXPECT_EQ(line->rfind("OK ", 0), 0u);
  EXPECT_EQ(stream->recv_exactly(13), "early payload");
}

TEST_F(ConnectLineTest, OverLongLineIsClosed) {
  UniqueFd host = unix_connect(daemon().uds_path());
  // No newline in sight: the daemon must give up at its line limit, not buffer forever.
  ASSERT_TRUE(write_all(host.get(), "CONNECT " + std::string(200, '1')));
  expect_closed_without_ok(host.get());
  EXPECT_FALSE(guest().accept(1234, Millis(200)).has_value());
}

TEST_F(ConnectLineTest, GarbageIsClosed) {
  for (const char* garbage : {"HELLO\n", "CONNECT\n", "CONNECT abc\n", "CONNECT -1\n", "CONNECT 99999999999\n", "\n",
                              "CONNECT 1234 extra\n"}) {
    SCOPED_TRACE(garbage);
    UniqueFd host = unix_connect(daemon().uds_path());
    ASSERT_TRUE(write_all(host.get(), garbage));
    expect_closed_without_ok(host.get());
  }
  EXPECT_FALSE(guest().accept(1234, Millis(200)).has_value());
}

TEST_F(ConnectLineTest, PortWithoutGuestListenerIsClosedWithoutOk) {
  UniqueFd host = unix_connect(daemon().uds_path());
  const auto start_time = Clock::now();
  ASSERT_TRUE(write_all(host.get(), "CONNECT 4321\n"));
  expect_closed_without_ok(host.get());
  // The guest answers the REQUEST with RST right away; no timeout involved.
  EXPECT_LT(Clock::now() - start_time, Millis(1000));
  EXPECT_GE(guest().stats().resets_sent, 1u);
}

TEST_F(ConnectLineTest, SilentPeerIsClosedAfterHandshakeTimeout) {
  UniqueFd host = unix_connect(daemon().uds_path());
  const auto start_time = Clock::now();
  expect_closed_without_ok(host.get(), Millis(5000));
  const auto waited = Clock::now() - start_time;
  EXPECT_GE(waited, Millis(300)) << "closed before the 400 ms handshake timeout";
  EXPECT_LT(waited, Millis(3000));
}

TEST_F(ConnectLineTest, PartialLineThenSilenceIsClosedAfterHandshakeTimeout) {
  UniqueFd host = unix_connect(daemon().uds_path());
  ASSERT_TRUE(write_all(host.get(), "CONNECT 12"));
  expect_closed_without_ok(host.get(), Millis(5000));
  EXPECT_FALSE(guest().accept(1234, Millis(100)).has_value());
}

TEST_F(ConnectLineTest, GoodHandshakeStillWorksAfterBadOnes) {
  UniqueFd bad = unix_connect(daemon().uds_path());
  ASSERT_TRUE(write_all(bad.get(), "nonsense\n"));
  expect_closed_without_ok(bad.get());
  auto c = host_connects(1234);
  ASSERT_TRUE(c.host.valid() && c.guest.valid());
  ASSERT_TRUE(c.guest.send("ok"));
  EXPECT_EQ(read_exactly(c.host.get(), 2), "ok");
}

TEST_F(ConnectLineTest, GuestConnectWithoutHostListenerIsRefusedFast) {
  const auto start_time = Clock::now();
  Stream stream = guest().connect(9999, Millis(3000));
  const auto waited = Clock::now() - start_time;
  EXPECT_TRUE(stream.refused()) << "expected RST for a port nobody listens on";
  EXPECT_FALSE(stream.established());
  // Fast means answered by RST, well before the daemon's 2 s request
  // timeout could answer instead; 1.5 s leaves a loaded machine its stalls.
  EXPECT_LT(waited, Millis(1500));
  // A listener appearing later is found by the next connect.
  HostListener listener(daemon().uds_port_path(9999));
  auto c = guest_connects(listener, 9999);
  EXPECT_TRUE(c.guest.established());
}

}  // namespace
}  // namespace vhost_vsock::integration
