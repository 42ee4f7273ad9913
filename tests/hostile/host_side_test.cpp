// Hostile or broken host programs and a hostile host environment: slow or
// garbage handshakes, connection bursts, peers that never read or die, the
// socket directory vanishing, and SIGTERM in the middle of traffic.
#include <fcntl.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <iostream>
#include <thread>

#include "base/unix_socket_address.h"
#include "fixture.h"
#include "hostile_support.h"

namespace vhost_vsock::hostile {
namespace {

using Clock = std::chrono::steady_clock;

// A raw connect to uds-path that does not wait for anything.
UniqueFd connect_now(const std::string& path) {
  UniqueFd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
  const sockaddr_un addr = base::unix_socket_address(path);
  if (::connect(fd.get(), reinterpret_cast<const sockaddr*>(&addr), sizeof(addr)) != 0) return {};
  return fd;
}

// True once the daemon closed `fd`'s peer end (EOF or reset); data is discarded.
bool closed_now(int fd) {
  char buf[256];
  for (;;) {
    const ssize_t n = ::recv(fd, buf, sizeof(buf), MSG_DONTWAIT);
    if (n == 0) return true;
    if (n < 0) return errno != EAGAIN && errno != EINTR;
  }
}

class HostSideTest : public HostileTest {};

TEST_F(HostSideTest, SlowAndGarbageHandshakesAreClosedOthersUnaffected) {
  constexpr int kTimeoutMs = 400;
  DaemonSpec spec;
  spec.extra_args = {"--handshake-timeout", std::to_string(kTimeoutMs)};
  start_with_guest(spec);
  const size_t fds_before = daemon().open_fds();
  const MemoryUse before = daemon().memory();

  struct Peer {
    UniqueFd fd;
    std::string sent;
    bool garbage;  // a line the daemon can reject at once
  };
  std::vector<Peer> peers;
  auto add = [&](int count, const std::string& text, bool garbage) {
    for (int i = 0; i < count; ++i) {
      Peer p{connect_now(daemon().uds_path(0)), text, garbage};
      ASSERT_TRUE(p.fd.valid());
      if (!text.empty()) {
        ASSERT_TRUE(integration::write_all(p.fd.get(), text));
      }
      peers.push_back(std::move(p));
    }
  };
  // No handshake timer (each starts at its accept) runs out before this plus the timeout.
  const auto timers_run_out_after = Clock::now() + Millis(kTimeoutMs);
  add(60, "", false);                      // connect and say nothing
  add(40, "CONN", false);                  // slowloris: half a line
  add(20, "CONNECT 1234", false);          // no newline, ever
  add(20, "GET / HTTP/1.1\r\n", true);     // wrong protocol
  add(10, std::string(200, 'A'), true);    // longer than any CONNECT line
  add(10, "CONNECT 99999999999\n", true);  // port does not fit
  add(10, "CONNECT -1\n", true);
  add(10,
      std::string("CONNECT 12\0"
                  "34\n",
                  14),
      true);  // embedded NUL
  const auto attack_start = Clock::now();

  // Meanwhile a legitimate host program gets through at once.
  guest().listen(6500);
  UniqueFd good = integration::hybrid_connect(daemon().uds_path(0), 6500, nullptr, Millis(1000));
  ASSERT_TRUE(good.valid()) << "a legitimate CONNECT was held up by the slow ones";
  auto accepted = guest().accept(6500, Millis(2000));
  ASSERT_TRUE(accepted.has_value());

  // Closed before any handshake timer could run out: refused, not timed out.
  int garbage_open = 0;
  for (Peer& p : peers) {
    const auto left = std::chrono::duration_cast<Millis>(timers_run_out_after - Clock::now());
    if (p.garbage && !integration::wait_peer_closed(p.fd.get(), std::max(left, Millis(0)))) ++garbage_open;
  }
  EXPECT_EQ(garbage_open, 0) << "garbage lines should be refused at once, not left to time out";
  std::this_thread::sleep_until(timers_run_out_after - Millis(kTimeoutMs / 2));
  int slow_closed = 0;
  for (Peer& p : peers) {
    if (!p.garbage && closed_now(p.fd.get())) ++slow_closed;
  }
  // Only a look before any timer could run out tells (a stalled test thread looks later).
  if (Clock::now() < timers_run_out_after) {
    EXPECT_EQ(slow_closed, 0) << "slow peers were closed before the handshake timeout";
  } else {
    std::cout << "SKIPPED the early-close check of slow peers: the test thread looked after the timeout\n";
  }

  // Every slow peer is gone shortly after the timeout.
  for (Peer& p : peers) {
    EXPECT_TRUE(integration::wait_peer_closed(p.fd.get(), Millis(kTimeoutMs * 5)))
        << "a peer that sent '" << p.sent << "' was never closed";
  }
  const auto elapsed = std::chrono::duration_cast<Millis>(Clock::now() - attack_start).count();
  EXPECT_GE(elapsed, kTimeoutMs * 9 / 10);
  peers.clear();
  // The legitimate connection is unaffected.
  ASSERT_TRUE(integration::write_all(good.get(), "still here"));
  EXPECT_EQ(accepted->recv_exactly(10, Millis(3000)), "still here");
  good.reset();
  accepted->close();
  EXPECT_LE(daemon().open_fds_settled(fds_before + 1), fds_before + 1) << "descriptors leaked";
  expect_memory_growth_bounded(before, "slow and garbage handshakes");
}

TEST_F(HostSideTest, TenThousandConnectsInABurst) {
  start_with_guest();
  const size_t fds_before = daemon().open_fds();
  const MemoryUse before = daemon().memory();
  int connected = 0;
  int refused = 0;
  std::vector<UniqueFd> held;
  for (int i = 0; i < 10000; ++i) {
    UniqueFd fd = connect_now(daemon().uds_path(0));
    if (!fd.valid()) {
      ++refused;  // backlog full (EAGAIN): the kernel's doing, and fine
      continue;
    }
    ++connected;
    // Keep some open for a while, say "CONNECT" on some, drop the rest at once.
    if (i % 20 == 0) {
      held.push_back(std::move(fd));
    } else if (i % 7 == 0) {
      integration::write_all(fd.get(), "CONNECT 1");
    }
  }
  std::cout << "[ attack   ] " << connected << " connects accepted by the kernel, " << refused << " refused\n";
  EXPECT_GT(connected, 1000);
  EXPECT_TRUE(daemon().running());
  // With 500 half-open peers still around, a real one still gets through.
  guest().listen(6600);
  UniqueFd good = integration::hybrid_connect(daemon().uds_path(0), 6600, nullptr, Millis(3000));
  EXPECT_TRUE(good.valid());
  auto accepted = guest().accept(6600, Millis(3000));
  ASSERT_TRUE(accepted.has_value());
  held.clear();
  good.reset();
  accepted->close();
  // Every descriptor of the burst is released again.
  EXPECT_LE(daemon().open_fds_settled(fds_before + 1), fds_before + 1) << "descriptors leaked after the burst";
  expect_memory_growth_bounded(before, "10,000 connects");
}

// The guest sends more than the host program ever reads: the guest is held
// back by credit, not by our memory, and nothing is lost once it reads.
TEST_F(HostSideTest, HostPeerThatNeverReadsThrottlesTheGuest) {
  start_with_guest();
  HostListener listener(daemon().uds_port_path(0, 6700));
  Stream s = guest().connect(6700, Millis(3000));
  ASSERT_TRUE(s.established());
  UniqueFd host = listener.accept(Millis(3000));
  ASSERT_TRUE(host.valid());
  const MemoryUse before = daemon().memory();
  constexpr size_t kTotal = 16 << 20;
  std::vector<uint8_t> data(kTotal);
  integration::fill_pattern(data, 5, 0);
  std::atomic<bool> sent{false};
  std::thread sender([&] { sent = s.send(data, Millis(30000)); });
  const bool throttled = integration::wait_credit_exhausted(guest(), s, Millis(5000));
  EXPECT_TRUE(throttled) << "the guest was not throttled by credit\n" << guest().debug_state();
  EXPECT_FALSE(sent.load()) << "16 MiB went somewhere although the host reads nothing";
  expect_memory_growth_bounded(before, "host peer never reads");
  std::string got = integration::read_exactly(host.get(), kTotal, Millis(30000));
  sender.join();
  EXPECT_TRUE(sent.load());
  ASSERT_EQ(got.size(), kTotal);
  EXPECT_TRUE(std::equal(data.begin(), data.end(), reinterpret_cast<const uint8_t*>(got.data())));
}

// A host program SIGKILLed with data in flight, in both directions.
TEST_F(HostSideTest, HostPeerKilledMidTransferEndsTheGuestStreams) {
  start_with_guest();
  HostListener listener(daemon().uds_port_path(0, 6800));
  Stream upload = guest().connect(6800, Millis(3000));
  ASSERT_TRUE(upload.established());
  UniqueFd upload_host = listener.accept(Millis(3000));
  guest().listen(6801);
  UniqueFd download_host = integration::hybrid_connect(daemon().uds_path(0), 6801, nullptr, Millis(3000));
  ASSERT_TRUE(download_host.valid());
  auto download = guest().accept(6801, Millis(3000));
  ASSERT_TRUE(download.has_value());

  // The peer process reads one socket slowly and floods the other; only raw
  // syscalls after fork().
  const int up_fd = upload_host.get();
  const int down_fd = download_host.get();
  const pid_t child = ::fork();
  if (child == 0) {
    static char buf[4096];
    ::fcntl(up_fd, F_SETFL, O_NONBLOCK);
    ::fcntl(down_fd, F_SETFL, O_NONBLOCK);
    for (int i = 0;; ++i) {
      // EAGAIN either way is fine: the peer is meant to lag and to flood.
      if (i % 4 == 0) {
        const ssize_t got = ::read(up_fd, buf, 512);
        (void)got;
      }
      const ssize_t sent = ::send(down_fd, buf, sizeof(buf), MSG_NOSIGNAL | MSG_DONTWAIT);
      (void)sent;
      ::usleep(1000);
    }
  }
  ASSERT_GT(child, 0);
  upload_host.reset();  // only the child holds them now
  download_host.reset();
  std::atomic<bool> upload_done{false};
  std::thread uploader([&] {
    const std::vector<uint8_t> chunk(size_t{64} * 1024, 'u');
    while (upload.send(chunk, Millis(500))) {
    }
    upload_done = true;
  });
  ASSERT_GT(download->recv(4096, Millis(3000)).size(), 0u) << "no data before the kill";
  std::this_thread::sleep_for(Millis(200));
  ::kill(child, SIGKILL);
  ::waitpid(child, nullptr, 0);

  // The upload ends at once: the device resets it, or shuts it down both
  // ways (the guest's send fails with EPIPE, its recv sees EOF, and it RSTs).
  const uint32_t both = vsock::kShutdownRcv | vsock::kShutdownSend;
  EXPECT_TRUE(upload.wait_peer_shutdown(both, Millis(3000)) || upload.reset_received())
      << "the guest kept a stream to a dead host program";
  EXPECT_TRUE(upload.wait_closed(Millis(3000)));
  // Downloads end with the peer's full shutdown (then the guest's RST) or a reset.
  while (!download->eof() && !download->reset_received()) {
    if (download->recv(65536, Millis(3000)).empty() && !download->eof() && !download->reset_received()) break;
  }
  EXPECT_TRUE(download->eof() || download->reset_received()) << "no end of stream after the host peer died";
  EXPECT_TRUE(download->wait_closed(Millis(3000)));
  uploader.join();
  EXPECT_TRUE(upload_done.load());
}

// Someone deletes the socket directory, or makes it read-only, while we run.
class SocketDirTest : public HostSideTest {
 protected:
  // A host listener an unprivileged daemon may connect to.
  std::unique_ptr<HostListener> listener(uint32_t port) {
    auto l = std::make_unique<HostListener>(daemon().uds_port_path(0, port));
    ::chmod(l->path().c_str(), 0777);
    return l;
  }
  DaemonSpec spec() {
    DaemonSpec s;
    s.uds_in_subdir = true;
    // Only an unprivileged daemon notices a read-only directory.
    if (::geteuid() == 0) s.extra_args = {"--user", "65534:65534"};
    s.dir_mode = 0777;
    return s;
  }
};

TEST_F(SocketDirTest, RemovedDirectoryExistingConnectionsKeepWorking) {
  start(spec());
  attach_guest();
  auto host_listener = listener(6900);
  Stream before_removal = guest().connect(6900, Millis(3000));
  ASSERT_TRUE(before_removal.established());
  UniqueFd host = host_listener->accept(Millis(3000));
  ASSERT_TRUE(host.valid());
  std::error_code ec;
  std::filesystem::remove_all(daemon().uds_dir(), ec);
  ASSERT_FALSE(ec) << ec.message();

  EXPECT_TRUE(daemon().wait_log(daemon().uds_path(0) + " was removed", Millis(5000)))
      << "the daemon did not say its uds-path is gone";
  // The established stream carries on in both directions.
  ASSERT_TRUE(before_removal.send("after rm -rf"));
  EXPECT_EQ(integration::read_exactly(host.get(), 12, Millis(3000)), "after rm -rf");
  ASSERT_TRUE(integration::write_all(host.get(), "still here"));
  EXPECT_EQ(before_removal.recv_exactly(10, Millis(3000)), "still here");
  // New guest connects fail fast (no listener path), they do not hang.
  const auto t0 = Clock::now();
  Stream refused = guest().connect(6900, Millis(3000));
  EXPECT_TRUE(refused.refused());
  EXPECT_LT(Clock::now() - t0, Millis(1000));
  expect_daemon_healthy("with its uds directory gone");
  expect_running_at_end_ = false;
  const int status = daemon().terminate();
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << describe_status(status);
  EXPECT_FALSE(std::filesystem::exists(daemon().socket_path(0))) << "vhost-user socket left behind";
}

TEST_F(SocketDirTest, ReadOnlyDirectoryDaemonServesAndExitsCleanly) {
  start(spec());
  attach_guest();
  auto host_listener = listener(6901);
  ASSERT_EQ(::chmod(daemon().uds_dir().c_str(), 0555), 0);
  // Existing listeners and the hybrid listener still work.
  Stream s = guest().connect(6901, Millis(3000));
  ASSERT_TRUE(s.established());
  UniqueFd host = host_listener->accept(Millis(3000));
  ASSERT_TRUE(host.valid());
  guest().listen(6902);
  UniqueFd hybrid = integration::hybrid_connect(daemon().uds_path(0), 6902, nullptr, Millis(3000));
  EXPECT_TRUE(hybrid.valid());
  ASSERT_TRUE(s.send("ro"));
  EXPECT_EQ(integration::read_exactly(host.get(), 2, Millis(3000)), "ro");
  expect_daemon_healthy("with a read-only uds directory");
  expect_running_at_end_ = false;
  const int status = daemon().terminate();
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << describe_status(status);
  if (::geteuid() == 0) {
    EXPECT_NE(daemon().log().find("cannot remove " + std::string("uds-path ") + daemon().uds_path(0)),
              std::string::npos)
        << "no clear message about the socket file left behind";
    EXPECT_TRUE(std::filesystem::exists(daemon().uds_path(0)));
  }
  EXPECT_FALSE(std::filesystem::exists(daemon().socket_path(0))) << "the writable directory was not cleaned";
}

class SigtermTest : public HostSideTest, public ::testing::WithParamInterface<bool> {};

TEST_P(SigtermTest, DuringTrafficExitsZeroAndRemovesSockets) {
  DaemonSpec spec;
  if (GetParam()) spec.extra_args = {"--seccomp"};
  start(spec);
  attach_guest();
  expect_running_at_end_ = false;
  constexpr int kStreams = 4;
  std::vector<std::unique_ptr<HostListener>> listeners;
  std::vector<Stream> streams;
  std::vector<UniqueFd> hosts;
  for (int i = 0; i < kStreams; ++i) {
    listeners.push_back(std::make_unique<HostListener>(daemon().uds_port_path(0, 7100 + i)));
    streams.push_back(guest().connect(7100 + i, Millis(3000)));
    hosts.push_back(listeners.back()->accept(Millis(3000)));
    guest().listen(7200 + i);
    hosts.push_back(integration::hybrid_connect(daemon().uds_path(0), 7200 + i, nullptr, Millis(3000)));
    auto accepted = guest().accept(7200 + i, Millis(3000));
    ASSERT_TRUE(accepted.has_value());
    streams.push_back(*accepted);
  }
  std::atomic<bool> stop{false};
  std::vector<std::thread> traffic;
  for (size_t i = 0; i < streams.size(); ++i) {
    traffic.emplace_back([&, i] {
      const std::vector<uint8_t> chunk(size_t{16} * 1024, 'x');
      while (!stop && streams[i].send(chunk, Millis(200))) {
      }
    });
    traffic.emplace_back([&, i] {
      std::vector<uint8_t> chunk(size_t{16} * 1024, 'y');
      while (!stop && integration::write_all(hosts[i].get(), chunk, Millis(200))) {
        integration::read_some(hosts[i].get(), 65536, Millis(1));
      }
    });
  }
  std::this_thread::sleep_for(Millis(300));
  const auto t0 = Clock::now();
  const int status = daemon().terminate(Millis(8000));
  const auto took = std::chrono::duration_cast<Millis>(Clock::now() - t0).count();
  stop = true;
  for (auto& t : traffic) t.join();
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << describe_status(status);
  EXPECT_LT(took, 3000) << "shutdown took " << took << " ms";
  for (int vm = 0; vm < 2; ++vm) {
    EXPECT_FALSE(std::filesystem::exists(daemon().socket_path(vm))) << "left behind: " << daemon().socket_path(vm);
    EXPECT_FALSE(std::filesystem::exists(daemon().uds_path(vm))) << "left behind: " << daemon().uds_path(vm);
  }
  for (auto& h : hosts) EXPECT_TRUE(integration::wait_peer_closed(h.get(), Millis(2000)));
  EXPECT_NE(daemon().log().find("shutting down"), std::string::npos);
}

INSTANTIATE_TEST_SUITE_P(Sandbox, SigtermTest, ::testing::Bool(), [](const ::testing::TestParamInfo<bool>& info) {
  return info.param ? std::string("WithSeccomp") : std::string("Plain");
});

}  // namespace
}  // namespace vhost_vsock::hostile
