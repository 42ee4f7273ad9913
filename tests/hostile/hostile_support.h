// Shared pieces of the hostile suite (docs/security.md): the daemon under
// attack (several VMs in one process, so a sibling VM can prove the daemon is
// still serving), a sentinel pair of healthy connections opened before each
// attack and checked after it, memory and descriptor measurements, and a
// fixture that checks all of that in TearDown.
#pragma once

#include <gtest/gtest.h>
#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "host_socket.h"
#include "testing/child_process.h"
#include "testing/vsock_driver.h"

namespace vhost_vsock::hostile {

using integration::HostListener;
using integration::Millis;
using integration::UniqueFd;
using testing::GuestOptions;
using testing::GuestVsockDriver;
using testing::Stream;

#ifdef VUV_HOSTILE_SANITIZED
inline constexpr bool kSanitized = true;
#else
inline constexpr bool kSanitized = false;
#endif

// Memory bounds on the daemon's own memory: VmRSS minus RssShmem (the guest
// RAM it touched through its shared mapping, which is the guest's memory).
// Sanitizer runtimes add shadow memory and quarantines, hence looser bounds.
inline constexpr double kOwnMemoryLimitMiB = kSanitized ? 1024 : 64;
// Growth allowed during one attack; every attack offers far more than this.
inline constexpr double kGrowthLimitMiB = kSanitized ? 160 : 24;

struct MemoryUse {
  uint64_t rss_kib = 0;
  uint64_t hwm_kib = 0;    // peak VmRSS
  uint64_t shmem_kib = 0;  // RssShmem
  [[nodiscard]] double own_mib() const { return static_cast<double>(rss_kib - std::min(rss_kib, shmem_kib)) / 1024; }
  [[nodiscard]] double hwm_mib() const { return static_cast<double>(hwm_kib) / 1024; }
  [[nodiscard]] std::string describe() const;
};

struct DaemonSpec {
  int vms = 2;  // CIDs 3, 4, ...; VM 0 is attacked, VM 1 is the sibling
  std::vector<std::string> extra_args;
  std::vector<std::string> env;  // "NAME=value" added to the daemon's environment
  bool uds_in_subdir = false;    // uds-paths in <dir>/uds/ (directory tests)
  Millis startup_timeout{10000};
  // Permissions of the temp dir and the uds dir (e.g. 0777 for --user tests).
  unsigned dir_mode = 0700;
};

// The daemon binary ($VUV_DAEMON, else the build tree's), run in a fresh
// short temp dir with its log captured, killed by PID if the test dies.
class HostileDaemon {
 public:
  explicit HostileDaemon(DaemonSpec spec = {});
  ~HostileDaemon();  // records the peak memory, SIGKILLs if still running, removes the dir
  HostileDaemon(const HostileDaemon&) = delete;
  HostileDaemon& operator=(const HostileDaemon&) = delete;

  [[nodiscard]] uint64_t cid(int vm) const { return 3 + static_cast<uint64_t>(vm); }
  [[nodiscard]] std::string socket_path(int vm) const;
  [[nodiscard]] std::string uds_path(int vm) const;
  [[nodiscard]] std::string uds_port_path(int vm, uint32_t port) const {
    return uds_path(vm) + "_" + std::to_string(port);
  }
  [[nodiscard]] const std::string& dir() const { return dir_; }
  [[nodiscard]] std::string uds_dir() const;
  [[nodiscard]] pid_t pid() const { return process_->pid(); }

  bool running() { return process_->running(); }  // reaps the child if it exited
  // SIGTERM, then the exit status within `grace` (-1 if it had to be SIGKILLed).
  int terminate(Millis grace = Millis(8000));
  // Wait status once it exits by itself; -1 on timeout.
  int wait_exit(Millis timeout) { return process_->wait_exit(timeout); }
  // -1 while it runs and after terminate() had to SIGKILL it.
  [[nodiscard]] int exit_status() const { return process_->killed_after_grace() ? -1 : process_->wait_status(); }

