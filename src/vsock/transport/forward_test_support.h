// Stand-in address families for the forwarding tests: AF_VSOCK is never
// opened on the test host, so AF_UNIX plays a connect that finishes or fails
// at once and AF_INET loopback one that stays in progress. Test-only.
#pragma once

#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/un.h>

#include <cstdint>
#include <cstring>
#include <string>

#include "base/unique_fd.h"
#include "base/unix_socket_address.h"
#include "vsock/transport/vsock_forward.h"

namespace vhost_vsock::vsock::forward_test {

inline ForwardAddress unix_address(const std::string& path) {
  ForwardAddress out;
  const sockaddr_un un = base::unix_socket_address(path);
  std::memcpy(&out.storage, &un, sizeof(un));
  out.length = sizeof(un);
  return out;
}

inline ForwardAddress loopback_address(uint16_t port) {
  ForwardAddress out;
  sockaddr_in in{};
  in.sin_family = AF_INET;
  in.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  in.sin_port = htons(port);
  std::memcpy(&out.storage, &in, sizeof(in));
  out.length = sizeof(in);
  return out;
}

// A listening loopback TCP socket and its port. `backlog` 0 holds one
// unaccepted connection, after which the kernel drops SYNs and a connect
// stays in progress. `flags`: e.g. SOCK_NONBLOCK.
inline base::UniqueFd tcp_listener(uint16_t* port, int backlog = 16, int flags = 0) {
  base::UniqueFd fd(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | flags, 0));
  sockaddr_in in{};
  in.sin_family = AF_INET;
  in.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t length = sizeof(in);
  EXPECT_EQ(::bind(fd.get(), reinterpret_cast<sockaddr*>(&in), sizeof(in)), 0);
  EXPECT_EQ(::listen(fd.get(), backlog), 0);
  EXPECT_EQ(::getsockname(fd.get(), reinterpret_cast<sockaddr*>(&in), &length), 0);
  *port = ntohs(in.sin_port);
  return fd;
}

}  // namespace vhost_vsock::vsock::forward_test
