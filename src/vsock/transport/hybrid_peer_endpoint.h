// A host peer that came in through the hybrid listener on uds-path (the
// Firecracker / Cloud Hypervisor "CONNECT <port>\n" protocol). Once the guest
// accepts, the peer is told which host port it got with "OK <port>\n".
#pragma once

#include "vsock/transport/unix_stream_endpoint.h"

namespace vhost_vsock::vsock {

// "OK <local_port>\n" into `out`; returns its length.
size_t hybrid_ok_greeting(uint32_t local_port, std::span<uint8_t, kMaxGreetingBytes> out);

class HybridPeerEndpoint final : public UnixStreamEndpoint {
 public:
  using UnixStreamEndpoint::UnixStreamEndpoint;

  size_t accept_greeting(uint32_t local_port, std::span<uint8_t, kMaxGreetingBytes> out) const override;
};

}  // namespace vhost_vsock::vsock
