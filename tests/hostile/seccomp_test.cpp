// The sandbox end to end: the real daemon under --seccomp (and --user when we
// are root) must do everything it normally does, through startup, traffic in
// both directions, timeouts, refusals, front-end reconnects and shutdown; and
// a forbidden syscall must kill it with SIGSYS, as docs/security.md says.
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>
#include <thread>

#include "hostile_support.h"

namespace vhost_vsock::hostile {
namespace {

using Clock = std::chrono::steady_clock;

enum class Sandbox { kSeccomp, kSeccompAndUser };

class SeccompTest : public HostileTest, public ::testing::WithParamInterface<Sandbox> {
 protected:
  DaemonSpec sandboxed_spec() {
    DaemonSpec spec;
    spec.extra_args = {"--seccomp", "--handshake-timeout", "300"};
    if (GetParam() == Sandbox::kSeccompAndUser) {
      spec.extra_args.insert(spec.extra_args.end(), {"--user", "65534:65534"});
      spec.dir_mode = 0777;
    }
    return spec;
  }
};

// Echo `rounds` blobs over a connection and verify them.
void echo(Stream& guest_side, int host_fd, size_t size, uint64_t seed) {
  std::vector<uint8_t> blob(size);
  integration::fill_pattern(blob, seed, 0);
  std::thread host([&] {
    const std::string got = integration::read_exactly(host_fd, size, Millis(10000));
    integration::write_all(host_fd, got, Millis(10000));
  });
  ASSERT_TRUE(guest_side.send(blob, Millis(10000)));
  const std::string back = guest_side.recv_exactly(size, Millis(10000));
  host.join();
  ASSERT_EQ(back.size(), size);
  EXPECT_TRUE(std::equal(blob.begin(), blob.end(), reinterpret_cast<const uint8_t*>(back.data())));
}

TEST_P(SeccompTest, SandboxedDaemonDoesItsWholeJob) {
  if (GetParam() == Sandbox::kSeccompAndUser && ::geteuid() != 0) GTEST_SKIP() << "--user needs root";
  start_with_guest(sandboxed_spec());
  ASSERT_TRUE(daemon().wait_log("seccomp filter installed", Millis(2000)));
  if (GetParam() == Sandbox::kSeccompAndUser) {
    ASSERT_TRUE(daemon().wait_log("running as uid=65534", Millis(2000)));
    struct stat st {};
    ASSERT_EQ(::stat(daemon().socket_path(0).c_str(), &st), 0);
    EXPECT_EQ(st.st_uid, 65534u) << "the socket files were not handed to the new user";
  }

  // Both directions, several connections at once, with data checked.
  constexpr int kEach = 8;
  std::vector<std::unique_ptr<HostListener>> listeners;
  std::vector<std::thread> workers;
  for (int i = 0; i < kEach; ++i) {
    listeners.push_back(std::make_unique<HostListener>(daemon().uds_port_path(0, 9000 + i)));
    ::chmod(listeners.back()->path().c_str(), 0777);
    guest().listen(9100 + i);
  }
  for (int i = 0; i < kEach; ++i) {
    workers.emplace_back([&, i] {
      Stream up = guest().connect(9000 + i, Millis(5000));
      ASSERT_TRUE(up.established());
      UniqueFd up_host = listeners[i]->accept(Millis(5000));
      ASSERT_TRUE(up_host.valid());
      echo(up, up_host.get(), 256 * 1024, i);
      up.close();
    });
    workers.emplace_back([&, i] {
      UniqueFd down_host = integration::hybrid_connect(daemon().uds_path(0), 9100 + i, nullptr, Millis(5000));
      ASSERT_TRUE(down_host.valid());
      auto down = guest().accept(9100 + i, Millis(5000));
      ASSERT_TRUE(down.has_value());
      echo(*down, down_host.get(), 256 * 1024, 100 + i);
    });
  }
  for (auto& w : workers) w.join();

  // Refusals, timeouts and resets take other code paths (timers, RSTs, closes).
  EXPECT_TRUE(guest().connect(9999, Millis(3000)).refused()) << "no host listener: should be refused";
  EXPECT_FALSE(integration::hybrid_connect(daemon().uds_path(0), 9998, nullptr, Millis(3000)).valid())
      << "no guest listener: should be closed";
  UniqueFd silent = integration::unix_connect(daemon().uds_path(0));
  ASSERT_TRUE(silent.valid());
  EXPECT_TRUE(integration::wait_peer_closed(silent.get(), Millis(3000))) << "handshake timeout did not fire";
  ASSERT_TRUE(daemon().running()) << describe_status(daemon().exit_status());

  // The front-end goes away and comes back (memory unmapped and mapped again).
  for (int round = 0; round < 3; ++round) {
    own_sentinel_.reset();
    attach_guest();
    HostListener listener(daemon().uds_port_path(0, 9200 + round));
    ::chmod(listener.path().c_str(), 0777);
    Stream s = guest().connect(9200 + round, Millis(3000));
    ASSERT_TRUE(s.established()) << "round " << round;
    UniqueFd host = listener.accept(Millis(3000));
    ASSERT_TRUE(host.valid());
    echo(s, host.get(), 64 * 1024, 200 + round);
  }
  expect_daemon_healthy("after sandboxed traffic");

  // Clean exit under the filter: status 0 and the socket files removed.
  expect_running_at_end_ = false;
  const int status = daemon().terminate();
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << describe_status(status);
  for (int vm = 0; vm < 2; ++vm) {
    EXPECT_FALSE(std::filesystem::exists(daemon().socket_path(vm)));
    EXPECT_FALSE(std::filesystem::exists(daemon().uds_path(vm)));
  }
}

INSTANTIATE_TEST_SUITE_P(Modes, SeccompTest, ::testing::Values(Sandbox::kSeccomp, Sandbox::kSeccompAndUser),
                         [](const ::testing::TestParamInfo<Sandbox>& info) {
                           return info.param == Sandbox::kSeccomp ? std::string("Seccomp")
                                                                  : std::string("SeccompAndUser");
                         });

class ForbiddenSyscallTest : public HostileTest {
 protected:
  // Starts a daemon whose self-test calls execve after the sandbox is in.
  void start_self_test(std::vector<std::string> args) {
    DaemonSpec spec;
    spec.vms = 1;
    spec.extra_args = std::move(args);
    spec.env = {"VUV_SANDBOX_SELFTEST=1"};
    start(spec);
  }
};

TEST_F(ForbiddenSyscallTest, KillsTheDaemonWithSigsys) {
  start_self_test({"--seccomp"});
  expect_running_at_end_ = false;
  const int status = daemon().wait_exit(Millis(5000));
  ASSERT_NE(status, -1) << "the daemon survived a forbidden execve";
  EXPECT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGSYS)
      << "documented: a forbidden syscall kills the process with SIGSYS; got " << describe_status(status);
  EXPECT_EQ(daemon().log().find("not blocked"), std::string::npos);
}

TEST_F(ForbiddenSyscallTest, WithoutTheFilterTheSameCallIsHarmless) {
  start_self_test({});
  ASSERT_TRUE(daemon().wait_log("self-test: execve was not blocked", Millis(3000)));
  EXPECT_TRUE(daemon().running());
}

TEST_F(ForbiddenSyscallTest, LogModeLogsButDoesNotKill) {
  start_self_test({"--seccomp=log"});
  ASSERT_TRUE(daemon().wait_log("self-test: execve was not blocked", Millis(3000)));
  EXPECT_NE(daemon().log().find("LOG mode"), std::string::npos);
  EXPECT_TRUE(daemon().running());
}

}  // namespace
}  // namespace vhost_vsock::hostile
