// A vhost-user backend server (QEMU docs/interop/vhost-user.rst) for one
// device: listens on a Unix socket, serves one front-end at a time on the
// owner's event loop, and waits for the next front-end when it goes away.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "base/event_loop.h"
#include "vhost_user/device.h"
#include "vhost_user/stats.h"

namespace vhost_vsock::vhost_user {

class Server {
 public:
  // Binds and listens on `socket_path`, replacing a stale socket file (one
  // nobody is listening on). Throws std::runtime_error naming the path when
  // it cannot bind, or when another process is listening there.
  Server(base::EventLoop& loop, std::string socket_path, Device& device);
  ~Server();  // closes the connection and listener and unlinks the socket file
  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;

  [[nodiscard]] const std::string& socket_path() const;
  [[nodiscard]] bool frontend_connected() const;
  [[nodiscard]] const ServerStats& stats() const;

 private:
  class Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace vhost_vsock::vhost_user
