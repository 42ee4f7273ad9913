#include "base/unix_listener.h"

#include <fmt/format.h>
#include <spdlog/spdlog.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>

#include <cerrno>
#include <stdexcept>
#include <system_error>
#include <utility>

#include "base/errno_text.h"
#include "base/unix_socket_address.h"

namespace vhost_vsock::base {

UnixListener::UnixListener(EventLoop& loop, std::string path, AcceptCallback on_accept, Options options)
    : path_(std::move(path)), options_(std::move(options)) {
  if (path_.empty() || path_.size() > kMaxUnixPathLength) {
    fail(fmt::format("the path is {} bytes long; AF_UNIX allows 1..{} bytes", path_.size(), kMaxUnixPathLength));
  }
  remove_stale_file();
  UniqueFd socket = bind_and_listen();
  try {
    acceptor_.emplace(loop, std::move(socket), std::move(on_accept),
                      SocketAcceptor::Options{.name = fmt::format("{} {}", options_.name, path_),
                                              .accepts_per_event = options_.accepts_per_event,
                                              .pause = options_.pause,
                                              .warning_interval = options_.warning_interval});
  } catch (const std::system_error& e) {
    socket_file_.unlink_if_ours();
    fail(fmt::format("cannot watch the socket: {}", e.what()));
  }
  spdlog::info("{} {}: listening", options_.name, path_);
}

UnixListener::~UnixListener() {
  acceptor_.reset();  // closes the socket before its file goes
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

UniqueFd UnixListener::bind_and_listen() {
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
  return socket;
}

}  // namespace vhost_vsock::base
