#include "vsock/muxer/muxer.h"

#include <fmt/format.h>

#include "vsock/muxer/muxer_impl.h"

namespace vhost_vsock::vsock {

static_assert(Muxer::kRxQueue == QueuePump::kRxQueue && Muxer::kTxQueue == QueuePump::kTxQueue);

Muxer::Muxer(base::EventLoop& loop, MuxerOptions options) : impl_(std::make_unique<Impl>(loop, std::move(options))) {}
Muxer::~Muxer() = default;
void Muxer::attach_queue(uint16_t index, virtio::Queue& queue) {
  impl_->pump_.attach(index, queue);
}
void Muxer::detach_queue(uint16_t index) {
  impl_->pump_.detach(index);
}
void Muxer::on_queue_kicked(uint16_t index) {
  impl_->pump_.on_kick(index);
}
void Muxer::reset_all_connections() {
  impl_->router_.reset_all_connections();
}
void Muxer::set_negotiated_features(uint64_t features) {
  impl_->negotiated_features_ = features;
  impl_->router_.set_seqpacket_enabled((features & kFeatureSeqpacket) != 0);
  impl_->router_.set_guest_reachable(features != 0);
}
uint64_t Muxer::negotiated_features() const {
  return impl_->negotiated_features_;
}
MuxerStats Muxer::stats() const {
  // The budget gauges are read now rather than kept in step on the data path.
  MuxerStats snapshot = impl_->stats_;
  snapshot.tx_memory_reserved = impl_->router_.credit_budget().reserved();
  snapshot.tx_memory_limit = impl_->router_.credit_budget().limit();
  return snapshot;
}
std::string Muxer::seqpacket_uds_path() const {
  return impl_->seqpacket_listener_ ? impl_->options_.uds_path + "_seqpacket" : std::string();
}

void Muxer::list_connections(std::vector<ConnectionInfo>* out) const {
  const auto now = std::chrono::steady_clock::now();
  const std::string& uds_path = impl_->router_.uds_path();
  impl_->router_.for_each_connection([&](const RoutedConnection& routed) {
    const Connection& conn = routed.conn;
    ConnectionInfo info;
    info.guest_port = conn.peer_port();
    info.host_port = conn.local_port();
    info.guest_initiated = routed.guest_initiated;
    if (impl_->options_.forward) {
      info.host_path = routed.guest_initiated
                           ? fmt::format("vsock:{}:{}", impl_->options_.forward->cid, conn.local_port())
                           : fmt::format("vsock-listen:{}", conn.peer_port());
    } else if (routed.guest_initiated) {
      info.host_path = uds_path + "_" + std::to_string(conn.local_port());
    } else {
      info.host_path = conn.is_seqpacket() ? uds_path + "_seqpacket" : uds_path;
    }
    info.type = conn.socket_type() == SocketType::kStream ? "stream" : "seqpacket";
    info.state = to_string(conn.state());
    info.age = std::chrono::duration_cast<std::chrono::milliseconds>(now - routed.created);
    info.bytes_from_guest = conn.rx_cnt();
    info.bytes_to_guest = conn.tx_cnt();
    info.buffered_to_host = conn.host_backlog();
    info.guest_credit = conn.guest_credit();
    info.peer_credit = conn.peer_credit();
    out->push_back(std::move(info));
  });
  impl_->router_.for_each_sibling_connection([&](const ConnectionKey& key, const SiblingConnection& entry) {
    ConnectionInfo info;
    info.peer_cid = key.peer_cid;
    info.guest_port = key.local_port;
    info.host_port = key.peer_port;
    info.guest_initiated = entry.from_our_guest;
    info.type = entry.type == SocketType::kStream ? "stream" : "seqpacket";
    info.state = entry.established ? "established" : "awaiting-response";
    info.age = std::chrono::duration_cast<std::chrono::milliseconds>(now - entry.created);
    info.bytes_from_guest = entry.bytes_from_guest;
    info.bytes_to_guest = entry.bytes_to_guest;
    out->push_back(std::move(info));
  });
}

std::shared_ptr<SiblingHub> make_sibling_hub(const std::vector<SiblingVm>& vms) {
  std::vector<SiblingHub::VmSpec> specs;
  specs.reserve(vms.size());
  for (const SiblingVm& vm : vms) specs.push_back({vm.cid, vm.groups, vm.max_connections});
  return std::make_shared<SiblingHub>(specs);
}

namespace {

Router::Options router_options(const MuxerOptions& options) {
  Router::Options out{options.guest_cid, options.uds_path, options.limits, options.siblings.get(), {}};
  if (options.forward) {
    out.uds_path.clear();  // forwarding replaces <uds-path>_<port>, as in vhost-device-vsock
    out.forward_to =
        options.forward->connect_address ? options.forward->connect_address : forward_to_cid(options.forward->cid);
  }
  return out;
}

}  // namespace

Muxer::Impl::Impl(base::EventLoop& loop, MuxerOptions options)
    : loop_(loop),
      options_(std::move(options)),
      router_(loop, router_options(options_), stats_,
              Router::Wakeups{[this] { pump_.schedule_rx(); }, [this] { pump_.schedule_tx(); }}) {
  router_.set_pending_host_peers([this] { return pending_host_peers(); });
  pump_.enable_busy_poll(options_.limits.busy_poll);
  if (options_.forward) {
    open_forward_listeners();
  } else if (!options_.uds_path.empty()) {
    open_listener();
    open_seqpacket_listener();
  }
}

Muxer::Impl::~Impl() {
  router_.reset_all_connections();  // while the pump it may wake still exists
  listener_.reset();                // closes host peers still in their handshake
  seqpacket_listener_.reset();
  forward_listeners_.clear();
}

}  // namespace vhost_vsock::vsock
