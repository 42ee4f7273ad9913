#include "vsock/transport/unix_stream_endpoint.h"

#include <linux/sock_diag.h>
#include <sys/epoll.h>
#include <sys/socket.h>

#include <algorithm>
#include <cerrno>
#include <climits>

namespace vhost_vsock::vsock {
namespace {

constexpr size_t kMaxIovecsPerCall = IOV_MAX;

bool would_block(int error) {
  return error == EAGAIN || error == EWOULDBLOCK;
}

}  // namespace

HostEvents host_events_from_epoll(uint32_t epoll_events) {
  constexpr uint32_t kFailed = EPOLLHUP | EPOLLERR;
  HostEvents events;
  events.readable = (epoll_events & (EPOLLIN | EPOLLRDHUP | kFailed)) != 0;
  events.writable = (epoll_events & (EPOLLOUT | kFailed)) != 0;
  events.hangup = (epoll_events & kFailed) != 0;
  return events;
}

void size_host_send_buffer(int fd) {
  const int bytes = kHostSendBuffer;
  ::setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &bytes, sizeof(bytes));
}

UnixStreamEndpoint::UnixStreamEndpoint(base::EventLoop& loop, base::UniqueFd fd) : loop_(loop), fd_(std::move(fd)) {}

UnixStreamEndpoint::~UnixStreamEndpoint() {
  release();
}

void UnixStreamEndpoint::watch(EventCallback callback) {
  if (!fd_) return;
  // The hybrid listener hands its accepted sockets over still watched.
  loop_.take_over(
      fd_.get(), EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET,
      [callback = std::move(callback)](uint32_t epoll_events) { callback(host_events_from_epoll(epoll_events)); });
}

void UnixStreamEndpoint::close() {
  release();
}

void UnixStreamEndpoint::release() {
  if (!fd_) return;
  // Ours is the only reference to the socket: closing it leaves epoll too.
  loop_.forget(fd_.get());
  fd_.reset();
}

HostEndpoint::SendResult UnixStreamEndpoint::send(std::span<const iovec> iovs) {
  size_t sent = 0;
  while (!iovs.empty() && fd_) {
    const size_t count = std::min(iovs.size(), kMaxIovecsPerCall);
    msghdr msg{};
    msg.msg_iov = const_cast<iovec*>(iovs.data());
    msg.msg_iovlen = count;
    const ssize_t n = ::sendmsg(fd_.get(), &msg, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n < 0) {
      if (errno == EINTR) continue;
      return {would_block(errno) ? SendStatus::kWouldBlock : SendStatus::kGone, sent};
    }
    sent += static_cast<size_t>(n);
    size_t left = static_cast<size_t>(n);
    size_t i = 0;
    while (i < count && left >= iovs[i].iov_len) left -= iovs[i++].iov_len;
    // Partial write: the caller buffers the rest and flushes, which finds out
    // for certain whether the socket is full (and waits for `writable` if so).
    if (i < count) return {SendStatus::kOk, sent};
    iovs = iovs.subspan(count);
  }
  return {fd_ ? SendStatus::kOk : SendStatus::kGone, sent};
}

HostEndpoint::ReceiveResult UnixStreamEndpoint::receive(std::span<const iovec> into) {
  if (!fd_) return {ReceiveStatus::kError, 0};
  const int count = static_cast<int>(std::min(into.size(), kMaxIovecsPerCall));
  for (;;) {
    const ssize_t n = ::readv(fd_.get(), into.data(), count);
    if (n > 0) return {ReceiveStatus::kData, static_cast<size_t>(n)};
    if (n == 0) return {ReceiveStatus::kEof, 0};
    if (errno == EINTR) continue;
    return {would_block(errno) ? ReceiveStatus::kWouldBlock : ReceiveStatus::kError, 0};
  }
}

void UnixStreamEndpoint::shutdown_send() {
  if (fd_) ::shutdown(fd_.get(), SHUT_WR);
}

size_t UnixStreamEndpoint::unread_by_peer() const {
  if (!fd_) return 0;
  // getsockopt rather than ioctl(SIOCOUTQ): the sandbox allows the former.
  uint32_t meminfo[SK_MEMINFO_VARS] = {};
  socklen_t length = sizeof(meminfo);
  if (::getsockopt(fd_.get(), SOL_SOCKET, SO_MEMINFO, meminfo, &length) == 0 &&
      length > SK_MEMINFO_WMEM_ALLOC * sizeof(uint32_t)) {
    return meminfo[SK_MEMINFO_WMEM_ALLOC];  // sent bytes the peer has not read (AF_UNIX)
  }
  return 0;
}

}  // namespace vhost_vsock::vsock
