// What the transport tests check of a host socket's send buffer
// (size_host_send_buffer). Test-only.
#pragma once

#include <gtest/gtest.h>
#include <sys/socket.h>

#include <algorithm>
#include <fstream>

#include "vsock/connection/host_endpoint.h"
#include "vsock/transport/unix_stream_endpoint.h"

namespace vhost_vsock::vsock::send_buffer_test {

// The socket's SO_SNDBUF as the kernel reports it, or -1.
inline int send_buffer_of(const HostEndpoint& endpoint) {
  const auto* stream = dynamic_cast<const UnixStreamEndpoint*>(&endpoint);
  int bytes = -1;
  socklen_t length = sizeof(bytes);
  if (stream == nullptr || ::getsockopt(stream->fd(), SOL_SOCKET, SO_SNDBUF, &bytes, &length) != 0) return -1;
  return bytes;
}

// What Linux reports after SO_SNDBUF = kHostSendBuffer: the value capped at
// net.core.wmem_max, doubled for its bookkeeping.
inline int expected_host_send_buffer() {
  int wmem_max = 0;
  std::ifstream("/proc/sys/net/core/wmem_max") >> wmem_max;
  EXPECT_GT(wmem_max, 0) << "cannot read /proc/sys/net/core/wmem_max";
  return 2 * std::min(kHostSendBuffer, wmem_max);
}

}  // namespace vhost_vsock::vsock::send_buffer_test
