#include "vhost_user/server.h"

#include <fmt/format.h>
#include <spdlog/spdlog.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>

#include <cerrno>
#include <cstring>
#include <stdexcept>
#include <string>
#include <system_error>

#include "base/socket_file.h"
#include "vhost_user/connection.h"

namespace vhost_vsock::vhost_user {
namespace {

// strerror() is not thread-safe, and workers run on several threads.
std::string errno_text(int error) {
  return std::generic_category().message(error);
}

// After accept() fails for lack of fds the connection stays queued and epoll
// keeps reporting it; pause the listener instead of spinning.
constexpr std::chrono::milliseconds kAcceptBackoff{100};
constexpr int kMaxAcceptsPerEvent = 16;

sockaddr_un make_address(const std::string& path) {
  sockaddr_un address{};
  address.sun_family = AF_UNIX;
  if (path.empty() || path.size() >= sizeof(address.sun_path)) {
    throw std::runtime_error(
        fmt::format("vhost-user socket path '{}' must be 1..{} bytes long", path, sizeof(address.sun_path) - 1));
  }
  std::memcpy(address.sun_path, path.data(), path.size());
  return address;
}

[[noreturn]] void throw_for_path(const std::string& what, const std::string& path, int error) {
  throw std::runtime_error(fmt::format("vhost-user socket '{}': {}: {}", path, what, errno_text(error)));
}

// Removes a socket file left behind by a dead process; refuses to touch
// anything else, or a socket somebody still listens on.
void remove_stale_socket(const std::string& path, const sockaddr_un& address) {
  struct stat info {};
  if (::lstat(path.c_str(), &info) != 0) {
    if (errno == ENOENT) return;
    throw_for_path("cannot inspect the path", path, errno);
  }
  if (!S_ISSOCK(info.st_mode)) {
    throw std::runtime_error(fmt::format("vhost-user socket '{}': the path exists and is not a socket", path));
  }
  base::UniqueFd probe(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
  if (!probe) throw_for_path("cannot create a probe socket", path, errno);
  if (::connect(probe.get(), reinterpret_cast<const sockaddr*>(&address), sizeof(address)) == 0 || errno == EAGAIN) {
    // EAGAIN: a listener with a full backlog, still a live listener.
    throw std::runtime_error(fmt::format("vhost-user socket '{}': another process is listening on it", path));
  }
  if (errno != ECONNREFUSED) throw_for_path("cannot probe the existing socket", path, errno);
  spdlog::info("vhost-user {}: replacing a stale socket file", path);
  if (::unlink(path.c_str()) != 0 && errno != ENOENT) throw_for_path("cannot remove the stale socket", path, errno);
}

}  // namespace

class Server::Impl {
 public:
  Impl(base::EventLoop& loop, std::string socket_path, Device& device)
      : loop_(loop), path_(std::move(socket_path)), device_(device) {
    sockaddr_un address = make_address(path_);
    remove_stale_socket(path_, address);
    listener_.reset(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
    if (!listener_) throw_for_path("cannot create the socket", path_, errno);
    if (::bind(listener_.get(), reinterpret_cast<const sockaddr*>(&address), sizeof(address)) != 0) {
      throw_for_path("cannot bind", path_, errno);
    }
    socket_file_ = base::BoundSocketFile(path_);
    if (::listen(listener_.get(), 8) != 0) {
      int error = errno;
      unlink_socket_file();
      throw_for_path("cannot listen", path_, error);
    }
    watch_listener();
    spdlog::info("vhost-user {}: listening for a front-end", path_);
  }

  ~Impl() {
    drop_frontend("the server is shutting down");
    if (backoff_timer_ != 0) loop_.cancel_timer(backoff_timer_);
    loop_.remove(listener_.get());
    listener_.reset();
    unlink_socket_file();
  }

  const std::string& path() const { return path_; }
  bool connected() const { return connection_ != nullptr; }
  const ServerStats& stats() const { return stats_; }

 private:
  void watch_listener() {
    loop_.add(listener_.get(), EPOLLIN, [this](uint32_t) { accept_frontends(); });
  }

  void accept_frontends() {
    for (int i = 0; i < kMaxAcceptsPerEvent; ++i) {
      base::UniqueFd socket(::accept4(listener_.get(), nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC));
      if (!socket) {
        if (errno == EINTR || errno == ECONNABORTED) continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK) return;
        spdlog::warn("vhost-user {}: accept failed: {}; pausing for {} ms", path_, errno_text(errno),
                     kAcceptBackoff.count());
        loop_.remove(listener_.get());
        backoff_timer_ = loop_.add_timer(kAcceptBackoff, [this] {
          backoff_timer_ = 0;
          watch_listener();
        });
        return;
      }
      if (connection_) {
        // Closing at once makes a second QEMU fail fast instead of hanging
        // in device realize on a connection nobody would ever serve.
        spdlog::warn("vhost-user {}: refusing a second front-end ({}) while one is connected", path_,
                     describe_peer(socket.get()));
        continue;
      }
      ++stats_.frontends_accepted;
      spdlog::info("vhost-user {}: front-end connected ({})", path_, describe_peer(socket.get()));
      connection_ = std::make_unique<FrontendConnection>(loop_, std::move(socket), device_, stats_, path_);
      loop_.add(connection_->fd(), EPOLLIN, [this](uint32_t events) {
        if (connection_ && !connection_->on_socket_event(events)) drop_frontend("connection closed");
      });
    }
  }

  void drop_frontend(const char* reason) {
    if (!connection_) return;
    loop_.remove(connection_->fd());
    connection_.reset();  // stops the rings and tells the device first
    ++stats_.frontend_disconnects;
    spdlog::info("vhost-user {}: front-end disconnected ({}); waiting for the next one", path_, reason);
  }

  static std::string describe_peer(int fd) {
    ucred credentials{};
    socklen_t length = sizeof(credentials);
    if (::getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &credentials, &length) != 0) return "peer unknown";
    return fmt::format("pid {} uid {}", credentials.pid, credentials.uid);
  }

  // Only removes the file if it is still the socket we bound, not a successor's.
  void unlink_socket_file() { socket_file_.unlink_if_ours(); }

  base::EventLoop& loop_;
  std::string path_;
  Device& device_;
  ServerStats stats_;
  base::UniqueFd listener_;
  base::BoundSocketFile socket_file_;
  base::EventLoop::TimerId backoff_timer_ = 0;
  std::unique_ptr<FrontendConnection> connection_;
};

Server::Server(base::EventLoop& loop, std::string socket_path, Device& device)
    : impl_(std::make_unique<Impl>(loop, std::move(socket_path), device)) {}

Server::~Server() = default;

const std::string& Server::socket_path() const {
  return impl_->path();
}
bool Server::frontend_connected() const {
  return impl_->connected();
}
const ServerStats& Server::stats() const {
  return impl_->stats();
}

}  // namespace vhost_vsock::vhost_user
