// A host endpoint over a connected AF_UNIX SOCK_STREAM socket: guest connects
// to <uds-path>_<port>, and host peers accepted on uds-path.
#pragma once

#include <cstdint>

#include "base/event_loop.h"
#include "base/unique_fd.h"
#include "vsock/connection/host_endpoint.h"

namespace vhost_vsock::vsock {

// Maps epoll readiness onto HostEvents; shared by the fd-based endpoints.
HostEvents host_events_from_epoll(uint32_t epoll_events);

// SO_SNDBUF for the host sockets the daemon makes (dialed or accepted,
// stream and seqpacket): a guest's whole default window (256 KiB, which Linux
// doubles for its bookkeeping; net.core.wmem_max caps it). With the kernel's
// default of 208 KiB, a guest's full window often did not fit: what a stream
// socket refused went through the connection's TX buffer (a second copy), and
// a seqpacket connection waited for the host to read.
inline constexpr int kHostSendBuffer = 256 * 1024;
// Best effort: a socket keeps its default if the kernel refuses.
void size_host_send_buffer(int fd);

class UnixStreamEndpoint : public HostEndpoint {
 public:
  // `fd` must be connected and non-blocking.
  UnixStreamEndpoint(base::EventLoop& loop, base::UniqueFd fd);
  ~UnixStreamEndpoint() override;
  UnixStreamEndpoint(const UnixStreamEndpoint&) = delete;
  UnixStreamEndpoint& operator=(const UnixStreamEndpoint&) = delete;

  void watch(EventCallback callback) override;
  SendResult send(std::span<const iovec> iovs) override;
  ReceiveResult receive(std::span<const iovec> into) override;
  void shutdown_send() override;
  [[nodiscard]] size_t unread_by_peer() const override;
  void close() override;
  [[nodiscard]] bool is_open() const override { return fd_.valid(); }
  [[nodiscard]] SocketType socket_type() const override { return SocketType::kStream; }
  [[nodiscard]] int fd() const { return fd_.get(); }

 private:
  // close()'s work, non-virtual so that the destructor can call it too.
  void release();

  base::EventLoop& loop_;
  base::UniqueFd fd_;
};

}  // namespace vhost_vsock::vsock
