// SIGHUP reload of --config against the real daemon: an added VM is served,
// a removed VM's sockets go and its connections close, an unchanged VM keeps
// its live connection transferring, and a bad file changes nothing. Run with
// and without --seccomp, and with --metrics so a scrape follows the VM set.
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include <chrono>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "base/unix_socket_address.h"
#include "fixture.h"
#include "host_socket.h"
#include "metrics/http_client.h"
#include "testing/child_process.h"
#include "testing/daemon_process.h"
#include "testing/temp_dir.h"
#include "testing/vsock_driver.h"

namespace vhost_vsock::integration {
namespace {

using testing::ChildProcess;
using testing::TempDir;

size_t count_of(const std::string& text, const std::string& needle) {
  size_t count = 0;
  for (size_t at = text.find(needle); at != std::string::npos; at = text.find(needle, at + 1)) ++count;
  return count;
}

class ReloadTest : public ::testing::TestWithParam<bool> {
 protected:
  static void SetUpTestSuite() { raise_fd_limit(); }

  std::string socket_of(uint64_t cid) const { return dir_.file("vhost" + std::to_string(cid) + ".sock"); }
  std::string uds_of(uint64_t cid) const { return dir_.file("vm" + std::to_string(cid) + ".vsock"); }

  void write_config(const std::vector<uint64_t>& cids, const std::string& extra = "") {
    std::string text = "vms:\n";
    for (uint64_t cid : cids) {
      text += "  - guest_cid: " + std::to_string(cid) + "\n    socket: " + socket_of(cid) +
              "\n    uds_path: " + uds_of(cid) + "\n";
    }
    dir_.write("vms.yaml.new", text + extra);
    // Atomically, as editors and config management do.
    ASSERT_EQ(::rename(dir_.file("vms.yaml.new").c_str(), dir_.file("vms.yaml").c_str()), 0);
  }

  // `vms`: how many "ready" lines to wait for.
  void start_daemon(size_t vms = 2, const std::vector<std::string>& env = {}) {
    endpoint_.host = "127.0.0.1";
    endpoint_.loopback = true;
    endpoint_.port = free_loopback_port();
    ASSERT_NE(endpoint_.port, 0);
    std::vector<std::string> args = {testing::DaemonProcess::binary_path(),
                                     "--config",
                                     dir_.file("vms.yaml"),
                                     "--metrics",
                                     endpoint_.to_string(),
                                     "--log-level",
                                     testing::daemon_log_level("info")};
    if (GetParam()) args.emplace_back("--seccomp");
    daemon_ = std::make_unique<ChildProcess>(std::move(args), dir_.file("daemon.log"), env);
    ASSERT_TRUE(wait_log("ready:", vms)) << daemon_->log();
  }

  // Waits until the log holds `needle` at least `times` times.
  bool wait_log(const std::string& needle, size_t times, Millis timeout = Millis(10000)) {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    while (std::chrono::steady_clock::now() < deadline) {
      if (count_of(daemon_->log(), needle) >= times) return true;
      if (!daemon_->running()) return false;
      std::this_thread::sleep_for(Millis(10));
    }
    return false;
  }

  // Sends SIGHUP and waits for the reload's last log line.
  bool reload(const std::string& last_line) {
    const size_t before = count_of(daemon_->log(), last_line);
    if (::kill(daemon_->pid(), SIGHUP) != 0) return false;
    return wait_log(last_line, before + 1);
  }

  std::string scrape() {
    std::string body;
    std::string error;
    EXPECT_TRUE(metrics::http_get(endpoint_, "/metrics", &body, &error)) << error;
    return body;
  }

  void TearDown() override {
    if (!daemon_) return;
    EXPECT_TRUE(daemon_->running()) << "daemon died (wait status " << daemon_->wait_status() << ")";
    const int status = daemon_->stop(Millis(5000));
    EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << "wait status " << status;
    if (HasFailure()) daemon_->print_log_tail(std::cerr, "daemon", 200);
  }

