// The sockaddr_un for a filesystem path, with the length check every AF_UNIX
// caller needs.
#pragma once

#include <sys/un.h>

#include <cstddef>
#include <string>

namespace vhost_vsock::base {

// sun_path holds the path and its terminating NUL.
inline constexpr size_t kMaxUnixPathLength = sizeof(sockaddr_un::sun_path) - 1;

// Throws std::runtime_error, naming the path and the limit, when `path` is
// empty or longer than kMaxUnixPathLength bytes. The result is NUL-terminated,
// so sizeof(sockaddr_un) is a valid length for bind() and connect().
sockaddr_un unix_socket_address(const std::string& path);

}  // namespace vhost_vsock::base
