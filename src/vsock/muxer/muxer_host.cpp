// Host-initiated connections: the hybrid listeners on uds-path (streams) and
// <uds-path>_seqpacket (SOCK_SEQPACKET) hand over host peers that finished
// their CONNECT line, the forward-listen listeners hand over every accepted
// connection, and the router makes each a connection that asks the guest
// with a REQUEST.
#include <spdlog/spdlog.h>

#include "vsock/muxer/muxer_impl.h"

namespace vhost_vsock::vsock {

void Muxer::Impl::open_listener() {
  HybridListener::Options listener_options{options_.uds_path, options_.limits.handshake_timeout,
                                           options_.limits.max_connect_line};
  HybridListener::Callbacks callbacks{
      [this] { return router_.admit_host_peer(); },
      [this](std::unique_ptr<HostEndpoint> endpoint, uint32_t guest_port, std::span<const uint8_t> early_bytes) {
        router_.on_host_connect(std::move(endpoint), guest_port, early_bytes);
      },
      [this](const char* reason) { router_.on_handshake_failed(options_.uds_path, reason); }};
  listener_ = std::make_unique<HybridListener>(loop_, std::move(listener_options), std::move(callbacks));
  spdlog::info("cid={} listening for host connections on {}", options_.guest_cid, options_.uds_path);
}

// Seqpacket is an addition: when its path cannot be used, streams still work.
void Muxer::Impl::open_seqpacket_listener() {
  const std::string path = options_.uds_path + "_seqpacket";
  HybridListener::Options listener_options{path, options_.limits.handshake_timeout, options_.limits.max_connect_line,
                                           true};
  HybridListener::Callbacks callbacks{
      [this] { return router_.admit_host_peer(); },
      [this](std::unique_ptr<HostEndpoint> endpoint, uint32_t guest_port, std::span<const uint8_t>) {
        router_.on_host_connect(std::move(endpoint), guest_port, {});
      },
      [this, path](const char* reason) { router_.on_handshake_failed(path, reason); }};
  try {
    seqpacket_listener_ = std::make_unique<HybridListener>(loop_, std::move(listener_options), std::move(callbacks));
  } catch (const std::exception& error) {
    spdlog::warn("cid={} no SOCK_SEQPACKET host connections: {}", options_.guest_cid, error.what());
    return;
  }
  spdlog::info("cid={} listening for SOCK_SEQPACKET host connections on {}", options_.guest_cid, path);
}

// vhost-device-vsock's forward-listen: an accepted AF_VSOCK connection asks
// the guest at once (no CONNECT line); the router applies the connection cap.
void Muxer::Impl::open_forward_listeners() {
  const VsockForwarding& forward = *options_.forward;
  for (const uint32_t port : forward.listen_ports) {
    const ForwardAddress address =
        forward.listen_address ? forward.listen_address(port).value_or(ForwardAddress{}) : vsock_listen_address(port);
    forward_listeners_.push_back(std::make_unique<ForwardListener>(
        loop_, port, address, [this](std::unique_ptr<HostEndpoint> endpoint, uint32_t guest_port) {
          router_.on_host_connect(std::move(endpoint), guest_port, {});
        }));
  }
  spdlog::info("cid={} forwarding guest connects to vsock cid {}; listening on {} forward-listen port(s)",
               options_.guest_cid, forward.cid, forward.listen_ports.size());
}

size_t Muxer::Impl::pending_host_peers() const {
  return (listener_ ? listener_->pending() : 0) + (seqpacket_listener_ ? seqpacket_listener_->pending() : 0);
}

}  // namespace vhost_vsock::vsock
