#include "vsock/transport/unix_stream_dialer.h"

#include <sys/socket.h>

#include <cerrno>

#include "base/errno_text.h"
#include "base/unique_fd.h"
#include "base/unix_socket_address.h"
#include "vsock/transport/unix_seqpacket_endpoint.h"
#include "vsock/transport/unix_stream_endpoint.h"

namespace vhost_vsock::vsock {
namespace {

UnixStreamDialer::Result refused(const std::string& path, int error) {
  return {nullptr, error, path + ": " + base::errno_text(error)};
}

}  // namespace

UnixStreamDialer::UnixStreamDialer(base::EventLoop& loop, std::string uds_path)
    : loop_(loop), uds_path_(std::move(uds_path)) {}

UnixStreamDialer::Result UnixStreamDialer::dial(uint32_t port, SocketType type) const {
  const std::string path = uds_path_ + "_" + std::to_string(port);
  if (uds_path_.empty() || path.size() > base::kMaxUnixPathLength) return refused(path, ENAMETOOLONG);
  const sockaddr_un address = base::unix_socket_address(path);  // cannot throw: checked above
  const bool seqpacket = type == SocketType::kSeqpacket;
  base::UniqueFd fd(::socket(AF_UNIX, (seqpacket ? SOCK_SEQPACKET : SOCK_STREAM) | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
  if (!fd) return refused(path, errno);
  if (::connect(fd.get(), reinterpret_cast<const sockaddr*>(&address), sizeof(address)) != 0) {
    return refused(path, errno);
  }
  size_host_send_buffer(fd.get());
  if (seqpacket) return {std::make_unique<UnixSeqpacketEndpoint>(loop_, std::move(fd)), 0, {}};
  return {std::make_unique<UnixStreamEndpoint>(loop_, std::move(fd)), 0, {}};
}

}  // namespace vhost_vsock::vsock
