#include "vsock/transport/unix_seqpacket_endpoint.h"

#include <poll.h>
#include <spdlog/spdlog.h>
#include <sys/socket.h>

#include <cerrno>
#include <climits>

#include "base/errno_text.h"
#include "vsock/transport/hybrid_peer_endpoint.h"

namespace vhost_vsock::vsock {
namespace {

bool would_block(int error) {
  return error == EAGAIN || error == EWOULDBLOCK;
}

size_t total_bytes(std::span<const iovec> iovs) {
  size_t total = 0;
  for (const iovec& iov : iovs) total += iov.iov_len;
  return total;
}

}  // namespace

HostEndpoint::SendResult UnixSeqpacketEndpoint::send(std::span<const iovec> iovs) {
  if (!is_open()) return {SendStatus::kGone, 0};
  if (iovs.size() > IOV_MAX) return {SendStatus::kRefused, 0};  // callers gather first
  msghdr msg{};
  msg.msg_iov = const_cast<iovec*>(iovs.data());
  msg.msg_iovlen = iovs.size();
  for (;;) {
    // MSG_EOR: every AF_UNIX SOCK_SEQPACKET message is a record; Linux accepts the flag.
    const ssize_t n = ::sendmsg(fd(), &msg, MSG_NOSIGNAL | MSG_DONTWAIT | MSG_EOR);
    if (n >= 0) return {SendStatus::kOk, static_cast<size_t>(n)};
    if (errno == EINTR) continue;
    if (would_block(errno)) return {SendStatus::kWouldBlock, 0};
    if (errno == EMSGSIZE) {
      spdlog::warn(
          "host socket refused a {}-byte message ({}): raise its SO_SNDBUF (net.core.wmem_max) or lower "
          "--tx-buffer-size; resetting the connection",
          total_bytes(iovs), base::errno_text(EMSGSIZE));
      return {SendStatus::kRefused, 0};
    }
    return {SendStatus::kGone, 0};
  }
}

uint32_t UnixSeqpacketEndpoint::max_message_bytes() const {
  int sndbuf = 0;
  socklen_t length = sizeof(sndbuf);
  if (!is_open() || ::getsockopt(fd(), SOL_SOCKET, SO_SNDBUF, &sndbuf, &length) != 0 || sndbuf <= 32) {
    return UINT32_MAX;  // unknown: send() reports a refusal as before
  }
  return static_cast<uint32_t>(sndbuf - 32);
}

HostEndpoint::ReceiveResult UnixSeqpacketEndpoint::receive(std::span<const iovec> into) {
  if (!is_open() || into.size() > IOV_MAX) return {ReceiveStatus::kError, 0};
  msghdr msg{};
  msg.msg_iov = const_cast<iovec*>(into.data());
  msg.msg_iovlen = into.size();
  for (;;) {
    const ssize_t n = ::recvmsg(fd(), &msg, MSG_DONTWAIT);
    if (n > 0) {
      // The caller sized `into` from peek_message_size(): a cut message is a bug, never delivered.
      if ((msg.msg_flags & MSG_TRUNC) != 0) return {ReceiveStatus::kError, 0};
      return {ReceiveStatus::kData, static_cast<size_t>(n)};
    }
    if (n == 0) return peer_closed() ? ReceiveResult{ReceiveStatus::kEof, 0} : ReceiveResult{ReceiveStatus::kData, 0};
    if (errno == EINTR) continue;
    return {would_block(errno) ? ReceiveStatus::kWouldBlock : ReceiveStatus::kError, 0};
  }
}

HostEndpoint::ReceiveResult UnixSeqpacketEndpoint::peek_message_size() {
  if (!is_open()) return {ReceiveStatus::kError, 0};
  for (;;) {
    // MSG_TRUNC: the whole message's length, not the 0 bytes copied.
    const ssize_t n = ::recv(fd(), nullptr, 0, MSG_PEEK | MSG_TRUNC | MSG_DONTWAIT);
    if (n > 0) return {ReceiveStatus::kData, static_cast<size_t>(n)};
    if (n == 0) return peer_closed() ? ReceiveResult{ReceiveStatus::kEof, 0} : ReceiveResult{ReceiveStatus::kData, 0};
    if (errno == EINTR) continue;
    return {would_block(errno) ? ReceiveStatus::kWouldBlock : ReceiveStatus::kError, 0};
  }
}

// recv() gives 0 both for a zero-length message and at end of stream; only
// the latter comes with RDHUP. (A zero-length message sent just before the
// peer closed is indistinguishable from EOF and is taken as EOF.)
bool UnixSeqpacketEndpoint::peer_closed() const {
  pollfd p{fd(), POLLRDHUP, 0};
  return ::poll(&p, 1, 0) > 0 && (p.revents & (POLLRDHUP | POLLHUP | POLLERR)) != 0;
}

size_t HybridSeqpacketPeerEndpoint::accept_greeting(uint32_t local_port,
                                                    std::span<uint8_t, kMaxGreetingBytes> out) const {
  return hybrid_ok_greeting(local_port, out);
}

}  // namespace vhost_vsock::vsock
