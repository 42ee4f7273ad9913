// The --forward-listen listener with an AF_UNIX stand-in (never AF_VSOCK on
// the test host): accepted connections arrive as endpoints for the port.
#include "vsock/transport/forward_listener.h"

#include <gtest/gtest.h>
#include <linux/vm_sockets.h>
#include <sys/un.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "base/unix_socket_address.h"
#include "testing/loop_wait.h"
#include "vsock/transport/forward_test_support.h"
#include "vsock/transport/send_buffer_test_support.h"

namespace vhost_vsock::vsock {
namespace {

using namespace forward_test;

using namespace std::chrono_literals;

class ForwardListenerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char dir_template[] = "/tmp/vuvlXXXXXX";
    ASSERT_NE(::mkdtemp(dir_template), nullptr);
    dir = dir_template;
  }
  void TearDown() override {
    ::unlink((dir + "/l").c_str());
    ::rmdir(dir.c_str());
  }
  base::UniqueFd connect_to(const std::string& path) {
    base::UniqueFd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
    const sockaddr_un un = base::unix_socket_address(path);
    EXPECT_EQ(::connect(fd.get(), reinterpret_cast<const sockaddr*>(&un), sizeof(un)), 0);
    return fd;
  }
  std::string dir;
};

TEST(VsockListenAddress, IsCidAnyAndThePort) {
  const ForwardAddress address = vsock_listen_address(9001);
  sockaddr_vm vm{};
  std::memcpy(&vm, &address.storage, sizeof(vm));
  EXPECT_EQ(address.family(), AF_VSOCK);
  EXPECT_EQ(vm.svm_cid, VMADDR_CID_ANY);
  EXPECT_EQ(vm.svm_port, 9001u);
}

TEST_F(ForwardListenerTest, AcceptedConnectionsBecomeEndpointsForThePort) {
  base::EventLoop loop;
  std::vector<std::unique_ptr<HostEndpoint>> accepted;
  std::vector<uint32_t> ports;
  ForwardListener listener(loop, 9001, unix_address(dir + "/l"),
                           [&](std::unique_ptr<HostEndpoint> endpoint, uint32_t port) {
                             accepted.push_back(std::move(endpoint));
                             ports.push_back(port);
                           });
  EXPECT_EQ(listener.port(), 9001u);
  auto first = connect_to(dir + "/l");
  auto second = connect_to(dir + "/l");
  ASSERT_TRUE(testing::run_until(loop, [&] { return accepted.size() >= 2; }));
  ASSERT_EQ(accepted.size(), 2u);
  EXPECT_EQ(ports, (std::vector<uint32_t>{9001, 9001}));
  EXPECT_FALSE(accepted[0]->connecting());
  EXPECT_EQ(accepted[0]->socket_type(), SocketType::kStream);
  EXPECT_EQ(send_buffer_test::send_buffer_of(*accepted[0]), send_buffer_test::expected_host_send_buffer());
  // The endpoint carries the accepted socket: bytes from the host program arrive.
  ASSERT_EQ(::write(first.get(), "ab", 2), 2);
  char got[2] = {};
  const iovec iov{got, sizeof(got)};
  const auto received = accepted[0]->receive({&iov, 1});
  EXPECT_EQ(received.status, HostEndpoint::ReceiveStatus::kData);
  EXPECT_EQ(std::string(got, received.bytes), "ab");
  EXPECT_EQ(listener.stats().accepted, 2u);
}

TEST_F(ForwardListenerTest, CallbackMayDestroyTheListener) {
  base::EventLoop loop;
  std::unique_ptr<ForwardListener> listener;
  int calls = 0;
  listener = std::make_unique<ForwardListener>(loop, 9003, unix_address(dir + "/l"),
                                               [&](std::unique_ptr<HostEndpoint>, uint32_t) {
                                                 ++calls;
                                                 listener.reset();
                                               });
  auto first = connect_to(dir + "/l");
  auto second = connect_to(dir + "/l");
  loop.run_once(1000ms);
  loop.run_once(50ms);
  EXPECT_EQ(calls, 1);  // the second connection was not accepted after the listener went
  base::UniqueFd late(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  const sockaddr_un un = base::unix_socket_address(dir + "/l");
  EXPECT_NE(::connect(late.get(), reinterpret_cast<const sockaddr*>(&un), sizeof(un)), 0);  // the socket is closed
}

TEST_F(ForwardListenerTest, ABindFailureNamesThePort) {
  base::EventLoop loop;
  ForwardListener first(loop, 9002, unix_address(dir + "/l"), [](std::unique_ptr<HostEndpoint>, uint32_t) {});
  try {
    ForwardListener second(loop, 9002, unix_address(dir + "/l"), [](std::unique_ptr<HostEndpoint>, uint32_t) {});
    FAIL() << "a second bind to the same address succeeded";
  } catch (const std::runtime_error& error) {
    EXPECT_NE(std::string(error.what()).find("forward-listen port 9002: bind: "), std::string::npos) << error.what();
  }
}

}  // namespace
}  // namespace vhost_vsock::vsock
