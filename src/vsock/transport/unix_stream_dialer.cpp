#include "vsock/transport/unix_stream_dialer.h"

#include <sys/socket.h>
#include <sys/un.h>

#include <cerrno>
#include <cstring>

#include "base/unique_fd.h"
#include "vsock/transport/unix_stream_endpoint.h"

namespace vhost_vsock::vsock {
namespace {

// Stand-ins with the contracts of base/unix_socket_address.h and
// base/errno_text.h, which are on their way to src/base/.
constexpr size_t kMaxUnixPathLength = sizeof(sockaddr_un::sun_path) - 1;

sockaddr_un unix_socket_address(const std::string& path) {
  sockaddr_un address{};
  address.sun_family = AF_UNIX;
  std::memcpy(address.sun_path, path.c_str(), path.size() + 1);
  return address;
}

std::string errno_text(int error) {
  return std::strerror(error);
}

UnixStreamDialer::Result refused(const std::string& path, int error) {
  return {nullptr, error, path + ": " + errno_text(error)};
}

}  // namespace

UnixStreamDialer::UnixStreamDialer(base::EventLoop& loop, std::string uds_path)
    : loop_(loop), uds_path_(std::move(uds_path)) {}

UnixStreamDialer::Result UnixStreamDialer::dial(uint32_t port) const {
  const std::string path = uds_path_ + "_" + std::to_string(port);
  if (uds_path_.empty() || path.size() > kMaxUnixPathLength) return refused(path, ENAMETOOLONG);
  const sockaddr_un address = unix_socket_address(path);
  base::UniqueFd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
  if (!fd) return refused(path, errno);
  if (::connect(fd.get(), reinterpret_cast<const sockaddr*>(&address), sizeof(address)) != 0) {
    return refused(path, errno);
  }
  return {std::make_unique<UnixStreamEndpoint>(loop_, std::move(fd)), 0, {}};
}

}  // namespace vhost_vsock::vsock
