// Type=notify support: the daemon sends READY=1 once its sockets are bound and
// STOPPING=1 when it begins to stop, to the datagram socket in $NOTIFY_SOCKET.
#include <gtest/gtest.h>
#include <poll.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/un.h>

#include <cstring>
#include <string>
#include <utility>
#include <vector>

#include "base/unique_fd.h"
#include "testing/daemon_process.h"
#include "testing/temp_dir.h"

namespace vhost_vsock::integration {
namespace {

using base::UniqueFd;

// A datagram socket bound at `name` (a path, or "@abstract").
UniqueFd bind_notify_socket(const std::string& name) {
  UniqueFd fd(::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0));
  sockaddr_un address{};
  address.sun_family = AF_UNIX;
  std::memcpy(address.sun_path, name.data(), name.size());
  if (name[0] == '@') address.sun_path[0] = '\0';
  const auto length = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + name.size());
  if (::bind(fd.get(), reinterpret_cast<const sockaddr*>(&address), length) != 0) return UniqueFd();
  return fd;
}

// The next datagram, or "" after `timeout_ms`.
std::string receive(int fd, int timeout_ms) {
  pollfd ready{fd, POLLIN, 0};
  if (::poll(&ready, 1, timeout_ms) != 1) return "";
  char buffer[256];
  const ssize_t n = ::recv(fd, buffer, sizeof(buffer), 0);
  return n > 0 ? std::string(buffer, static_cast<size_t>(n)) : "";
}

// Starts the daemon with NOTIFY_SOCKET=`name` and checks both notifications.
void expect_ready_then_stopping(const std::string& name, int notify_fd, std::vector<std::string> args = {}) {
  ASSERT_EQ(::setenv("NOTIFY_SOCKET", name.c_str(), 1), 0);
  testing::DaemonOptions options;
  options.extra_args = std::move(args);
  testing::DaemonProcess daemon(options);
  ::unsetenv("NOTIFY_SOCKET");
  EXPECT_EQ(receive(notify_fd, 10000), "READY=1\nSTATUS=serving 1 VM(s)");
  EXPECT_TRUE(testing::is_socket(daemon.socket_path()));
  EXPECT_TRUE(testing::is_socket(daemon.uds_path()));
  EXPECT_EQ(receive(notify_fd, 0), "") << "one READY only";
  const int status = daemon.stop();
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << "wait status " << status;
  EXPECT_EQ(receive(notify_fd, 1000), "STOPPING=1");
}

TEST(SystemdNotifyTest, PathSocketGetsReadyThenStopping) {
  testing::TempDir dir;
  const std::string name = dir.path() + "/notify";
  UniqueFd fd = bind_notify_socket(name);
  ASSERT_TRUE(fd.valid());
  expect_ready_then_stopping(name, fd.get());
}

// As the systemd units run it: READY=1 is sent after the sandbox is in.
TEST(SystemdNotifyTest, NotifiesUnderSeccomp) {
  testing::TempDir dir;
  const std::string name = dir.path() + "/notify";
  UniqueFd fd = bind_notify_socket(name);
  ASSERT_TRUE(fd.valid());
  expect_ready_then_stopping(name, fd.get(), {"--seccomp"});
}

TEST(SystemdNotifyTest, AbstractSocketGetsReadyThenStopping) {
  const std::string name = "@vuv-notify-test-" + std::to_string(::getpid());
  UniqueFd fd = bind_notify_socket(name);
  ASSERT_TRUE(fd.valid());
  expect_ready_then_stopping(name, fd.get());
}

TEST(SystemdNotifyTest, WithoutNotifySocketTheDaemonStillServes) {
  ::unsetenv("NOTIFY_SOCKET");
  testing::DaemonProcess daemon;
  EXPECT_TRUE(testing::is_socket(daemon.uds_path()));
  const int status = daemon.stop();
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << "wait status " << status;
}

}  // namespace
}  // namespace vhost_vsock::integration
