#include "vsock/transport/unix_stream_dialer.h"

#include <gtest/gtest.h>
#include <sys/socket.h>
#include <sys/un.h>

#include <cerrno>
#include <cstring>
#include <string>

#include "vsock/transport/send_buffer_test_support.h"

namespace vhost_vsock::vsock {
namespace {

struct UnixStreamDialerTest : ::testing::Test {
  void SetUp() override {
    char dir_template[] = "/tmp/vusdXXXXXX";
    ASSERT_NE(::mkdtemp(dir_template), nullptr);
    dir = dir_template;
  }
  void TearDown() override {
    for (const auto& path : created) ::unlink(path.c_str());
    ::rmdir(dir.c_str());
  }

  base::UniqueFd listen_on(const std::string& path, int type = SOCK_STREAM) {
    base::UniqueFd fd(::socket(AF_UNIX, type | SOCK_CLOEXEC, 0));
    sockaddr_un address{};
    address.sun_family = AF_UNIX;
    std::strncpy(address.sun_path, path.c_str(), sizeof(address.sun_path) - 1);
    EXPECT_EQ(::bind(fd.get(), reinterpret_cast<const sockaddr*>(&address), sizeof(address)), 0);
    EXPECT_EQ(::listen(fd.get(), 4), 0);
    created.push_back(path);
    return fd;
  }

  base::EventLoop loop;
  std::string dir;
  std::vector<std::string> created;
};

TEST_F(UnixStreamDialerTest, ConnectsToTheListenerAtPathUnderscorePort) {
  auto listener = listen_on(dir + "/v_1234");
  UnixStreamDialer dialer(loop, dir + "/v");
  auto dialed = dialer.dial(1234);
  ASSERT_TRUE(dialed.endpoint) << dialed.failure;
  EXPECT_EQ(dialed.error, 0);
  EXPECT_TRUE(dialed.endpoint->is_open());
  EXPECT_EQ(dialed.endpoint->socket_type(), SocketType::kStream);
  EXPECT_EQ(send_buffer_test::send_buffer_of(*dialed.endpoint), send_buffer_test::expected_host_send_buffer());
  base::UniqueFd accepted(::accept(listener.get(), nullptr, nullptr));
  ASSERT_TRUE(accepted.valid());
  iovec iov{const_cast<char*>("hi"), 2};
  EXPECT_EQ(dialed.endpoint->send(std::span(&iov, 1)).bytes, 2u);
  char buf[4];
  EXPECT_EQ(::read(accepted.get(), buf, sizeof(buf)), 2);
}

TEST_F(UnixStreamDialerTest, ASeqpacketDialGetsTheSameSendBuffer) {
  auto listener = listen_on(dir + "/v_1234", SOCK_SEQPACKET);
  UnixStreamDialer dialer(loop, dir + "/v");
  auto dialed = dialer.dial(1234, SocketType::kSeqpacket);
  ASSERT_TRUE(dialed.endpoint) << dialed.failure;
  EXPECT_EQ(dialed.endpoint->socket_type(), SocketType::kSeqpacket);
  EXPECT_EQ(send_buffer_test::send_buffer_of(*dialed.endpoint), send_buffer_test::expected_host_send_buffer());
}

TEST_F(UnixStreamDialerTest, NobodyListeningIsRefusedWithThePathAndCause) {
  UnixStreamDialer dialer(loop, dir + "/v");
  auto dialed = dialer.dial(7);
  EXPECT_FALSE(dialed.endpoint);
  EXPECT_EQ(dialed.error, ENOENT);
  EXPECT_EQ(dialed.failure, dir + "/v_7: " + std::strerror(ENOENT));
}

TEST_F(UnixStreamDialerTest, OverlongPathOrNoUdsPathIsRefusedAsTooLong) {
  const std::string long_base = dir + "/" + std::string(sizeof(sockaddr_un::sun_path), 'x');
  auto dialed = UnixStreamDialer(loop, long_base).dial(1);
  EXPECT_FALSE(dialed.endpoint);
  EXPECT_EQ(dialed.error, ENAMETOOLONG);
  // The path plus "_<port>" must fit, not only the path.
  const std::string fits_alone(sizeof(sockaddr_un::sun_path) - 1 - dir.size() - 1, 'y');
  EXPECT_EQ(UnixStreamDialer(loop, dir + "/" + fits_alone).dial(4000000000u).error, ENAMETOOLONG);
  dialed = UnixStreamDialer(loop, "").dial(1234);
  EXPECT_FALSE(dialed.endpoint);
  EXPECT_EQ(dialed.error, ENAMETOOLONG);
  EXPECT_EQ(dialed.failure, std::string("_1234: ") + std::strerror(ENAMETOOLONG));
}

}  // namespace
}  // namespace vhost_vsock::vsock
