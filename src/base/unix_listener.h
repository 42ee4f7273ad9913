// A listening AF_UNIX stream (or seqpacket) socket on a filesystem path, served on an
// EventLoop: the one implementation behind the vhost-user socket and the
// hybrid vsock uds-path.
//
// Setup (constructor; throws std::runtime_error "<name> '<path>': <cause>"):
//   - the path must be 1..kMaxUnixPathLength bytes;
//   - an existing file is replaced only if it is a socket that nobody listens
//     on (a probe connect() gets ECONNREFUSED). A live listener (connect()
//     succeeds, or EAGAIN: its backlog is full) and anything that is not a
//     socket are refused, never deleted;
//   - the socket is SOCK_NONBLOCK | SOCK_CLOEXEC with a backlog of 1024.
// Serving: each readiness event accepts up to Options::accepts_per_event
// connections and hands each to the callback as a non-blocking, close-on-exec
// fd. When accept() fails for lack of fds or memory (EMFILE, ENFILE, ENOBUFS,
// ENOMEM) the pending connection stays queued and would keep the listener
// readable, so the listener stops watching for Options::pause and then
// resumes; the warning is rate-limited.
// Teardown (destructor): stops watching, cancels the resume timer, closes the
// socket and unlinks the path only if it still names the socket we bound (see
// BoundSocketFile), never a successor's.
//
// Everything runs on the loop's thread. The callback may destroy the listener.
#pragma once

#include <sys/socket.h>

#include <chrono>
#include <cstdint>
#include <functional>
#include <string>

#include "base/event_loop.h"
#include "base/socket_file.h"
#include "base/unique_fd.h"

namespace vhost_vsock::base {

class UnixListener {
 public:
  using AcceptCallback = std::function<void(UniqueFd connection)>;

  struct Options {
    // Names the socket in errors and logs, e.g. "vhost-user socket" or "uds-path".
    std::string name = "unix socket";
    int socket_type = SOCK_STREAM;  // or SOCK_SEQPACKET
    int backlog = 1024;
    // Bounds one readiness event, so a connection storm cannot starve the loop.
    int accepts_per_event = 64;
    std::chrono::milliseconds pause = std::chrono::milliseconds(100);
    // At most one "pausing the listener" warning per interval.
    std::chrono::milliseconds warning_interval = std::chrono::seconds(10);
  };

  struct Stats {
    uint64_t accepted = 0;
    uint64_t pauses = 0;  // times accept() ran out of fds or memory
  };

  UnixListener(EventLoop& loop, std::string path, AcceptCallback on_accept, Options options);
  UnixListener(EventLoop& loop, std::string path, AcceptCallback on_accept)
      : UnixListener(loop, std::move(path), std::move(on_accept), Options{}) {}
  ~UnixListener();
  UnixListener(const UnixListener&) = delete;
  UnixListener& operator=(const UnixListener&) = delete;

  [[nodiscard]] const std::string& path() const { return path_; }
  [[nodiscard]] int fd() const { return socket_.get(); }
  // True between a resource-exhaustion pause and its resume.
  [[nodiscard]] bool paused() const { return resume_timer_ != 0; }
  [[nodiscard]] const Stats& stats() const { return stats_; }

 private:
  void open_socket();
  void remove_stale_file();
  void accept_ready();
  void accept_batch(const bool& destroyed);
  void pause_after(int error);
  void resume();
  [[noreturn]] void fail(const std::string& cause) const;
  [[noreturn]] void fail_errno(const std::string& cause, int error) const;

  EventLoop& loop_;
  std::string path_;
  AcceptCallback on_accept_;
  Options options_;
  Stats stats_;
  UniqueFd socket_;
  BoundSocketFile socket_file_;
  EventLoop::TimerId resume_timer_ = 0;
  EventLoop::Clock::time_point last_warning_{};
  uint64_t unlogged_pauses_ = 0;
  bool* destroyed_ = nullptr;  // set by accept_ready() while it runs callbacks
};

}  // namespace vhost_vsock::base
