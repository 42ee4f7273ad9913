// The processes a bench_sim run drives besides the simulated guest (which is
// this process): the daemon under test and the AF_UNIX host peer
// (sim_host_peer.cpp, bench_sim re-executed), plus the CPU and syscall
// figures read from /proc around a timed part.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <string>
#include <vector>

#include "bench_common.h"

namespace vhost_vsock::bench {

inline constexpr uint64_t kGuestCid = 3;

// build/vhost-user-vsock (or --daemon, under --daemon-wrapper) serving one VM
// with its sockets in `dir`; the constructor waits until the vhost-user
// socket exists. A benchmark failure stops it first, so its shutdown
// statistics reach the log next to the error message.
class DaemonProcess {
 public:
  DaemonProcess(const Options& options, const std::string& dir, uint32_t max_connections);
  ~DaemonProcess() { stop(); }

  [[nodiscard]] pid_t pid() const { return pid_; }
  [[nodiscard]] const std::string& socket_path() const { return socket_path_; }
  [[nodiscard]] const std::string& uds_path() const { return uds_path_; }
  bool alive();
  // SIGTERM, then wait (valgrind needs a while to write its profile).
  // Returns an error message if the daemon did not exit cleanly.
  std::string stop();

 private:
  static std::vector<std::string> split_path(const std::string& text);

  std::string socket_path_;
  std::string uds_path_;
  pid_t pid_ = -1;
  int exit_status_ = 0;
};

// The host peer process and its control socket.
class HostPeer {
 public:
  HostPeer(const std::string& self, const std::string& role, const std::string& uds,
           const std::vector<std::string>& extra);
  ~HostPeer();
  // Waits for "ready" / "done <json>"; fails the benchmark on "error ...".
  std::string expect(const std::string& word) const;
  void go() const;
  void finish();

 private:
  int control_ = -1;
  pid_t pid_ = -1;
};

// Crude: pulls "key": number out of the peer's flat JSON.
double json_number(const std::string& json, const std::string& key);

// CPU time of the simulated guest (this process) and of the daemon over the
// timed part of a transfer.
struct CpuWindow {
  double guest = 0;
  double daemon = 0;
  uint64_t daemon_read_calls = 0;
  uint64_t daemon_write_calls = 0;
  uint64_t daemon_wakeups = 0;
  uint64_t daemon_preemptions = 0;
  void start(pid_t daemon_pid);
  void stop(pid_t daemon_pid);
};

}  // namespace vhost_vsock::bench
