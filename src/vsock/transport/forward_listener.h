// --forward-listen: one listening socket per port on the host (AF_VSOCK bound
// to (VMADDR_CID_ANY, P) in production). Each accepted connection is handed
// over as a host endpoint for a host-initiated connection to the same port P
// of the guest: like a hybrid "CONNECT P", without any text handshake.
//
// The address comes from ForwardAddressFor, so tests listen on AF_UNIX
// stand-ins: tests must never open AF_VSOCK sockets on the test host itself.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>

#include "base/event_loop.h"
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
  ~ForwardListener();
  ForwardListener(const ForwardListener&) = delete;
  ForwardListener& operator=(const ForwardListener&) = delete;

  [[nodiscard]] uint32_t port() const { return port_; }

 private:
  void watch();  // throws std::system_error if the loop refuses
  void accept_batch();
  void pause();  // accept() ran out of fds or memory: the pending connection stays queued
  void resume();

  base::EventLoop& loop_;
  uint32_t port_;
  OnAccepted on_accepted_;
  base::UniqueFd socket_;
  base::EventLoop::TimerId resume_timer_ = 0;
};

}  // namespace vhost_vsock::vsock
