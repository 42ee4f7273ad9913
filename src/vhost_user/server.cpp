#include "vhost_user/server.h"

#include <fmt/format.h>
#include <spdlog/spdlog.h>
#include <sys/socket.h>

#include <string>

#include "base/unix_listener.h"
#include "vhost_user/connection.h"

namespace vhost_vsock::vhost_user {

class Server::Impl {
 public:
  Impl(base::EventLoop& loop, std::string socket_path, Device& device)
      : loop_(loop),
        device_(device),
        listener_(
            loop, std::move(socket_path), [this](base::UniqueFd socket) { on_frontend(std::move(socket)); },
            base::UnixListener::Options{.name = "vhost-user socket"}) {}

  ~Impl() { drop_frontend("the server is shutting down"); }

  const std::string& path() const { return listener_.path(); }
  bool connected() const { return connection_ != nullptr; }
  const ServerStats& stats() const { return stats_; }

 private:
  void on_frontend(base::UniqueFd socket) {
    if (connection_) {
      // Closing at once makes a second QEMU fail fast instead of hanging
      // in device realize on a connection nobody would ever serve.
      spdlog::warn("vhost-user {}: refusing a second front-end ({}) while one is connected", path(),
                   describe_peer(socket.get()));
      return;
    }
    ++stats_.frontends_accepted;
    spdlog::info("vhost-user {}: front-end connected ({})", path(), describe_peer(socket.get()));
    connection_ = std::make_unique<FrontendConnection>(loop_, std::move(socket), device_, stats_, path());
    loop_.add(connection_->fd(), EPOLLIN, [this](uint32_t events) {
      if (connection_ && !connection_->on_socket_event(events)) drop_frontend("connection closed");
    });
  }

  void drop_frontend(const char* reason) {
    if (!connection_) return;
    loop_.remove(connection_->fd());
    connection_.reset();  // stops the rings and tells the device first
    ++stats_.frontend_disconnects;
    spdlog::info("vhost-user {}: front-end disconnected ({}); waiting for the next one", path(), reason);
  }

  static std::string describe_peer(int fd) {
    ucred credentials{};
    socklen_t length = sizeof(credentials);
    if (::getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &credentials, &length) != 0) return "peer unknown";
    return fmt::format("pid {} uid {}", credentials.pid, credentials.uid);
  }

  base::EventLoop& loop_;
  Device& device_;
  ServerStats stats_;
  base::UnixListener listener_;
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
