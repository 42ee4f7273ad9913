// --connect-wait: a host CONNECT that reaches the guest before anything
// listens on the port is retried until the guest's listener is up.
#include <chrono>
#include <string>
#include <thread>

#include "fixture.h"

namespace vhost_vsock::integration {
namespace {

class ConnectWaitTest : public DaemonTest {};

TEST_F(ConnectWaitTest, AConnectBeforeTheGuestListensSucceedsOnceItDoes) {
  DaemonOptions d;
  d.extra_args = {"--connect-wait", "5000"};
  start(d);
  UniqueFd host = unix_connect(daemon().uds_path());
  ASSERT_TRUE(write_all(host.get(), "CONNECT 5000\nhello"));
  // The guest's agent is still starting: its REQUESTs are refused meanwhile.
  std::this_thread::sleep_for(std::chrono::milliseconds(400));
  bool eof = false;
  EXPECT_EQ(read_some(host.get(), 64, Millis(0), &eof), "");
  EXPECT_FALSE(eof) << "the host program was closed while the guest was starting";
  guest().listen(5000);
  auto line = read_line(host.get(), 64);
  ASSERT_TRUE(line.has_value()) << "no OK once the guest listened";
  EXPECT_EQ(line->rfind("OK ", 0), 0u) << *line;
  auto stream = guest().accept(5000);
  ASSERT_TRUE(stream.has_value());
  EXPECT_EQ(stream->recv_exactly(5), "hello");
}

TEST_F(ConnectWaitTest, WithoutItTheFirstRefusalCloses) {
  start();
  UniqueFd host = unix_connect(daemon().uds_path());
  ASSERT_TRUE(write_all(host.get(), "CONNECT 5001\n"));
  bool eof = false;
  EXPECT_EQ(read_some(host.get(), 64, Millis(2000), &eof), "");
  EXPECT_TRUE(eof) << "a refused CONNECT was left open without --connect-wait";
}

TEST_F(ConnectWaitTest, AGuestThatNeverListensIsGivenUpAfterTheWait) {
  DaemonOptions d;
  d.extra_args = {"--connect-wait", "600"};
  start(d);
  const auto start_time = std::chrono::steady_clock::now();
  UniqueFd host = unix_connect(daemon().uds_path());
  ASSERT_TRUE(write_all(host.get(), "CONNECT 5002\n"));
  bool eof = false;
  EXPECT_EQ(read_some(host.get(), 64, Millis(5000), &eof), "");
  EXPECT_TRUE(eof);
  const auto waited = std::chrono::steady_clock::now() - start_time;
  EXPECT_GE(waited, std::chrono::milliseconds(550)) << "closed before the connect-wait ran out";
}

}  // namespace
}  // namespace vhost_vsock::integration
