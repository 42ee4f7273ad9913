#include "base/unix_socket_address.h"

#include <fmt/format.h>
#include <sys/socket.h>

#include <cstring>
#include <stdexcept>

namespace vhost_vsock::base {

sockaddr_un unix_socket_address(const std::string& path) {
  if (path.empty() || path.size() > kMaxUnixPathLength) {
    throw std::runtime_error(fmt::format("AF_UNIX path '{}' is {} bytes long; it must be 1..{} bytes", path,
                                         path.size(), kMaxUnixPathLength));
  }
  sockaddr_un address{};
  address.sun_family = AF_UNIX;
  std::memcpy(address.sun_path, path.data(), path.size());
  return address;
}

}  // namespace vhost_vsock::base
