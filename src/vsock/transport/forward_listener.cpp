#include "vsock/transport/forward_listener.h"

#include <fmt/format.h>
#include <linux/vm_sockets.h>
#include <sys/socket.h>

#include <cerrno>
#include <stdexcept>
#include <system_error>
#include <utility>

#include "base/errno_text.h"
#include "vsock/transport/unix_stream_endpoint.h"

namespace vhost_vsock::vsock {
namespace {

constexpr int kBacklog = 1024;
constexpr int kAcceptsPerEvent = 256;  // bounds one readiness event

}  // namespace

ForwardAddress vsock_listen_address(uint32_t port) {
  return vsock_address(VMADDR_CID_ANY, port);
}

ForwardListener::ForwardListener(base::EventLoop& loop, uint32_t port, const ForwardAddress& address,
                                 OnAccepted on_accepted)
    : loop_(loop), port_(port), on_accepted_(std::move(on_accepted)) {
  auto fail = [port](const char* what, int error) {
    throw std::runtime_error(fmt::format("forward-listen port {}: {}: {}", port, what, base::errno_text(error)));
  };
  base::UniqueFd socket(::socket(address.family(), SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
  if (!socket) fail("socket", errno);
  if (::bind(socket.get(), reinterpret_cast<const sockaddr*>(&address.storage), address.length) != 0) {
    fail("bind", errno);
  }
  if (::listen(socket.get(), kBacklog) != 0) fail("listen", errno);
  try {
    acceptor_.emplace(
        loop_, std::move(socket), [this](base::UniqueFd connection) { on_connection(std::move(connection)); },
        base::SocketAcceptor::Options{.name = fmt::format("forward-listen port {}", port),
                                      .accepts_per_event = kAcceptsPerEvent});
  } catch (const std::system_error& error) {
    throw std::runtime_error(fmt::format("forward-listen port {}: cannot watch the socket: {}", port, error.what()));
  }
}

void ForwardListener::on_connection(base::UniqueFd connection) {
  size_host_send_buffer(connection.get());
  on_accepted_(std::make_unique<UnixStreamEndpoint>(loop_, std::move(connection)), port_);
}

}  // namespace vhost_vsock::vsock
