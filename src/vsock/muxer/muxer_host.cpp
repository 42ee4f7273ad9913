// Host-initiated connections: the hybrid listener on uds-path hands over host
// peers that finished their CONNECT line, and each becomes a connection that
// asks the guest with a REQUEST.
#include <spdlog/spdlog.h>

#include "vsock/muxer/muxer_impl.h"

namespace vhost_vsock::vsock {

void Muxer::Impl::open_listener() {
  HybridListener::Options listener_options{options_.uds_path, options_.limits.handshake_timeout,
                                           options_.limits.max_connect_line};
  HybridListener::Callbacks callbacks{
      [this] { return admit_host_peer(); },
      [this](std::unique_ptr<HostEndpoint> endpoint, uint32_t guest_port, std::span<const uint8_t> early_bytes) {
        on_host_connect(std::move(endpoint), guest_port, early_bytes);
      },
      [this](const char* reason) {
        ++stats_.handshake_failures;
        log_info("host connection on {} dropped: {}", options_.uds_path, reason);
      }};
  listener_ = std::make_unique<HybridListener>(loop_, std::move(listener_options), std::move(callbacks));
  spdlog::info("cid={} listening for host connections on {}", options_.guest_cid, options_.uds_path);
}

size_t Muxer::Impl::pending_host_peers() const {
  return listener_ ? listener_->pending() : 0;
}

bool Muxer::Impl::admit_host_peer() {
  if (connections_.has_room(pending_host_peers())) return true;
  ++stats_.handshake_failures;
  log_info("connection limit {} reached; closing new host connection", options_.limits.max_connections);
  return false;
}

void Muxer::Impl::on_host_connect(std::unique_ptr<HostEndpoint> endpoint, uint32_t guest_port,
                                  std::span<const uint8_t> early_bytes) {
  if (!connections_.has_room()) {
    ++stats_.handshake_failures;
    log_info("connection limit {} reached; refusing host connect to port {}", options_.limits.max_connections,
             guest_port);
    return;
  }
  // Bounded: more candidates than live connections guarantees a free port.
  const auto host_port = port_allocator_.allocate(
      [this](uint32_t port) { return connections_.local_port_in_use(port); }, connections_.size() + 1);
  if (!host_port) {
    ++stats_.handshake_failures;
    return;
  }
  ConnectionParams params{options_.guest_cid, *host_port, guest_port, options_.limits.tx_buffer_size};
  RoutedConnection& connection = insert(std::make_unique<RoutedConnection>(
      params, std::move(endpoint), ConnectionState::kAwaitingResponse, next_connection_id_++));
  spdlog::debug("cid={} local={} peer={} host connect: REQUEST sent to the guest", options_.guest_cid, *host_port,
                guest_port);
  mutate(connection, [&](Connection& conn) {
    conn.set_early_host_bytes(early_bytes);
    conn.request_connect();
    watch(connection);
    timers_.arm_for_state(connection);  // the request timeout (none if watching failed)
  });
}

}  // namespace vhost_vsock::vsock