  [[nodiscard]] std::string log() const { return process_->log(); }
  void print_log_tail(std::ostream& out, size_t max_lines) const { process_->print_log_tail(out, "daemon", max_lines); }
  bool wait_log(const std::string& needle, Millis timeout) const;
  [[nodiscard]] MemoryUse memory() const;
  [[nodiscard]] size_t open_fds() const;
  // open_fds() once it is down to `limit`, or at `timeout`: the daemon closes
  // a peer's descriptors when it sees the hang-up, which a loaded machine
  // delays, while a leaked one never goes.
  [[nodiscard]] size_t open_fds_settled(size_t limit, Millis timeout = Millis(5000)) const;
  [[nodiscard]] double cpu_seconds() const;  // user + system
  [[nodiscard]] const std::vector<std::string>& args() const { return process_->args(); }

 private:
  DaemonSpec spec_;
  std::string dir_;
  std::optional<testing::ChildProcess> process_;  // started once the dirs exist
};

// Two healthy streams of one VM, opened before an attack: guest->host on
// `port` and host->guest on `port + 1`. check() sends fresh data both ways on
// both and verifies it byte for byte.
class Sentinel {
 public:
  Sentinel(HostileDaemon& daemon, int vm, GuestVsockDriver& guest, uint32_t port);
  // True if everything arrived; failures are reported with `when`.
  bool check(const std::string& when);

 private:
  GuestVsockDriver& guest_;
  uint32_t port_;
  HostListener listener_;
  Stream guest_to_host_;
  UniqueFd guest_to_host_peer_;
  Stream host_to_guest_;
  UniqueFd host_to_guest_peer_;
  int round_ = 0;
};

// Wait status in words, for failure messages.
std::string describe_status(int status);

// The largest VmHWM seen by any daemon of this test binary (printed at exit).
double peak_hwm_mib();

// A daemon with a sibling VM whose sentinel must survive every attack on VM 0.
class HostileTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() { integration::raise_fd_limit(); }

  // Starts the daemon, the sibling guest (VM 1, if spec.vms > 1) and its sentinel.
  void start(DaemonSpec spec = {});
  // A simulated guest on VM 0 (replaces the previous one).
  GuestVsockDriver& attach_guest(GuestOptions options = {});
  // start(), a guest on VM 0 (capturing packets) and its own sentinel on
  // ports 6000/6001, opened before any attack and checked in TearDown.
  void start_with_guest(DaemonSpec spec = {}, GuestOptions options = {});
  // Alive, sibling sentinel intact, own memory within kOwnMemoryLimitMiB.
  void expect_daemon_healthy(const std::string& when);
  // Own memory grew by at most kGrowthLimitMiB since `before`.
  void expect_memory_growth_bounded(const MemoryUse& before, const std::string& what);
  // After an attack that ended with its front-end gone: the daemon and its
  // sibling are fine, and a proper front-end plus guest on VM 0 gets a
  // working device (a stream to `port` carries data).
  void expect_next_frontend_works(uint32_t port);
  // Guest-driver violations containing this text are expected (e.g. raw ring writes).
  void allow_violations_containing(std::string text) { allowed_violations_.push_back(std::move(text)); }
  void TearDown() override;

  HostileDaemon& daemon() { return *daemon_; }
  GuestVsockDriver& guest() { return *guest_; }

  std::unique_ptr<HostileDaemon> daemon_;
  std::unique_ptr<GuestVsockDriver> sibling_guest_;
  std::unique_ptr<Sentinel> sibling_sentinel_;
  std::unique_ptr<GuestVsockDriver> guest_;
  std::unique_ptr<Sentinel> own_sentinel_;
  std::vector<std::string> allowed_violations_;
  bool expect_running_at_end_ = true;

  void check_violations(GuestVsockDriver& driver, const char* which);
};

}  // namespace vhost_vsock::hostile
