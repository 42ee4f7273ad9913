// Guest-initiated connections to the host: a guest REQUEST for port P
// connects to the host program listening on <uds-path>_<P> (the Firecracker /
// Cloud Hypervisor hybrid vsock convention). The REQUEST's type picks the
// AF_UNIX socket type (SOCK_STREAM or SOCK_SEQPACKET); a listener of the other
// type refuses with EPROTOTYPE.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "base/event_loop.h"
#include "vsock/connection/host_endpoint.h"
#include "vsock/packet/header.h"

namespace vhost_vsock::vsock {

class UnixStreamDialer {
 public:
  struct Result {
    std::unique_ptr<HostEndpoint> endpoint;  // connected; null on failure
    int error = 0;                           // errno on failure
    std::string failure;                     // "<path>: <cause>" on failure, for the log
  };

  // An empty `uds_path` refuses every port (no host side configured).
  UnixStreamDialer(base::EventLoop& loop, std::string uds_path);

  // Never blocks: an AF_UNIX connect completes or fails at once (EAGAIN: the
  // listener's backlog is full).
  [[nodiscard]] Result dial(uint32_t port, SocketType type = SocketType::kStream) const;

 private:
  base::EventLoop& loop_;
  std::string uds_path_;
};

}  // namespace vhost_vsock::vsock
