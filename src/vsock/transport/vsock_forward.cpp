#include "vsock/transport/vsock_forward.h"

#include <fmt/format.h>
#include <linux/vm_sockets.h>
#include <sys/epoll.h>

#include <cerrno>
#include <cstring>

#include "base/errno_text.h"

namespace vhost_vsock::vsock {

ForwardAddress vsock_address(uint32_t cid, uint32_t port) {
  ForwardAddress out;
  sockaddr_vm vm{};
  vm.svm_family = AF_VSOCK;
  vm.svm_cid = cid;
  vm.svm_port = port;
  std::memcpy(&out.storage, &vm, sizeof(vm));
  out.length = sizeof(vm);
  return out;
}

ForwardAddressFor forward_to_cid(uint32_t cid) {
  return [cid](uint32_t port) -> std::optional<ForwardAddress> { return vsock_address(cid, port); };
}

ConnectingStreamEndpoint::ConnectingStreamEndpoint(base::EventLoop& loop, base::UniqueFd fd, bool connecting)
    : UnixStreamEndpoint(loop, std::move(fd)), connecting_(connecting) {}

HostEvents ConnectingStreamEndpoint::finish_connect(uint32_t epoll_events) {
  int error = 0;
  socklen_t length = sizeof(error);
  if (::getsockopt(fd(), SOL_SOCKET, SO_ERROR, &error, &length) != 0) error = errno;
  if (error == 0 && (epoll_events & (EPOLLOUT | EPOLLERR | EPOLLHUP)) == EPOLLOUT) {
    connecting_ = false;
    HostEvents events = host_events_from_epoll(epoll_events);
    events.connected = true;
    // The peer may have written already; the watch below dropped that edge.
    events.readable = true;
    return events;
  }
  if (error == 0) error = ECONNRESET;  // hung up without saying why
  connecting_ = false;
  connect_error_ = error;
  HostEvents failed;
  failed.hangup = true;
  return failed;
}

void ConnectingStreamEndpoint::watch(EventCallback callback) {
  UnixStreamEndpoint::watch([this, callback = std::move(callback)](HostEvents events) {
    if (!connecting_) {
      callback(events);
      return;
    }
    // Still connecting: only writability or a failure ends the connect.
    uint32_t epoll_events = 0;
    if (events.writable) epoll_events |= EPOLLOUT;
    if (events.hangup) epoll_events |= EPOLLERR;
    if (epoll_events == 0) return;
    callback(finish_connect(epoll_events));
  });
}

VsockForwardDialer::VsockForwardDialer(base::EventLoop& loop, ForwardAddressFor address_for)
    : loop_(loop), address_for_(std::move(address_for)) {}

VsockForwardDialer::Result VsockForwardDialer::dial(uint32_t port) const {
  const std::optional<ForwardAddress> address = address_for_ ? address_for_(port) : std::nullopt;
  if (!address) return {nullptr, ECONNREFUSED, fmt::format("port {}: not forwarded", port)};
  base::UniqueFd fd(::socket(address->family(), SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
  if (!fd) return {nullptr, errno, fmt::format("port {}: socket: {}", port, base::errno_text(errno))};
  const bool connected =
      ::connect(fd.get(), reinterpret_cast<const sockaddr*>(&address->storage), address->length) == 0;
  const int error = connected ? 0 : errno;
  if (!connected && error != EINPROGRESS) {
    return {nullptr, error, fmt::format("port {}: connect: {}", port, base::errno_text(error))};
  }
  Result result;
  result.endpoint = std::make_unique<ConnectingStreamEndpoint>(loop_, std::move(fd), !connected);
  return result;
}

}  // namespace vhost_vsock::vsock
