// A program run by a test, such as the daemon: forked and exec'd with its
// stdout and stderr appended to a log file, killed with SIGKILL if the thread
// that started it dies (PR_SET_PDEATHSIG), so start it from a thread that
// outlives it (the test's main thread), and stopped by PID.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <cstddef>
#include <iosfwd>
#include <string>
#include <vector>

namespace vhost_vsock::testing {

class ChildProcess {
 public:
  using Millis = std::chrono::milliseconds;

  // Runs args[0] (a path) with `args`, this process's environment plus
  // `extra_env` ("NAME=value"), stdin from /dev/null and stdout and stderr
  // appended to `log_path`. Throws std::runtime_error if it cannot.
  ChildProcess(std::vector<std::string> args, std::string log_path, const std::vector<std::string>& extra_env = {});
  ~ChildProcess();  // SIGKILLs and reaps the child if it still runs
  ChildProcess(const ChildProcess&) = delete;
  ChildProcess& operator=(const ChildProcess&) = delete;

  [[nodiscard]] pid_t pid() const { return pid_; }  // -1 once reaped
  [[nodiscard]] const std::vector<std::string>& args() const { return args_; }
  [[nodiscard]] const std::string& log_path() const { return log_path_; }
  [[nodiscard]] std::string log() const;  // all it wrote so far
  // For a failed test: its args and the last `max_lines` lines of its log
  // (the tail is what matters, and a full debug log can be huge).
  void print_log_tail(std::ostream& out, const std::string& name, size_t max_lines) const;

  // Reaps the child if it exited; true while it runs.
  bool running();
  // Its raw wait status once reaped (also after stop() had to SIGKILL it); -1 before.
  [[nodiscard]] int wait_status() const { return status_; }
  // True once stop() had to SIGKILL it because it outlived the grace period.
  [[nodiscard]] bool killed_after_grace() const { return killed_after_grace_; }
  // Waits for it to exit by itself: its wait status, or -1 on timeout.
  int wait_exit(Millis timeout);
  // SIGTERM, wait up to `grace`, then SIGKILL. Returns wait_status().
  int stop(Millis grace);

 private:
  std::vector<std::string> args_;
  std::string log_path_;
  pid_t pid_ = -1;
  int status_ = -1;
  bool killed_after_grace_ = false;
};

}  // namespace vhost_vsock::testing
