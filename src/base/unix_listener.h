// A listening AF_UNIX stream (or seqpacket) socket on a filesystem path, served on an
// EventLoop: the one implementation behind the vhost-user socket and the
// hybrid vsock uds-path. The path handling lives here; accepting is
// base::SocketAcceptor's.
//
// Setup (constructor; throws std::runtime_error "<name> '<path>': <cause>"):
//   - the path must be 1..kMaxUnixPathLength bytes;
//   - an existing file is replaced only if it is a socket that nobody listens
//     on (a probe connect() gets ECONNREFUSED). A live listener (connect()
//     succeeds, or EAGAIN: its backlog is full) and anything that is not a
//     socket are refused, never deleted;
//   - the socket is SOCK_NONBLOCK | SOCK_CLOEXEC with a backlog of 1024.
// Serving (SocketAcceptor): each readiness event accepts up to
// Options::accepts_per_event connections and hands each to the callback as a
// non-blocking, close-on-exec fd; on EMFILE, ENFILE, ENOBUFS or ENOMEM the
// listener stops watching for Options::pause and then resumes; warnings are
// rate-limited. Log lines start with "<name> <path>".
// Teardown (destructor): stops watching, cancels the resume timer, closes the
// socket and unlinks the path only if it still names the socket we bound (see
// BoundSocketFile), never a successor's.
//
// Everything runs on the loop's thread. The callback may destroy the listener.
#pragma once

#include <sys/socket.h>

#include <chrono>
#include <optional>
#include <string>

#include "base/event_loop.h"
#include "base/socket_acceptor.h"
#include "base/socket_file.h"
#include "base/unique_fd.h"

namespace vhost_vsock::base {

class UnixListener {
 public:
  using AcceptCallback = SocketAcceptor::AcceptCallback;
  using Stats = SocketAcceptor::Stats;

  struct Options {
    // Names the socket in errors and logs, e.g. "vhost-user socket" or "uds-path".
    std::string name = "unix socket";
    int socket_type = SOCK_STREAM;  // or SOCK_SEQPACKET
    int backlog = 1024;
    // Bounds one readiness event, so a connection storm cannot starve the loop.
    int accepts_per_event = SocketAcceptor::kDefaultAcceptsPerEvent;
    std::chrono::milliseconds pause = SocketAcceptor::kDefaultPause;
    // At most one warning of each kind (pause, other accept error) per interval.
    std::chrono::milliseconds warning_interval = SocketAcceptor::kDefaultWarningInterval;
  };

  UnixListener(EventLoop& loop, std::string path, AcceptCallback on_accept, Options options);
  UnixListener(EventLoop& loop, std::string path, AcceptCallback on_accept)
      : UnixListener(loop, std::move(path), std::move(on_accept), Options{}) {}
  ~UnixListener();
  UnixListener(const UnixListener&) = delete;
  UnixListener& operator=(const UnixListener&) = delete;

  [[nodiscard]] const std::string& path() const { return path_; }
  [[nodiscard]] int fd() const { return acceptor_->fd(); }
  // True between a resource-exhaustion pause and its resume.
  [[nodiscard]] bool paused() const { return acceptor_->paused(); }
  [[nodiscard]] const Stats& stats() const { return acceptor_->stats(); }

 private:
  [[nodiscard]] UniqueFd bind_and_listen();
  void remove_stale_file();
  [[noreturn]] void fail(const std::string& cause) const;
  [[noreturn]] void fail_errno(const std::string& cause, int error) const;

  std::string path_;
  Options options_;
  BoundSocketFile socket_file_;
  std::optional<SocketAcceptor> acceptor_;  // set once the socket listens
};

}  // namespace vhost_vsock::base
