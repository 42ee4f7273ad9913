// A host endpoint over a connected AF_UNIX SOCK_SEQPACKET socket: one
// send() is one message, one receive() takes one whole message, sized first
// with peek_message_size(). Watching, half-close, close and the unread count
// are the stream endpoint's (the same calls work on both socket types).
#pragma once

#include "vsock/transport/unix_stream_endpoint.h"

namespace vhost_vsock::vsock {

class UnixSeqpacketEndpoint : public UnixStreamEndpoint {
 public:
  using UnixStreamEndpoint::UnixStreamEndpoint;

  SendResult send(std::span<const iovec> iovs) override;
  ReceiveResult receive(std::span<const iovec> into) override;
  ReceiveResult peek_message_size() override;
  [[nodiscard]] SocketType socket_type() const override { return SocketType::kSeqpacket; }
  // Linux's AF_UNIX datagram limit: the send buffer less 32 bytes.
  [[nodiscard]] uint32_t max_message_bytes() const override;

 private:
  // recv() returned 0: a zero-length message, or the peer closed (no more messages).
  [[nodiscard]] bool peer_closed() const;
};

// A host peer that came in on <uds-path>_seqpacket: told "OK <port>\n", as
// one message, once the guest accepts.
class HybridSeqpacketPeerEndpoint final : public UnixSeqpacketEndpoint {
 public:
  using UnixSeqpacketEndpoint::UnixSeqpacketEndpoint;

  size_t accept_greeting(uint32_t local_port, std::span<uint8_t, kMaxGreetingBytes> out) const override;
};

}  // namespace vhost_vsock::vsock
