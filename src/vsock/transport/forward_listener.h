// --forward-listen: one listening socket per port on the host (AF_VSOCK bound
// to (VMADDR_CID_ANY, P) in production). Each accepted connection is handed
// over as a host endpoint for a host-initiated connection to the same port P
// of the guest: like a hybrid "CONNECT P", without any text handshake.
//
// Accepting (a bounded batch per wake-up, a pause on fd exhaustion,
// rate-limited warnings) is base::SocketAcceptor's, shared with the uds-path
// and vhost-user listeners. The callback may destroy the listener.
//
// The address is injected, so tests listen on AF_UNIX or AF_INET stand-ins:
// tests must never open AF_VSOCK sockets on the test host itself.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>

#include "base/event_loop.h"
#include "base/socket_acceptor.h"
#include "base/unique_fd.h"
#include "vsock/connection/host_endpoint.h"
#include "vsock/transport/vsock_forward.h"

namespace vhost_vsock::vsock {

// (VMADDR_CID_ANY, port): where production listens.
ForwardAddress vsock_listen_address(uint32_t port);

class ForwardListener {
 public:
  // Called for each accepted host connection, with the guest port it goes to.
  using OnAccepted = std::function<void(std::unique_ptr<HostEndpoint> endpoint, uint32_t guest_port)>;

  // Binds, listens (non-blocking) and starts accepting. Throws
  // std::runtime_error "forward-listen port P: <cause>" if it cannot.
  ForwardListener(base::EventLoop& loop, uint32_t port, const ForwardAddress& address, OnAccepted on_accepted);
  ~ForwardListener() = default;
  ForwardListener(const ForwardListener&) = delete;
  ForwardListener& operator=(const ForwardListener&) = delete;

  [[nodiscard]] uint32_t port() const { return port_; }
  [[nodiscard]] const base::SocketAcceptor::Stats& stats() const { return acceptor_->stats(); }

 private:
  void on_connection(base::UniqueFd connection);

  base::EventLoop& loop_;
  uint32_t port_;
  OnAccepted on_accepted_;
  std::optional<base::SocketAcceptor> acceptor_;  // last: set once the socket listens
};

}  // namespace vhost_vsock::vsock
