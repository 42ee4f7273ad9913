// What a Connection needs from the host side of its stream, whatever carries
// it (an AF_UNIX stream or an AF_UNIX SOCK_SEQPACKET socket today; an AF_VSOCK
// forward later). Implementations live in vsock/transport/; the state machine in
// Connection sees only this interface. Everything is non-blocking: a call
// never waits for the host peer, which is as untrusted as the guest.
#pragma once

#include <sys/uio.h>

#include <cstddef>
#include <cstdint>
#include <functional>
#include <span>

#include "vsock/packet/header.h"

namespace vhost_vsock::vsock {

// Readiness reported by HostEndpoint::watch. Edge-triggered: after `readable`
// or `writable`, keep receiving / sending until kWouldBlock.
struct HostEvents {
  bool readable = false;  // data, EOF or an error may be waiting
  bool writable = false;  // send() may make progress (also set when the peer failed, so a flush learns why)
  bool hangup = false;    // the peer is gone in both directions, or the socket failed
  // A connecting endpoint (connecting() was true) finished connecting. A
  // failed connect is reported as `hangup` instead.
  bool connected = false;
};

// Room a greeting may take; Connection reserves it in its TX buffer.
inline constexpr size_t kMaxGreetingBytes = 32;

class HostEndpoint {
 public:
  using EventCallback = std::function<void(HostEvents)>;

  enum class SendStatus : uint8_t {
    kOk,          // `bytes` were taken; fewer than offered means the socket is (nearly) full
    kWouldBlock,  // the socket is full after `bytes`; `writable` will be reported
    kGone,        // the peer no longer reads (EPIPE, reset); `bytes` were taken before that
    kRefused,     // a message the socket can never carry (EMSGSIZE); logged by the endpoint
  };
  struct SendResult {
    SendStatus status;
    size_t bytes;
  };
  enum class ReceiveStatus : uint8_t { kData, kWouldBlock, kEof, kError };
  struct ReceiveResult {
    ReceiveStatus status;
    size_t bytes;  // kData only
  };

  virtual ~HostEndpoint() = default;

  // Starts reporting HostEvents to `callback` until close(). Throws
  // std::system_error if the event loop refuses the socket.
  virtual void watch(EventCallback callback) = 0;

  // Sends from `iovs` in order, as much as the socket takes now. A
  // message-oriented endpoint (kSeqpacket) sends `iovs` as one message, all or
  // nothing (at most IOV_MAX iovecs).
  virtual SendResult send(std::span<const iovec> iovs) = 0;
  // Receives into `into` in order, as much as is there now (kSeqpacket: the
  // next whole message, which must fit; a zero-length message is kData 0).
  virtual ReceiveResult receive(std::span<const iovec> into) = 0;
  // kSeqpacket only: the size of the next message without taking it (kData),
  // kWouldBlock when none is queued, kEof once the peer closed and all its
  // messages were taken.
  virtual ReceiveResult peek_message_size() { return {ReceiveStatus::kError, 0}; }
  // The host peer reads EOF once what was sent is read; receiving goes on.
  virtual void shutdown_send() = 0;

  // Bytes sent that the host peer has not read yet (0 if unknown or closed).
  [[nodiscard]] virtual size_t unread_by_peer() const = 0;

  // Stops watching and closes; idempotent. The peer sees EOF (or a reset).
  virtual void close() = 0;
  [[nodiscard]] virtual bool is_open() const = 0;
  // An endpoint whose connect is still in progress (a non-blocking AF_VSOCK
  // forward): it reports `connected` or `hangup` through watch() later.
  [[nodiscard]] virtual bool connecting() const { return false; }
  // Why that connect failed (errno), 0 while connecting, once connected, or
  // for an endpoint that never connects.
  [[nodiscard]] virtual int connect_error() const { return 0; }

  // The packet type this endpoint carries (every header we send says so).
  [[nodiscard]] virtual SocketType socket_type() const = 0;
  // kSeqpacket: the longest message one send() can take. The guest is never
  // offered more credit than this, so a Linux guest refuses a longer message
  // itself (EMSGSIZE) instead of our host socket refusing it mid-connection.
  [[nodiscard]] virtual uint32_t max_message_bytes() const { return UINT32_MAX; }

  // Bytes to send the host peer when the guest accepts a connection the host
  // started, ahead of any guest data and not counted as guest data. Returns
  // how many of `out` were written (0: no greeting).
  virtual size_t accept_greeting(uint32_t local_port, std::span<uint8_t, kMaxGreetingBytes> out) const {
    (void)local_port;
    (void)out;
    return 0;
  }
};

}  // namespace vhost_vsock::vsock
