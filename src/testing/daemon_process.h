// Runs the real daemon binary for integration tests: a fresh short temp dir
// (AF_UNIX paths must stay under 108 bytes), stderr/stdout captured to a log
// file, the vhost-user socket awaited, and the process killed by PID at the end.
// The daemon gets SIGKILL if the thread that started it dies (PR_SET_PDEATHSIG),
// so start it from a thread that outlives it (the test's main thread).
#pragma once

#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "testing/child_process.h"

namespace vhost_vsock::testing {

// $VUV_DAEMON_LOG_LEVEL if set, else `fallback`: the daemon's --log-level.
std::string daemon_log_level(const std::string& fallback);

// True if `path` is a socket file (the daemon has bound it).
bool is_socket(const std::string& path);

// Another VM of the same daemon (sibling routing tests).
struct ExtraVm {
  uint64_t guest_cid = 0;
  std::string groups = "default";  // as --vm's groups=, e.g. "a+b"
};

struct DaemonOptions {
  uint64_t guest_cid = 3;
  // With extra VMs the daemon gets one --vm per VM (guest_cid first, with
  // `groups`); each extra VM's sockets are socket_path_of(cid)/uds_path_of(cid).
  std::string groups = "default";
  std::vector<ExtraVm> extra_vms;
  std::vector<std::string> extra_args;  // e.g. {"--handshake-timeout", "300"}
  // --log-level; the env var VUV_DAEMON_LOG_LEVEL overrides it.
  std::string log_level = "info";
  std::chrono::milliseconds startup_timeout{10000};
};

class DaemonProcess {
 public:
  // Spawns the daemon and waits for its vhost-user socket. Throws
  // std::runtime_error (with the daemon's log) if it exits or times out.
  explicit DaemonProcess(DaemonOptions options = {});
  ~DaemonProcess();  // stop(), then removes the temp dir (unless VUV_KEEP_TEMP is set)
  DaemonProcess(const DaemonProcess&) = delete;
  DaemonProcess& operator=(const DaemonProcess&) = delete;

  // $VUV_DAEMON, else the build tree's vhost-user-vsock.
  static std::string binary_path();

  [[nodiscard]] const std::string& dir() const { return dir_; }
  [[nodiscard]] const std::string& socket_path() const { return socket_path_; }
  [[nodiscard]] const std::string& uds_path() const { return uds_path_; }
  // "<uds>_<port>": where a host program listens for guest connects to `port`.
  [[nodiscard]] std::string uds_port_path(uint32_t port) const { return uds_path_ + "_" + std::to_string(port); }
  // An extra VM's sockets (DaemonOptions::extra_vms).
  [[nodiscard]] std::string socket_path_of(uint64_t cid) const {
    return dir_ + "/vhost-" + std::to_string(cid) + ".sock";
  }
  [[nodiscard]] std::string uds_path_of(uint64_t cid) const { return dir_ + "/vsock-" + std::to_string(cid); }
  [[nodiscard]] pid_t pid() const { return process_->pid(); }
  [[nodiscard]] const std::vector<std::string>& args() const { return process_->args(); }

  // Reaps the child if it exited; true while it runs.
  bool running() { return process_->running(); }
  // SIGTERM, wait up to `grace`, then SIGKILL. Returns the raw wait status,
  // that of the SIGKILL if it came to that.
  int stop(std::chrono::milliseconds grace = std::chrono::milliseconds(3000));
  [[nodiscard]] int exit_status() const { return process_->wait_status(); }
  // Waits until `path` exists (e.g. the uds listener). False on timeout.
  bool wait_for_path(const std::string& path, std::chrono::milliseconds timeout);
  [[nodiscard]] std::string log() const { return process_->log(); }
  [[nodiscard]] const std::string& log_path() const { return process_->log_path(); }
  void print_log_tail(std::ostream& out, size_t max_lines) const { process_->print_log_tail(out, "daemon", max_lines); }

 private:
  std::string dir_;
  std::string socket_path_;
  std::string uds_path_;
  std::optional<ChildProcess> process_;  // started once the paths above exist
};

}  // namespace vhost_vsock::testing