  TempDir dir_;
  metrics::ListenAddress endpoint_;
  std::unique_ptr<ChildProcess> daemon_;
};

// `rounds` chunks each way over an established pair, checked byte for byte.
void transfer_both_ways(Stream& guest, int host, uint64_t seed, int rounds) {
  std::vector<uint8_t> chunk(32 * 1024);
  for (int round = 0; round < rounds; ++round) {
    fill_pattern(chunk, seed, static_cast<uint64_t>(round) * chunk.size());
    ASSERT_TRUE(write_all(host, chunk));
    const std::string got = guest.recv_exactly(chunk.size());
    ASSERT_EQ(got, std::string(chunk.begin(), chunk.end())) << "host to guest, round " << round;
    fill_pattern(chunk, seed + 1, static_cast<uint64_t>(round) * chunk.size());
    ASSERT_TRUE(guest.send(chunk));
    const std::string back = read_exactly(host, chunk.size());
    ASSERT_EQ(back, std::string(chunk.begin(), chunk.end())) << "guest to host, round " << round;
  }
}

TEST_P(ReloadTest, AddsRemovesAndLeavesUnchangedVmsAlone) {
  write_config({3, 4});
  start_daemon();
  GuestVsockDriver guest3(socket_of(3));
  GuestVsockDriver guest4(socket_of(4));
  HostListener listener3(uds_of(3) + "_5000");
  HostListener listener4(uds_of(4) + "_5000");
  Stream kept = guest3.connect(5000);
  ASSERT_TRUE(kept.established());
  UniqueFd kept_host = listener3.accept();
  ASSERT_TRUE(kept_host.valid());
  Stream doomed = guest4.connect(5000);
  ASSERT_TRUE(doomed.established());
  UniqueFd doomed_host = listener4.accept();
  ASSERT_TRUE(doomed_host.valid());
  transfer_both_ways(kept, kept_host.get(), 1, 4);
  EXPECT_NE(scrape().find("cid=\"4\""), std::string::npos);

  write_config({3, 5});
  ASSERT_TRUE(reload("reload done: 1 added, 1 removed, 0 restarted, 1 unchanged; serving 2 of 2 VM(s)"))
      << daemon_->log();
  EXPECT_FALSE(testing::is_socket(socket_of(4)));
  EXPECT_FALSE(testing::is_socket(uds_of(4)));
  EXPECT_TRUE(wait_peer_closed(doomed_host.get(), Millis(5000))) << "the removed VM's connection stays open";

  // The unchanged VM: the same connection still carries data both ways.
  transfer_both_ways(kept, kept_host.get(), 3, 32);
  EXPECT_TRUE(kept.established());

  // The added VM answers on both of its sockets.
  ASSERT_TRUE(testing::is_socket(socket_of(5)));
  GuestVsockDriver guest5(socket_of(5));
  EXPECT_EQ(guest5.guest_cid(), 5u);
  HostListener listener5(uds_of(5) + "_6000");
  Stream fresh = guest5.connect(6000);
  ASSERT_TRUE(fresh.established());
  UniqueFd fresh_host = listener5.accept();
  ASSERT_TRUE(fresh_host.valid());
  transfer_both_ways(fresh, fresh_host.get(), 5, 2);
  guest5.listen(7000);
  std::string ok_line;
  UniqueFd from_host = hybrid_connect(uds_of(5), 7000, &ok_line);
  EXPECT_TRUE(from_host.valid()) << "CONNECT on the added VM's uds-path";

  const std::string metrics = scrape();
  EXPECT_NE(metrics.find("cid=\"5\""), std::string::npos) << "the added VM is not scraped";
  EXPECT_EQ(metrics.find("cid=\"4\""), std::string::npos) << "the removed VM is still scraped";
  EXPECT_TRUE(guest3.violations().empty());
}

TEST_P(ReloadTest, AnInvalidFileKeepsTheRunningVms) {
  write_config({3, 4});
  start_daemon();
  GuestVsockDriver guest3(socket_of(3));
  HostListener listener3(uds_of(3) + "_5000");
  Stream kept = guest3.connect(5000);
  ASSERT_TRUE(kept.established());
  UniqueFd kept_host = listener3.accept();
  ASSERT_TRUE(kept_host.valid());

  // The same CID twice, then a YAML syntax error, then a file that is gone.
  dir_.write("vms.yaml", "vms:\n  - guest_cid: 3\n    socket: " + socket_of(3) + "\n    uds_path: " + uds_of(3) +
                             "\n  - guest_cid: 3\n    socket: " + socket_of(6) + "\n    uds_path: " + uds_of(6) + "\n");
  ASSERT_TRUE(reload("reload rejected")) << daemon_->log();
  EXPECT_NE(daemon_->log().find("CID 3 is already used"), std::string::npos);
  dir_.write("vms.yaml", "vms: [ {guest_cid: 5,\n");
  ASSERT_TRUE(reload("reload rejected")) << daemon_->log();
  ASSERT_EQ(::unlink(dir_.file("vms.yaml").c_str()), 0);
  ASSERT_TRUE(reload("reload rejected")) << daemon_->log();

  EXPECT_TRUE(testing::is_socket(socket_of(3)));
  EXPECT_TRUE(testing::is_socket(socket_of(4)));
  EXPECT_FALSE(testing::is_socket(socket_of(6)));
  transfer_both_ways(kept, kept_host.get(), 7, 8);
  EXPECT_NE(scrape().find("cid=\"4\""), std::string::npos);

  // A later valid file applies as usual; the same set is no change at all.
  write_config({3, 4});
  ASSERT_TRUE(reload("reload done: 0 added, 0 removed, 0 restarted, 2 unchanged")) << daemon_->log();
  transfer_both_ways(kept, kept_host.get(), 9, 2);
}

TEST_P(ReloadTest, AChangedVmIsRestartedOnItsNewSockets) {
  write_config({3, 4});
  start_daemon();
  dir_.write("vms.yaml", "vms:\n  - guest_cid: 3\n    socket: " + socket_of(3) + "\n    uds_path: " + uds_of(3) +
                             "\n  - guest_cid: 4\n    socket: " + socket_of(4) + "\n    uds_path: " + uds_of(40) +
                             "\n    tx_buffer_size: 4096\n");
  ASSERT_TRUE(reload("reload done: 0 added, 0 removed, 1 restarted, 1 unchanged")) << daemon_->log();
  EXPECT_NE(daemon_->log().find("vm cid=4 changed (uds_path, tx_buffer_size): restarting it"), std::string::npos);
  EXPECT_FALSE(testing::is_socket(uds_of(4)));
  EXPECT_TRUE(testing::is_socket(uds_of(40)));
  GuestVsockDriver guest4(socket_of(4));
  HostListener listener(uds_of(40) + "_5000");
  Stream stream = guest4.connect(5000);
  EXPECT_TRUE(stream.established());
}

// systemd (Type=notify with ExecReload=kill -HUP): RELOADING=1 with the
// monotonic time, then READY=1, also when the file is rejected.
TEST_P(ReloadTest, TellsSystemdAboutTheReload) {
  const std::string notify_path = dir_.file("notify");
  UniqueFd notify(::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0));
  const sockaddr_un address = base::unix_socket_address(notify_path);
  ASSERT_EQ(::bind(notify.get(), reinterpret_cast<const sockaddr*>(&address), sizeof(address)), 0);
  auto receive = [&notify] {
    pollfd ready{notify.get(), POLLIN, 0};
    if (::poll(&ready, 1, 10000) != 1) return std::string();
    char buffer[256];
    const ssize_t n = ::recv(notify.get(), buffer, sizeof(buffer), 0);
    return n > 0 ? std::string(buffer, static_cast<size_t>(n)) : std::string();
  };
  write_config({3});
  start_daemon(1, {"NOTIFY_SOCKET=" + notify_path});
  EXPECT_EQ(receive(), "READY=1\nSTATUS=serving 1 VM(s)");

