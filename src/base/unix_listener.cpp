#include "base/unix_listener.h"

#include <fmt/format.h>
#include <spdlog/spdlog.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>

#include <cerrno>
#include <stdexcept>

#include "base/errno_text.h"
#include "base/unix_socket_address.h"

namespace vhost_vsock::base {
namespace {

bool out_of_resources(int error) {
  return error == EMFILE || error == ENFILE || error == ENOBUFS || error == ENOMEM;
}

}  // namespace

UnixListener::UnixListener(EventLoop& loop, std::string path, AcceptCallback on_accept, Options options)
    : loop_(loop), path_(std::move(path)), on_accept_(std::move(on_accept)), options_(std::move(options)) {
  if (path_.empty() || path_.size() > kMaxUnixPathLength) {
    fail(fmt::format("the path is {} bytes long; AF_UNIX allows 1..{} bytes", path_.size(), kMaxUnixPathLength));
  }
  remove_stale_file();
  open_socket();
  spdlog::info("{} {}: listening", options_.name, path_);
}

UnixListener::~UnixListener() {
  if (destroyed_ != nullptr) *destroyed_ = true;
  if (resume_timer_ != 0) loop_.cancel_timer(resume_timer_);
  loop_.remove(socket_.get());
  socket_.reset();
  socket_file_.unlink_if_ours();
}

void UnixListener::fail(const std::string& cause) const {
  throw std::runtime_error(fmt::format("{} '{}': {}", options_.name, path_, cause));
}

void UnixListener::fail_errno(const std::string& cause, int error) const {
  fail(fmt::format("{}: {}", cause, errno_text(error)));
}

void UnixListener::remove_stale_file() {
  struct stat info {};
  if (::lstat(path_.c_str(), &info) != 0) {
    if (errno == ENOENT) return;
    fail_errno("cannot inspect the path", errno);
  }
  if (!S_ISSOCK(info.st_mode)) fail("the path exists and is not a socket; refusing to replace it");
  const sockaddr_un address = unix_socket_address(path_);
  UniqueFd probe(::socket(AF_UNIX, options_.socket_type | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
  if (!probe) fail_errno("cannot create a probe socket", errno);
  if (::connect(probe.get(), reinterpret_cast<const sockaddr*>(&address), sizeof(address)) == 0) {
    fail("another process is listening on it");
  }
  if (errno == EAGAIN) fail("another process is listening on it (its backlog is full)");
  if (errno != ECONNREFUSED) fail_errno("cannot probe the existing socket", errno);
  spdlog::info("{} {}: replacing a stale socket file", options_.name, path_);
  if (::unlink(path_.c_str()) != 0 && errno != ENOENT) fail_errno("cannot remove the stale socket file", errno);
}

void UnixListener::open_socket() {
  const sockaddr_un address = unix_socket_address(path_);
  UniqueFd socket(::socket(AF_UNIX, options_.socket_type | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
  if (!socket) fail_errno("cannot create the socket", errno);
  if (::bind(socket.get(), reinterpret_cast<const sockaddr*>(&address), sizeof(address)) != 0) {
    fail_errno("cannot bind", errno);
  }
  socket_file_ = BoundSocketFile(path_);
  if (::listen(socket.get(), options_.backlog) != 0) {
    const int error = errno;
    socket_file_.unlink_if_ours();
    fail_errno("cannot listen", error);
  }
  try {
    loop_.add(socket.get(), EPOLLIN, [this](uint32_t) { accept_ready(); });
  } catch (const std::system_error& e) {
    socket_file_.unlink_if_ours();
    fail(fmt::format("cannot watch the socket: {}", e.what()));
  }
  socket_ = std::move(socket);
}

void UnixListener::accept_ready() {
  bool destroyed = false;
  destroyed_ = &destroyed;
  try {
    accept_batch(destroyed);
  } catch (...) {
    if (!destroyed) destroyed_ = nullptr;
    throw;
  }
  if (!destroyed) destroyed_ = nullptr;
}

void UnixListener::accept_batch(const bool& destroyed) {
  for (int i = 0; i < options_.accepts_per_event; ++i) {
    UniqueFd connection(::accept4(socket_.get(), nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC));
    if (!connection) {
      const int error = errno;
      if (error == EINTR || error == ECONNABORTED) continue;
      if (error == EAGAIN || error == EWOULDBLOCK) return;
      if (out_of_resources(error)) {
        pause_after(error);
        return;
      }
      spdlog::warn("{} {}: accept failed: {}", options_.name, path_, errno_text(error));
      return;  // level-triggered: a lasting failure comes back next iteration
    }
    ++stats_.accepted;
    on_accept_(std::move(connection));
    if (destroyed) return;
  }
}

void UnixListener::pause_after(int error) {
  ++stats_.pauses;
  const auto now = EventLoop::Clock::now();
  if (stats_.pauses == 1 || now - last_warning_ >= options_.warning_interval) {
    spdlog::warn(
        "{} {}: accept failed: {}; pausing the listener for {} ms{}", options_.name, path_, errno_text(error),
        options_.pause.count(),
        unlogged_pauses_ == 0 ? "" : fmt::format(" ({} more pauses since the last warning)", unlogged_pauses_));
    last_warning_ = now;
    unlogged_pauses_ = 0;
  } else {
    ++unlogged_pauses_;
  }
  loop_.remove(socket_.get());
  resume_timer_ = loop_.add_timer(options_.pause, [this] { resume(); });
}

void UnixListener::resume() {
  resume_timer_ = 0;
  try {
    loop_.add(socket_.get(), EPOLLIN, [this](uint32_t) { accept_ready(); });
  } catch (const std::system_error& e) {
    spdlog::warn("{} {}: cannot resume the listener: {}; retrying in {} ms", options_.name, path_, e.what(),
                 options_.pause.count());
    resume_timer_ = loop_.add_timer(options_.pause, [this] { resume(); });
  }
}

}  // namespace vhost_vsock::base
