// SocketAcceptor on sockets that are not on a Unix path: loopback TCP and an
// abstract AF_UNIX seqpacket socket (AF_VSOCK is never opened on the test host).
#include "base/socket_acceptor.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "testing/captured_log.h"
#include "testing/loop_wait.h"

namespace vhost_vsock::base {
namespace {

using std::chrono::milliseconds;

sockaddr_in loopback(uint16_t port) {
  sockaddr_in in{};
  in.sin_family = AF_INET;
  in.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  in.sin_port = htons(port);
  return in;
}

// A non-blocking loopback TCP listener on a free port.
UniqueFd tcp_listener(uint16_t* port) {
  UniqueFd fd(::socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
  sockaddr_in in = loopback(0);
  socklen_t length = sizeof(in);
  if (!fd || ::bind(fd.get(), reinterpret_cast<const sockaddr*>(&in), sizeof(in)) != 0 || ::listen(fd.get(), 64) != 0 ||
      ::getsockname(fd.get(), reinterpret_cast<sockaddr*>(&in), &length) != 0) {
    return {};
  }
  *port = ntohs(in.sin_port);
  return fd;
}

// Blocking connect; on loopback it returns once the connection is queued.
UniqueFd connect_tcp(uint16_t port) {
  UniqueFd fd(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  const sockaddr_in in = loopback(port);
  if (::connect(fd.get(), reinterpret_cast<const sockaddr*>(&in), sizeof(in)) != 0) return {};
  return fd;
}

// An abstract-namespace address: no file on disk.
socklen_t abstract_address(const std::string& name, sockaddr_un* out) {
  *out = sockaddr_un{};
  out->sun_family = AF_UNIX;
  name.copy(out->sun_path + 1, sizeof(out->sun_path) - 2);
  return static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + 1 + name.size());
}

std::string unique_abstract_name() {
  static int counter = 0;
  return "vuv-acceptor-test-" + std::to_string(::getpid()) + "-" + std::to_string(++counter);
}

class SocketAcceptorTest : public ::testing::Test {
 protected:
  void SetUp() override {
    socket_ = tcp_listener(&port_);
    ASSERT_TRUE(socket_);
  }
  SocketAcceptor::AcceptCallback collect() {
    return [this](UniqueFd fd) { accepted_.push_back(std::move(fd)); };
  }
  void run_until_accepted(size_t count) {
    auto deadline = EventLoop::Clock::now() + std::chrono::seconds(10);
    while (accepted_.size() < count && EventLoop::Clock::now() < deadline) loop_.run_once(milliseconds(20));
  }

  EventLoop loop_;
  uint16_t port_ = 0;
  UniqueFd socket_;
  std::vector<UniqueFd> accepted_;
};

TEST_F(SocketAcceptorTest, AcceptsLoopbackTcpConnectionsAsNonBlockingCloseOnExecFds) {
  const int listening_fd = socket_.get();
  SocketAcceptor acceptor(loop_, std::move(socket_), collect(), SocketAcceptor::Options{.name = "test tcp"});
  EXPECT_EQ(acceptor.fd(), listening_fd);
  EXPECT_TRUE(loop_.watching(listening_fd));
  UniqueFd first = connect_tcp(port_);
  UniqueFd second = connect_tcp(port_);
  ASSERT_TRUE(first && second);
  run_until_accepted(2);
  ASSERT_EQ(accepted_.size(), 2u);
  EXPECT_EQ(acceptor.stats().accepted, 2u);
  EXPECT_EQ(acceptor.stats().pauses, 0u);
  for (const auto& fd : accepted_) {
    EXPECT_TRUE(::fcntl(fd.get(), F_GETFL) & O_NONBLOCK);
    EXPECT_TRUE(::fcntl(fd.get(), F_GETFD) & FD_CLOEXEC);
  }
  ASSERT_EQ(::write(first.get(), "x", 1), 1);
  char byte = 0;
  EXPECT_EQ(::recv(accepted_[0].get(), &byte, 1, MSG_WAITALL), 1);  // the peer's, not some other fd
  EXPECT_EQ(byte, 'x');
}

TEST_F(SocketAcceptorTest, ServesAnAbstractUnixSeqpacketSocket) {
  sockaddr_un address{};
  const socklen_t length = abstract_address(unique_abstract_name(), &address);
  UniqueFd socket(::socket(AF_UNIX, SOCK_SEQPACKET | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
  ASSERT_EQ(::bind(socket.get(), reinterpret_cast<const sockaddr*>(&address), length), 0);
  ASSERT_EQ(::listen(socket.get(), 16), 0);
  SocketAcceptor acceptor(loop_, std::move(socket), collect(), SocketAcceptor::Options{});
  UniqueFd client(::socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0));
  ASSERT_EQ(::connect(client.get(), reinterpret_cast<const sockaddr*>(&address), length), 0);
  run_until_accepted(1);
  ASSERT_EQ(accepted_.size(), 1u);
  ASSERT_EQ(::send(client.get(), "one", 3, 0), 3);
  char message[8] = {};
  EXPECT_EQ(::recv(accepted_[0].get(), message, sizeof(message), 0), 3);
  EXPECT_EQ(std::string(message, 3), "one");
}

TEST_F(SocketAcceptorTest, AcceptsAtMostAcceptsPerEventPerWakeUp) {
  SocketAcceptor acceptor(loop_, std::move(socket_), collect(), SocketAcceptor::Options{.accepts_per_event = 2});
  std::vector<UniqueFd> clients;
  clients.reserve(5);
  for (int i = 0; i < 5; ++i) clients.push_back(connect_tcp(port_));
  for (const auto& client : clients) ASSERT_TRUE(client);
  loop_.run_once(milliseconds(1000));
  EXPECT_EQ(accepted_.size(), 2u);
  loop_.run_once(milliseconds(1000));
  EXPECT_EQ(accepted_.size(), 4u);
  loop_.run_once(milliseconds(1000));
  EXPECT_EQ(accepted_.size(), 5u);
  EXPECT_EQ(acceptor.stats().accepted, 5u);
}

TEST_F(SocketAcceptorTest, CallbackMayDestroyTheAcceptor) {
  const int listening_fd = socket_.get();
  std::unique_ptr<SocketAcceptor> acceptor;
  int calls = 0;
  acceptor = std::make_unique<SocketAcceptor>(
      loop_, std::move(socket_),
      [&](UniqueFd) {
        ++calls;
        acceptor.reset();
      },
      SocketAcceptor::Options{});
  UniqueFd first = connect_tcp(port_);
  UniqueFd second = connect_tcp(port_);
  ASSERT_TRUE(first && second);
  loop_.run_once(milliseconds(1000));
  loop_.run_once(milliseconds(50));
  EXPECT_EQ(calls, 1);  // the second connection was not accepted after the acceptor went
  EXPECT_FALSE(loop_.watching(listening_fd));
  EXPECT_FALSE(connect_tcp(port_));  // the listening socket is closed
}

// A listening TCP socket that is shut down stops listening: accept() fails
// with EINVAL at every iteration, and only one line per interval is logged.
TEST_F(SocketAcceptorTest, RateLimitsWarningsOfALastingAcceptFailure) {
  testing::CapturedLog log;
  {
    const int listening_fd = socket_.get();
    SocketAcceptor acceptor(loop_, std::move(socket_), collect(), SocketAcceptor::Options{.name = "test tcp"});
    ASSERT_EQ(::shutdown(listening_fd, SHUT_RD), 0);
    for (int i = 0; i < 5; ++i) loop_.run_once(milliseconds(100));
    EXPECT_EQ(log.lines_containing("test tcp: accept failed: "), 1u) << log.text();
    EXPECT_TRUE(accepted_.empty());
    EXPECT_FALSE(acceptor.paused());
  }
  EXPECT_EQ(log.lines_containing("4 more test tcp accept failures suppressed"), 1u) << log.text();
}

// Exit codes of the forked child below.
enum PauseResult {
  kResumed = 0,
  kNotPaused = 10,
  kNotPausedAgain,
  kNotRateLimited,
  kNotResumed,
  kLimitFailed,
  kSetupFailed
};

// Runs in a forked child: the fd limit is process-wide. Out of fds, the
// acceptor pauses, resumes after Options::pause into the same EMFILE and
// pauses again (one warning for both), then accepts once fds are back.
PauseResult pause_and_resume_on_emfile() {
  testing::CapturedLog log;
  EventLoop loop;
  uint16_t port = 0;
  UniqueFd socket = tcp_listener(&port);
  if (!socket) return kSetupFailed;
  std::vector<UniqueFd> accepted;
  SocketAcceptor acceptor(
      loop, std::move(socket), [&](UniqueFd fd) { accepted.push_back(std::move(fd)); },
      SocketAcceptor::Options{.name = "test tcp", .pause = milliseconds(50)});
  UniqueFd client = connect_tcp(port);
  if (!client) return kSetupFailed;
  rlimit saved{};
  if (::getrlimit(RLIMIT_NOFILE, &saved) != 0) return kLimitFailed;
  const int lowest_free = ::dup(0);
  ::close(lowest_free);
  rlimit tight = saved;
  tight.rlim_cur = static_cast<rlim_t>(lowest_free);  // no fd left for accept()
  if (::setrlimit(RLIMIT_NOFILE, &tight) != 0) return kLimitFailed;
  loop.run_once(milliseconds(1000));
  const bool paused = acceptor.paused() && !loop.watching(acceptor.fd()) && acceptor.stats().pauses == 1;
  vhost_vsock::testing::run_until(loop, [&] { return acceptor.stats().pauses >= 2; });
  const bool paused_again = acceptor.paused() && acceptor.stats().pauses == 2;
  if (::setrlimit(RLIMIT_NOFILE, &saved) != 0) return kLimitFailed;
  if (!paused || !accepted.empty()) return kNotPaused;
  if (!paused_again) return kNotPausedAgain;
  if (log.lines_containing("test tcp: accept failed: ") != 1 ||
      log.lines_containing("pausing the listener for 50 ms") != 1) {
    return kNotRateLimited;
  }
  vhost_vsock::testing::run_until(loop, [&] { return !accepted.empty(); });
  return accepted.size() == 1 && !acceptor.paused() && loop.watching(acceptor.fd()) ? kResumed : kNotResumed;
}

TEST_F(SocketAcceptorTest, PausesWhenOutOfFdsResumesLaterAndWarnsOnce) {
  const pid_t child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    int code = kSetupFailed;
    try {
      code = pause_and_resume_on_emfile();
    } catch (...) {
    }
    ::_exit(code);
  }
  int status = 0;
  ASSERT_EQ(::waitpid(child, &status, 0), child);
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), kResumed);
}

}  // namespace
}  // namespace vhost_vsock::base
