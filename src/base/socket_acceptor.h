// Serves a bound, listening, non-blocking socket of any family on an
// EventLoop: the accept loop behind base::UnixListener (a Unix path) and the
// --forward-listen listeners (AF_VSOCK), written once.
//
// Each readiness event accepts up to Options::accepts_per_event connections,
// so a connection storm cannot starve the loop, and hands each to the
// callback as a non-blocking, close-on-exec fd. When accept() fails for lack
// of fds or memory (EMFILE, ENFILE, ENOBUFS, ENOMEM) the pending connection
// stays queued and would keep the socket readable, so the acceptor stops
// watching for Options::pause and then resumes. Accept failures are logged
// through LogLimiter: one line per Options::warning_interval for pauses and
// one for other errors, then a count of what was suppressed.
//
// Teardown (destructor): stops watching, cancels the resume timer, closes
// the socket. Everything runs on the loop's thread. The callback may destroy
// the acceptor (or the object that owns it); the rest of that batch is then
// not accepted.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <string>

#include "base/event_loop.h"
#include "base/log_limiter.h"
#include "base/unique_fd.h"

namespace vhost_vsock::base {

class SocketAcceptor {
 public:
  using AcceptCallback = std::function<void(UniqueFd connection)>;

  static constexpr int kDefaultAcceptsPerEvent = 64;
  static constexpr std::chrono::milliseconds kDefaultPause{100};
  static constexpr std::chrono::milliseconds kDefaultWarningInterval{std::chrono::seconds(10)};

  struct Options {
    // Starts every log line, e.g. "uds-path /run/v.sock" or "forward-listen port 9000".
    std::string name = "listening socket";
    // Bounds one readiness event.
    int accepts_per_event = kDefaultAcceptsPerEvent;
    std::chrono::milliseconds pause = kDefaultPause;
    // At most one warning of each kind (pause, other accept error) per interval.
    std::chrono::milliseconds warning_interval = kDefaultWarningInterval;
  };

  struct Stats {
    uint64_t accepted = 0;
    uint64_t pauses = 0;  // times accept() ran out of fds or memory
  };

  // Takes `socket` (bound, listening, non-blocking) and starts watching it.
  // Throws std::system_error if the loop refuses it; `socket` is then closed.
  SocketAcceptor(EventLoop& loop, UniqueFd socket, AcceptCallback on_accept, Options options);
  ~SocketAcceptor();
  SocketAcceptor(const SocketAcceptor&) = delete;
  SocketAcceptor& operator=(const SocketAcceptor&) = delete;

  [[nodiscard]] int fd() const { return socket_.get(); }
  // True between a resource-exhaustion pause and its resume.
  [[nodiscard]] bool paused() const { return resume_timer_ != 0; }
  [[nodiscard]] const Stats& stats() const { return stats_; }

 private:
  void watch();  // throws std::system_error if the loop refuses
  void accept_ready();
  void accept_batch(const bool& destroyed);
  void pause_after(int error);
  void resume();

  EventLoop& loop_;
  UniqueFd socket_;
  AcceptCallback on_accept_;
  Options options_;
  Stats stats_;
  LogLimiter pause_log_;
  LogLimiter error_log_;
  EventLoop::TimerId resume_timer_ = 0;
  bool* destroyed_ = nullptr;  // set by accept_ready() while it runs callbacks
};

}  // namespace vhost_vsock::base
