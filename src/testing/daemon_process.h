// Runs the real daemon binary for integration tests: a fresh short temp dir
// (AF_UNIX paths must stay under 108 bytes), stderr/stdout captured to a log
// file, the vhost-user socket awaited, and the process killed by PID at the end.
// The daemon gets SIGKILL if the thread that started it dies (PR_SET_PDEATHSIG),
// so start it from a thread that outlives it (the test's main thread).
#pragma once

#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <string>
#include <vector>

namespace vhost_vsock::testing {

struct DaemonOptions {
  uint64_t guest_cid = 3;
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
  [[nodiscard]] pid_t pid() const { return pid_; }
  [[nodiscard]] const std::vector<std::string>& args() const { return args_; }

  // Reaps the child if it exited; true while it runs.
  bool running();
  // SIGTERM, wait up to `grace`, then SIGKILL. Returns the raw wait status
  // (-1 if it was already reaped before).
  int stop(std::chrono::milliseconds grace = std::chrono::milliseconds(3000));
  [[nodiscard]] int exit_status() const { return status_; }
  // Waits until `path` exists (e.g. the uds listener). False on timeout.
  bool wait_for_path(const std::string& path, std::chrono::milliseconds timeout);
  [[nodiscard]] std::string log() const;
  [[nodiscard]] const std::string& log_path() const { return log_path_; }

 private:
  std::string dir_;
  std::string socket_path_;
  std::string uds_path_;
  std::string log_path_;
  std::vector<std::string> args_;
  pid_t pid_ = -1;
  int status_ = -1;
};

}  // namespace vhost_vsock::testing
