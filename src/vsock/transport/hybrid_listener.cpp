#include "vsock/transport/hybrid_listener.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <cerrno>

#include "base/errno_text.h"
#include "vsock/transport/hybrid_peer_endpoint.h"
#include "vsock/transport/unix_seqpacket_endpoint.h"
#include "vsock/transport/unix_stream_endpoint.h"

namespace vhost_vsock::vsock {
namespace {

base::UnixListener::Options listener_options(bool seqpacket) {
  base::UnixListener::Options options;
  options.name = seqpacket ? "seqpacket uds-path" : "uds-path";
  options.socket_type = seqpacket ? SOCK_SEQPACKET : SOCK_STREAM;
  options.accepts_per_event = 256;  // bounds one readiness event
  return options;
}

}  // namespace

HybridListener::HybridListener(base::EventLoop& loop, Options options, Callbacks callbacks)
    : loop_(loop),
      options_(std::move(options)),
      callbacks_(std::move(callbacks)),
      socket_(
          loop_, options_.uds_path, [this](base::UniqueFd fd) { on_accepted(std::move(fd)); },
          listener_options(options_.seqpacket)) {}

HybridListener::~HybridListener() {
  for (auto& [fd, peer] : handshakes_) {
    loop_.remove(fd);
    loop_.cancel_timer(peer->timer);
  }
}

void HybridListener::on_accepted(base::UniqueFd fd) {
  if (!callbacks_.admit()) return;  // fd closes here
  const int raw = fd.get();
  auto peer = std::make_unique<PendingPeer>(std::move(fd), options_.max_connect_line);
  peer->timer = loop_.add_timer(options_.handshake_timeout, [this, raw] {
    auto it = handshakes_.find(raw);
    if (it == handshakes_.end()) return;
    it->second->timer = 0;
    fail_handshake(raw, "no CONNECT line before the handshake timeout");
  });
  try {
    // Edge-triggered: every read below runs to EAGAIN or ends the handshake,
    // and a finished peer's socket stays in epoll, handed over, until its
    // endpoint takes it over; level-triggered, it could wake every epoll_wait.
    loop_.add(raw, EPOLLIN | EPOLLRDHUP | EPOLLET, [this, raw](uint32_t) { on_peer_readable(raw); });
  } catch (const std::exception& error) {
    loop_.cancel_timer(peer->timer);
    spdlog::error("cannot watch host connection on {}: {}", options_.uds_path, error.what());
    return;
  }
  handshakes_.emplace(raw, std::move(peer));
  // The line may already be there.
  on_peer_readable(raw);
}

void HybridListener::on_peer_readable(int fd) {
  auto it = handshakes_.find(fd);
  if (it == handshakes_.end()) return;
  PendingPeer& peer = *it->second;
  if (options_.seqpacket) {
    read_connect_message(fd, peer);
    return;
  }
  uint8_t buffer[256];
  // Bounded: each read takes at least one byte of a line capped at max_connect_line.
  for (;;) {
    const size_t room = std::min(peer.reader.room(), sizeof(buffer));
    if (room == 0) {
      fail_handshake(fd, "CONNECT line too long");
      return;
    }
    // Never read past the limit, so at most a line's worth of payload is held here.
    const ssize_t n = ::read(fd, buffer, room);
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) return;
      fail_handshake(fd, base::errno_text(errno).c_str());
      return;
    }
    if (n == 0) {
      fail_handshake(fd, "closed before completing the CONNECT line");
      return;
    }
    switch (peer.reader.feed(std::span<const uint8_t>(buffer, static_cast<size_t>(n)))) {
      case ConnectLineReader::Status::kNeedMore:
        continue;
      case ConnectLineReader::Status::kDone:
        finish_handshake(fd);
        return;
      case ConnectLineReader::Status::kMalformed:
        fail_handshake(fd, "malformed CONNECT line");
        return;
      case ConnectLineReader::Status::kTooLong:
        fail_handshake(fd, "CONNECT line too long");
        return;
    }
  }
}

// One message, the whole line: a longer message is cut (MSG_TRUNC) and refused.
void HybridListener::read_connect_message(int fd, PendingPeer& peer) {
  uint8_t buffer[256];
  const size_t room = std::min(peer.reader.room(), sizeof(buffer));
  iovec iov{buffer, room};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  ssize_t n = 0;
  do {
    n = ::recvmsg(fd, &msg, MSG_DONTWAIT);
  } while (n < 0 && errno == EINTR);
  if (n < 0) {
    if (errno != EAGAIN && errno != EWOULDBLOCK) fail_handshake(fd, base::errno_text(errno).c_str());
    return;
  }
  if (n == 0) {
    fail_handshake(fd, "closed (or sent an empty message) instead of the CONNECT message");
    return;
  }
  if ((msg.msg_flags & MSG_TRUNC) != 0) {
    fail_handshake(fd, "CONNECT message too long");
    return;
  }
  const auto status = peer.reader.feed(std::span<const uint8_t>(buffer, static_cast<size_t>(n)));
  if (status != ConnectLineReader::Status::kDone || !peer.reader.leftover().empty()) {
    fail_handshake(fd, "malformed CONNECT message (one message \"CONNECT <port>\\n\" expected)");
    return;
  }
  finish_handshake(fd);
}

void HybridListener::fail_handshake(int fd, const char* reason) {
  auto it = handshakes_.find(fd);
  if (it == handshakes_.end()) return;
  loop_.forget(fd);  // closed below, and ours is its only reference
  if (it->second->timer != 0) loop_.cancel_timer(it->second->timer);
  handshakes_.erase(it);  // closes the peer
  callbacks_.on_failure(reason);
}

void HybridListener::finish_handshake(int fd) {
  auto it = handshakes_.find(fd);
  if (it == handshakes_.end()) return;
  std::unique_ptr<PendingPeer> peer = std::move(it->second);
  handshakes_.erase(it);
  if (peer->timer != 0) loop_.cancel_timer(peer->timer);
  // The socket stays in epoll, calling nothing here any more: its endpoint
  // takes the registration over with one EPOLL_CTL_MOD when it watches, or
  // forgets it when it closes unwatched.
  loop_.hand_over(fd);
  size_host_send_buffer(peer->fd.get());
  std::unique_ptr<HostEndpoint> endpoint;
  if (options_.seqpacket) {
    endpoint = std::make_unique<HybridSeqpacketPeerEndpoint>(loop_, std::move(peer->fd));
  } else {
    endpoint = std::make_unique<HybridPeerEndpoint>(loop_, std::move(peer->fd));
  }
  callbacks_.on_connect(std::move(endpoint), peer->reader.port(), peer->reader.leftover());
}

}  // namespace vhost_vsock::vsock
