#include "vsock/muxer/muxer.h"

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
}
uint64_t Muxer::negotiated_features() const {
  return impl_->negotiated_features_;
}
const MuxerStats& Muxer::stats() const {
  return impl_->stats_;
}
std::string Muxer::seqpacket_uds_path() const {
  return impl_->seqpacket_listener_ ? impl_->options_.uds_path + "_seqpacket" : std::string();
}

Muxer::Impl::Impl(base::EventLoop& loop, MuxerOptions options)
    : loop_(loop),
      options_(std::move(options)),
      router_(loop, Router::Options{options_.guest_cid, options_.uds_path, options_.limits}, stats_,
              Router::Wakeups{[this] { pump_.schedule_rx(); }, [this] { pump_.schedule_tx(); }}) {
  router_.set_pending_host_peers([this] { return pending_host_peers(); });
  if (!options_.uds_path.empty()) {
    open_listener();
    open_seqpacket_listener();
  }
}

Muxer::Impl::~Impl() {
  router_.reset_all_connections();  // while the pump it may wake still exists
  listener_.reset();                // closes host peers still in their handshake
  seqpacket_listener_.reset();
}

}  // namespace vhost_vsock::vsock
