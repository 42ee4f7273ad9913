// The hybrid listener on uds-path and its "CONNECT <port>\n" handshake.
#include <spdlog/spdlog.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>

#include <cerrno>
#include <cstring>
#include <stdexcept>

#include "vsock/muxer/muxer_impl.h"
#include "vsock/transport/hybrid_peer_endpoint.h"

namespace vhost_vsock::vsock {
namespace {

constexpr int kAcceptsPerEvent = 256;
constexpr int kListenBacklog = 1024;
constexpr std::chrono::milliseconds kAcceptRetryDelay{100};

[[noreturn]] void fail_listener(const std::string& path, const char* what, int error) {
  throw std::runtime_error("uds-path " + path + ": " + what + ": " + std::strerror(error));
}

}  // namespace

void Muxer::Impl::open_listener() {
  const std::string& path = options_.uds_path;
  sockaddr_un address{};
  address.sun_family = AF_UNIX;
  // Guest connects append "_<port>" (up to 11 bytes) to the same path.
  if (path.size() >= sizeof(address.sun_path)) {
    throw std::runtime_error("uds-path " + path + ": longer than the " + std::to_string(sizeof(address.sun_path) - 1) +
                             " bytes AF_UNIX allows");
  }
  std::memcpy(address.sun_path, path.c_str(), path.size() + 1);
  struct stat st {};
  if (::lstat(path.c_str(), &st) == 0) {
    // Replace a stale socket from an earlier run, never anything else.
    if (!S_ISSOCK(st.st_mode)) fail_listener(path, "exists and is not a socket", EEXIST);
    // Stale means nobody accepts on it any more; never steal a live listener.
    base::UniqueFd probe(::socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
    if (probe && (::connect(probe.get(), reinterpret_cast<const sockaddr*>(&address), sizeof(address)) == 0 ||
                  errno == EAGAIN)) {
      fail_listener(path, "another process is listening on it", EADDRINUSE);
    }
    if (::unlink(path.c_str()) != 0) fail_listener(path, "cannot remove stale socket", errno);
  }
  base::UniqueFd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
  if (!fd) fail_listener(path, "socket", errno);
  if (::bind(fd.get(), reinterpret_cast<const sockaddr*>(&address), sizeof(address)) != 0) {
    fail_listener(path, "bind", errno);
  }
  listener_file_ = base::BoundSocketFile(path);
  if (::listen(fd.get(), kListenBacklog) != 0) {
    const int error = errno;
    listener_file_.unlink_if_ours();
    fail_listener(path, "listen", error);
  }
  listener_ = std::move(fd);
  loop_.add(listener_.get(), EPOLLIN, [this](uint32_t) { on_listener_ready(); });
  spdlog::info("cid={} listening for host connections on {}", options_.guest_cid, path);
}

void Muxer::Impl::close_listener() {
  if (listener_retry_timer_ != 0) loop_.cancel_timer(listener_retry_timer_);
  listener_retry_timer_ = 0;
  if (!listener_) return;
  loop_.remove(listener_.get());
  listener_.reset();
  listener_file_.unlink_if_ours();  // not a successor's file at the same path
}

void Muxer::Impl::on_listener_ready() {
  for (int i = 0; i < kAcceptsPerEvent; ++i) {
    base::UniqueFd fd(::accept4(listener_.get(), nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC));
    if (!fd) {
      const int error = errno;
      if (error == EAGAIN || error == EWOULDBLOCK) return;
      if (error == EINTR || error == ECONNABORTED) continue;
      // Out of fds or memory: the listener stays readable, so pause it rather
      // than spin, and try again shortly.
      if (info_limiter_.allow()) {
        spdlog::warn("cid={} accept on {}: {}; pausing the listener", options_.guest_cid, options_.uds_path,
                     std::strerror(error));
      }
      try {
        loop_.modify(listener_.get(), 0);
      } catch (const std::exception&) {
        return;  // still level-triggered: we will simply be called again
      }
      listener_retry_timer_ = loop_.add_timer(kAcceptRetryDelay, [this, alive = std::weak_ptr<bool>(alive_)] {
        if (alive.expired()) return;
        listener_retry_timer_ = 0;
        try {
          if (listener_) loop_.modify(listener_.get(), EPOLLIN);
        } catch (const std::exception& e) {
          spdlog::error("cid={} cannot resume the listener on {}: {}", options_.guest_cid, options_.uds_path, e.what());
        }
      });
      return;
    }
    if (connections_.size() + handshakes_.size() >= options_.limits.max_connections) {
      ++stats_.handshake_failures;
      log_info("connection limit {} reached; closing new host connection", options_.limits.max_connections);
      continue;  // fd closes here
    }
    const int raw = fd.get();
    auto peer = std::make_unique<PendingPeer>(std::move(fd), options_.limits.max_connect_line);
    peer->timer = loop_.add_timer(options_.limits.handshake_timeout, [this, raw, alive = std::weak_ptr<bool>(alive_)] {
      if (alive.expired()) return;
      auto it = handshakes_.find(raw);
      if (it == handshakes_.end()) return;
      it->second->timer = 0;
      fail_handshake(raw, "no CONNECT line before the handshake timeout");
    });
    try {
      loop_.add(raw, EPOLLIN | EPOLLRDHUP, [this, raw](uint32_t) { on_peer_readable(raw); });
    } catch (const std::exception& error) {
      loop_.cancel_timer(peer->timer);
      spdlog::error("cid={} cannot watch host connection: {}", options_.guest_cid, error.what());
      continue;
    }
    handshakes_.emplace(raw, std::move(peer));
    // The line may already be there.
    on_peer_readable(raw);
  }
}

void Muxer::Impl::on_peer_readable(int fd) {
  auto it = handshakes_.find(fd);
  if (it == handshakes_.end()) return;
  PendingPeer& peer = *it->second;
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
      fail_handshake(fd, std::strerror(errno));
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

void Muxer::Impl::fail_handshake(int fd, const char* reason) {
  auto it = handshakes_.find(fd);
  if (it == handshakes_.end()) return;
  ++stats_.handshake_failures;
  log_info("host connection on {} dropped: {}", options_.uds_path, reason);
  loop_.remove(fd);
  if (it->second->timer != 0) loop_.cancel_timer(it->second->timer);
  handshakes_.erase(it);  // closes the peer
}

void Muxer::Impl::finish_handshake(int fd) {
  auto it = handshakes_.find(fd);
  if (it == handshakes_.end()) return;
  std::unique_ptr<PendingPeer> peer = std::move(it->second);
  handshakes_.erase(it);
  loop_.remove(fd);
  if (peer->timer != 0) loop_.cancel_timer(peer->timer);
  const uint32_t guest_port = peer->reader.port();

  if (connections_.size() >= options_.limits.max_connections) {
    ++stats_.handshake_failures;
    log_info("connection limit {} reached; refusing host connect to port {}", options_.limits.max_connections,
             guest_port);
    return;
  }
  // Bounded: more candidates than live connections guarantees a free port.
  const auto host_port = port_allocator_.allocate([this](uint32_t port) { return local_ports_in_use_.contains(port); },
                                                  connections_.size() + 1);
  if (!host_port) {
    ++stats_.handshake_failures;
    return;
  }
  ConnectionParams params{options_.guest_cid, *host_port, guest_port, options_.limits.tx_buffer_size};
  auto owned = std::make_unique<MuxConnection>(params, std::make_unique<HybridPeerEndpoint>(loop_, std::move(peer->fd)),
                                               ConnectionState::kAwaitingResponse, next_connection_id_++);
  MuxConnection& mc = insert(std::move(owned));
  mc.conn.set_early_host_bytes(peer->reader.leftover());
  mc.conn.request_connect();
  spdlog::debug("cid={} local={} peer={} host connect: REQUEST sent to the guest", options_.guest_cid, *host_port,
                guest_port);
  watch(mc);
  start_state_timer(mc);
  after_change(mc, ConnectionState::kAwaitingResponse);
}

}  // namespace vhost_vsock::vsock
