// The forwarding dialer and its connecting endpoint, with stand-in address
// families (never AF_VSOCK on the test host): AF_UNIX for connects that
// finish or fail at once, AF_INET loopback for ones that are in progress.
#include "vsock/transport/vsock_forward.h"

#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <linux/vm_sockets.h>
#include <netinet/in.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <string>

#include "base/unix_socket_address.h"
#include "testing/loop_wait.h"
#include "vsock/transport/forward_test_support.h"

namespace vhost_vsock::vsock {
namespace {

using namespace forward_test;

using namespace std::chrono_literals;

using testing::run_until;

TEST(VsockAddress, IsASockaddrVmForTheCidAndPort) {
  const ForwardAddress address = forward_to_cid(7)(1234).value();
  ASSERT_EQ(address.length, sizeof(sockaddr_vm));
  EXPECT_EQ(address.family(), AF_VSOCK);
  sockaddr_vm vm{};
  std::memcpy(&vm, &address.storage, sizeof(vm));
  EXPECT_EQ(vm.svm_cid, 7u);
  EXPECT_EQ(vm.svm_port, 1234u);
}

TEST(VsockForwardDialer, ARefusedConnectFailsAtOnceWithItsErrno) {
  base::EventLoop loop;
  char dir_template[] = "/tmp/vuvfXXXXXX";
  ASSERT_NE(::mkdtemp(dir_template), nullptr);
  const std::string missing = std::string(dir_template) + "/nobody";
  VsockForwardDialer dialer(loop, [&](uint32_t) { return unix_address(missing); });
  const auto result = dialer.dial(5000);
  EXPECT_EQ(result.endpoint, nullptr);
  EXPECT_EQ(result.error, ENOENT);
  EXPECT_NE(result.failure.find("port 5000: connect"), std::string::npos) << result.failure;
  ::rmdir(dir_template);
}

TEST(VsockForwardDialer, AnUnmappedPortIsRefused) {
  base::EventLoop loop;
  VsockForwardDialer dialer(loop, [](uint32_t) { return std::optional<ForwardAddress>(); });
  const auto result = dialer.dial(1);
  EXPECT_EQ(result.endpoint, nullptr);
  EXPECT_EQ(result.error, ECONNREFUSED);
}

TEST(VsockForwardDialer, AConnectThatFinishesAtOnceIsNotConnecting) {
  base::EventLoop loop;
  char dir_template[] = "/tmp/vuvfXXXXXX";
  ASSERT_NE(::mkdtemp(dir_template), nullptr);
  const std::string path = std::string(dir_template) + "/l";
  base::UniqueFd listener(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  const sockaddr_un un = base::unix_socket_address(path);
  ASSERT_EQ(::bind(listener.get(), reinterpret_cast<const sockaddr*>(&un), sizeof(un)), 0);
  ASSERT_EQ(::listen(listener.get(), 4), 0);
  uint32_t asked = 0;
  VsockForwardDialer dialer(loop, [&](uint32_t port) {
    asked = port;
    return unix_address(path);
  });
  auto result = dialer.dial(77);
  EXPECT_EQ(asked, 77u);
  ASSERT_NE(result.endpoint, nullptr) << result.failure;
  EXPECT_FALSE(result.endpoint->connecting());
  base::UniqueFd accepted(::accept4(listener.get(), nullptr, nullptr, SOCK_CLOEXEC));
  ASSERT_TRUE(accepted.valid());
  const uint8_t data[] = {'h', 'i'};
  const iovec iov{const_cast<uint8_t*>(data), sizeof(data)};
  EXPECT_EQ(result.endpoint->send({&iov, 1}).bytes, 2u);
  char got[2] = {};
  EXPECT_EQ(::read(accepted.get(), got, 2), 2);
  EXPECT_EQ(std::string(got, 2), "hi");
  result.endpoint.reset();
  ::unlink(path.c_str());
  ::rmdir(dir_template);
}

TEST(ConnectingStreamEndpoint, ReportsConnectedOnceTheConnectCompletes) {
  base::EventLoop loop;
  uint16_t port = 0;
  base::UniqueFd listener = tcp_listener(&port, 4);
  VsockForwardDialer dialer(loop, [port](uint32_t) { return loopback_address(port); });
  auto result = dialer.dial(port);
  ASSERT_NE(result.endpoint, nullptr) << result.failure;
  if (!result.endpoint->connecting()) GTEST_SKIP() << "SKIPPED: the loopback connect finished at once";
  bool connected = false;
  bool hangup = false;
  bool readable = false;
  result.endpoint->watch([&](HostEvents events) {
    connected = connected || events.connected;
    hangup = hangup || events.hangup;
    readable = connected && events.readable;
  });
  ASSERT_TRUE(run_until(loop, [&] { return connected || hangup; }));
  EXPECT_TRUE(connected);
  EXPECT_FALSE(hangup);
  EXPECT_FALSE(result.endpoint->connecting());
  EXPECT_EQ(result.endpoint->connect_error(), 0);
  // Once connected, it is a plain stream endpoint: data from the peer arrives.
  base::UniqueFd accepted(::accept4(listener.get(), nullptr, nullptr, SOCK_CLOEXEC));
  ASSERT_TRUE(accepted.valid());
  ASSERT_EQ(::write(accepted.get(), "x", 1), 1);
  ASSERT_TRUE(run_until(loop, [&] { return readable; }));
  char got = 0;
  const iovec iov{&got, 1};
  const auto received = result.endpoint->receive({&iov, 1});
  EXPECT_EQ(received.status, HostEndpoint::ReceiveStatus::kData);
  EXPECT_EQ(got, 'x');
  result.endpoint->close();
}

TEST(ConnectingStreamEndpoint, ReportsHangupWithTheErrorWhenTheConnectFails) {
  base::EventLoop loop;
  uint16_t port = 0;
  {
    base::UniqueFd closed = tcp_listener(&port, 4);  // the port is free again once this closes
  }
  VsockForwardDialer dialer(loop, [port](uint32_t) { return loopback_address(port); });
  auto result = dialer.dial(port);
  if (!result.endpoint) {
    EXPECT_EQ(result.error, ECONNREFUSED) << result.failure;  // refused at once
    return;
  }
  ASSERT_TRUE(result.endpoint->connecting());
  bool connected = false;
  bool hangup = false;
  result.endpoint->watch([&](HostEvents events) {
    connected = connected || events.connected;
    hangup = hangup || events.hangup;
  });
  ASSERT_TRUE(run_until(loop, [&] { return connected || hangup; }));
  EXPECT_TRUE(hangup);
  EXPECT_FALSE(connected);
  EXPECT_EQ(result.endpoint->connect_error(), ECONNREFUSED);
}

}  // namespace
}  // namespace vhost_vsock::vsock
