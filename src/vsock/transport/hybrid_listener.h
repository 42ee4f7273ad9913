// The hybrid vsock listener on uds-path (the Firecracker / Cloud Hypervisor
// protocol): a host program connects, sends "CONNECT <port>\n" and, once the
// guest accepts, reads "OK <host port>\n" before the stream starts (the
// greeting of HybridPeerEndpoint). This class accepts host peers and runs
// their handshake, bounded in time (handshake_timeout) and bytes
// (max_connect_line); what happens to a finished handshake is the caller's
// (the muxer asks the guest).
//
// With Options::seqpacket the same runs over AF_UNIX SOCK_SEQPACKET on
// <uds-path>_seqpacket: the line is exactly one message (no early bytes;
// later messages stay queued in the socket), and the greeting is one message.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <unordered_map>

#include "base/event_loop.h"
#include "base/unique_fd.h"
#include "base/unix_listener.h"
#include "vsock/connection/host_endpoint.h"
#include "vsock/transport/connect_line.h"

namespace vhost_vsock::vsock {

class HybridListener {
 public:
  struct Options {
    std::string uds_path;
    std::chrono::milliseconds handshake_timeout{5000};  // the peer must finish its line in time
    size_t max_connect_line = 64;                       // bytes, newline included
    bool seqpacket = false;                             // SOCK_SEQPACKET: one message is the line
  };

  // Run on the loop's thread; none of them may destroy the listener.
  struct Callbacks {
    // Asked for each accepted peer before its handshake starts; false closes
    // it at once (the connection cap).
    std::function<bool()> admit;
    // A peer finished its line. `early_bytes` (what it sent after the line, at
    // most a line's worth) are valid during the call only. The endpoint's
    // socket is still in the loop's epoll, handed over (base::EventLoop::
    // hand_over): its watch() takes that registration over, and destroying
    // it unwatched closes the socket and forgets the registration.
    std::function<void(std::unique_ptr<HostEndpoint> endpoint, uint32_t guest_port,
                       std::span<const uint8_t> early_bytes)>
        on_connect;
    // A peer failed its handshake and has been closed.
    std::function<void(const char* reason)> on_failure;
  };

  // Listens on uds-path (base::UnixListener: a stale socket file is replaced,
  // a live listener's or a non-socket never). Throws std::runtime_error
  // naming the path.
  HybridListener(base::EventLoop& loop, Options options, Callbacks callbacks);
  // Closes peers still in their handshake and the listener; unlinks uds-path
  // only if it is still the file we bound.
  ~HybridListener();
  HybridListener(const HybridListener&) = delete;
  HybridListener& operator=(const HybridListener&) = delete;

  // Host peers still in their handshake; they count toward the connection cap.
  [[nodiscard]] size_t pending() const { return handshakes_.size(); }

 private:
  // A host peer that has not finished its CONNECT line.
  struct PendingPeer {
    PendingPeer(base::UniqueFd fd_, size_t max_line) : fd(std::move(fd_)), reader(max_line) {}
    base::UniqueFd fd;
    ConnectLineReader reader;
    base::EventLoop::TimerId timer = 0;
  };

  void on_accepted(base::UniqueFd fd);
  void on_peer_readable(int fd);
  void read_connect_message(int fd, PendingPeer& peer);
  void finish_handshake(int fd);
  void fail_handshake(int fd, const char* reason);

  base::EventLoop& loop_;
  Options options_;
  Callbacks callbacks_;
  std::unordered_map<int, std::unique_ptr<PendingPeer>> handshakes_;
  base::UnixListener socket_;  // last: accepts nothing before the members above exist
};

}  // namespace vhost_vsock::vsock