  write_config({3, 4});
  ASSERT_TRUE(reload("reload done")) << daemon_->log();
  const std::string reloading = receive();
  EXPECT_EQ(reloading.rfind("RELOADING=1\nMONOTONIC_USEC=", 0), 0u) << reloading;
  timespec now{};
  ::clock_gettime(CLOCK_MONOTONIC, &now);
  const uint64_t usec = std::stoull(reloading.substr(reloading.find('=', 12) + 1));
  EXPECT_LE(usec, static_cast<uint64_t>(now.tv_sec) * 1000000 + static_cast<uint64_t>(now.tv_nsec) / 1000);
  EXPECT_EQ(receive(), "READY=1\nSTATUS=serving 2 VM(s)");

  dir_.write("vms.yaml", "vms: [\n");
  ASSERT_TRUE(reload("reload rejected")) << daemon_->log();
  EXPECT_EQ(receive().rfind("RELOADING=1\n", 0), 0u);
  EXPECT_EQ(receive(), "READY=1\nSTATUS=serving 2 VM(s); last reload rejected");
}

INSTANTIATE_TEST_SUITE_P(Sandbox, ReloadTest, ::testing::Values(false, true),
                         [](const ::testing::TestParamInfo<bool>& info) {
                           return info.param ? "Seccomp" : "NoSandbox";
                         });

TEST(ReloadWithoutConfig, SighupSaysThereIsNothingToReload) {
  testing::DaemonProcess daemon;
  ASSERT_EQ(::kill(daemon.pid(), SIGHUP), 0);
  const auto deadline = std::chrono::steady_clock::now() + Millis(5000);
  while (daemon.log().find("nothing to reload") == std::string::npos && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(Millis(10));
  }
  EXPECT_NE(daemon.log().find("received SIGHUP: nothing to reload (started without --config)"), std::string::npos)
      << daemon.log();
  EXPECT_TRUE(daemon.running());
  EXPECT_TRUE(testing::is_socket(daemon.socket_path()));
}

}  // namespace
}  // namespace vhost_vsock::integration
