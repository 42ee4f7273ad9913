#include "vsock/muxer/muxer.h"

#include <spdlog/spdlog.h>

#include "vsock/muxer/muxer_impl.h"

namespace vhost_vsock::vsock {
namespace {

constexpr int kMaxTxRounds = 4;

bool is_known_op(uint16_t op) {
  return op >= static_cast<uint16_t>(Op::kRequest) && op <= static_cast<uint16_t>(Op::kCreditRequest);
}

}  // namespace

// ---------------------------------------------------------------------------
// Public shell

Muxer::Muxer(base::EventLoop& loop, MuxerOptions options) : impl_(std::make_unique<Impl>(loop, std::move(options))) {}
Muxer::~Muxer() = default;
void Muxer::attach_queue(uint16_t index, virtio::Queue& queue) {
  impl_->attach_queue(index, queue);
}
void Muxer::detach_queue(uint16_t index) {
  impl_->detach_queue(index);
}
void Muxer::on_queue_kicked(uint16_t index) {
  impl_->on_queue_kicked(index);
}
void Muxer::reset_all_connections() {
  impl_->reset_all_connections();
}
void Muxer::set_negotiated_features(uint64_t features) {
  impl_->negotiated_features_ = features;
}
uint64_t Muxer::negotiated_features() const {
  return impl_->negotiated_features_;
}
const MuxerStats& Muxer::stats() const {
  return impl_->stats();
}

// ---------------------------------------------------------------------------

Muxer::Impl::Impl(base::EventLoop& loop, MuxerOptions options)
    : loop_(loop), options_(std::move(options)), rx_chains_(kMaxRxBatch) {
  rx_iovecs_.reserve(IOV_MAX);
  if (!options_.uds_path.empty()) open_listener();
}

Muxer::Impl::~Impl() {
  *alive_ = false;
  reset_all_connections();
  listener_.reset();  // closes host peers still in their handshake
}

void Muxer::Impl::attach_queue(uint16_t index, virtio::Queue& queue) {
  if (index >= queues_.size()) return;
  queues_[index] = QueueSlot{&queue};
  queue.enable_notifications();
  // Work may have piled up while the queue was away.
  if (index == kRxQueue) schedule_rx();
  if (index == kTxQueue) schedule_tx();
}

void Muxer::Impl::detach_queue(uint16_t index) {
  if (index >= queues_.size()) return;
  queues_[index] = QueueSlot{};
}

void Muxer::Impl::on_queue_kicked(uint16_t index) {
  if (index == kTxQueue) {
    process_tx();
  } else if (index == kRxQueue) {
    schedule_rx();
  }
}

void Muxer::Impl::reset_all_connections() {
  control_list_.clear();
  data_list_.clear();
  for (auto& [key, mc] : connections_) {
    if (mc->timer != 0) loop_.cancel_timer(mc->timer);
    if (mc->was_established) {
      log_info("local={} peer={} connection reset (guest driver gone)", mc->conn.local_port(), mc->conn.peer_port());
    }
  }
  connections_.clear();  // closes every host socket
  local_ports_in_use_.clear();
  orphan_rsts_.clear();
  wake_tx_if_waiting();
  stats_.connections_active = 0;
}

// ---------------------------------------------------------------------------
// TX: guest -> device

void Muxer::Impl::schedule_tx() {
  tx_task_.schedule();
}

void Muxer::Impl::process_tx() {
  virtio::Queue* queue = queues_[kTxQueue].queue;
  if (queue == nullptr || !queue->configured() || queue->broken()) return;
  ++stats_.tx_passes;
  bool used_any = false;
  const uint64_t walk_limit = queue->stats().descriptors_walked + walk_budget(*queue);
  bool out_of_budget = false;
  for (int round = 0; round < kMaxTxRounds; ++round) {
    queue->disable_notifications();
    for (size_t i = 0; i < queue->size(); ++i) {
      if (queue->stats().descriptors_walked >= walk_limit) {
        out_of_budget = true;
        break;
      }
      if (orphan_rsts_.full()) {
        // Backpressure: the next packet might owe an RST with nowhere to go.
        // Its chain stays in the avail ring until the RX pass makes room.
        tx_waits_for_rx_ = true;
        break;
      }
      const virtio::PopStatus status = queue->pop(tx_chain_);
      if (status == virtio::PopStatus::kEmpty || status == virtio::PopStatus::kBroken) break;
      used_any = true;  // an invalid chain was already returned by the queue
      if (status == virtio::PopStatus::kInvalidChain) {
        ++stats_.dropped_malformed;
        warn_guest("invalid TX descriptor chain");
        continue;
      }
      handle_tx_chain(tx_chain_);
      queue->add_used(tx_chain_.head_index(), 0);
      if (queues_[kTxQueue].queue != queue) return;  // detached underneath us (not expected)
    }
    if (out_of_budget) {
      schedule_tx();  // notifications stay off: the next pass comes by itself
      break;
    }
    if (tx_waits_for_rx_) break;  // notifications stay off: wake_tx_if_waiting() resumes
    queue->enable_notifications();
    if (queue->broken() || !queue->has_available()) break;
    if (round + 1 == kMaxTxRounds) schedule_tx();  // the guest keeps adding: yield, come back
  }
  if (used_any) queue->notify();
  schedule_rx();
}

void Muxer::Impl::handle_tx_chain(const virtio::DescriptorChain& chain) {
  const TxParseStatus status = parse_tx_packet(chain.readable(), tx_packet_);
  const PacketHeader& header = tx_packet_.header;
  if (status == TxParseStatus::kShortHeader) {
    ++stats_.dropped_malformed;
    warn_guest("TX chain with {} readable bytes, no room for a header", chain.readable_bytes());
    return;
  }
  // Invariant 2: only packets from the guest itself to the host.
  if (header.src_cid != options_.guest_cid || header.dst_cid != kCidHost) {
    ++stats_.dropped_bad_address;
    warn_guest("dropped packet with bad address: {}", describe(header));
    return;
  }
  ++stats_.packets_from_guest;
  if (status != TxParseStatus::kOk) {
    ++stats_.dropped_malformed;
    warn_guest("malformed packet ({}): {}", to_string(status), describe(header));
    if (MuxConnection* mc = find(connection_key(header.dst_port, header.src_port))) {
      const ConnectionState before = mc->conn.state();
      mc->conn.reset();
      after_change(*mc, before);
    } else if (header.operation() != Op::kRst) {
      reply_rst(header);
    }
    return;
  }
  handle_guest_packet(header, tx_packet_.payload.span());
}

void Muxer::Impl::handle_guest_packet(const PacketHeader& header, std::span<const iovec> payload) {
  const Op op = header.operation();
  if (header.type != static_cast<uint16_t>(SocketType::kStream)) {
    // SEQPACKET seam: a SeqpacketConnection over AF_UNIX SOCK_SEQPACKET would be
    // routed from here once the device offers VIRTIO_VSOCK_F_SEQPACKET.
    if (op != Op::kRst) reply_rst(header);
    return;
  }
  const uint64_t key = connection_key(header.dst_port, header.src_port);
  MuxConnection* mc = find(key);
  if (!is_known_op(header.op)) {
    ++stats_.dropped_malformed;
    warn_guest("unknown op: {}", describe(header));
    if (mc != nullptr) {
      const ConnectionState before = mc->conn.state();
      mc->conn.reset();
      after_change(*mc, before);
    } else {
      reply_rst(header);
    }
    return;
  }
  if (mc == nullptr) {
    if (op == Op::kRequest) {
      handle_guest_connect(header);
    } else if (op != Op::kRst) {
      reply_rst(header);  // never answer an orphan RST: it could reset a reused port pair
    }
    return;
  }
  const ConnectionState before = mc->conn.state();
  const GuestPacketVerdict verdict = mc->conn.on_guest_packet(header, payload);
  switch (verdict) {
    case GuestPacketVerdict::kOk:
      if (op == Op::kRw && before == ConnectionState::kEstablished) stats_.bytes_from_guest += header.len;
      break;
    case GuestPacketVerdict::kCreditViolation:
      ++stats_.credit_violations;
      warn_guest("local={} peer={} credit violation: len={} beyond credit (buf_alloc={} rx_cnt={} fwd_cnt={})",
                 mc->conn.local_port(), mc->conn.peer_port(), header.len, mc->conn.buf_alloc(), mc->conn.rx_cnt(),
                 mc->conn.fwd_cnt());
      break;
    case GuestPacketVerdict::kProtocolViolation:
      ++stats_.protocol_violations;
      warn_guest("local={} peer={} {} not valid in state {}", mc->conn.local_port(), mc->conn.peer_port(),
                 op_name(header.op), to_string(before));
      break;
    case GuestPacketVerdict::kHostGone:
      spdlog::debug("cid={} local={} peer={} data for a closed host socket; resetting", options_.guest_cid,
                    mc->conn.local_port(), mc->conn.peer_port());
      break;
  }
  after_change(*mc, before);
}

void Muxer::Impl::handle_guest_connect(const PacketHeader& header) {
  const uint32_t port = header.dst_port;
  if (connections_.size() + pending_host_peers() >= options_.limits.max_connections) {
    warn_guest("connection limit {} reached; refusing guest port {} -> host port {}", options_.limits.max_connections,
               header.src_port, port);
    reply_rst(header);
    return;
  }
  UnixStreamDialer::Result dialed = dialer_.dial(port);
  if (!dialed.endpoint) {
    ++stats_.host_connects_refused;
    log_info("local={} peer={} guest connect refused: {}", port, header.src_port, dialed.failure);
    reply_rst(header);
    return;
  }
  ConnectionParams params{options_.guest_cid, port, header.src_port, options_.limits.tx_buffer_size};
  auto owned = std::make_unique<MuxConnection>(params, std::move(dialed.endpoint), ConnectionState::kEstablished,
                                               next_connection_id_++);
  MuxConnection& mc = insert(std::move(owned));
  mc.conn.update_peer_credit(header.buf_alloc, header.fwd_cnt);
  mc.conn.accept_connect();
  mc.was_established = true;
  ++stats_.connections_opened;
  log_info("local={} peer={} guest connection established", port, header.src_port);
  watch(mc);
  after_change(mc, ConnectionState::kEstablished);
}

void Muxer::Impl::reply_rst(const PacketHeader& to) {
  // process_tx() takes a packet only while there is room for its reply, so
  // this cannot fail; the counter stays as a tripwire.
  if (!orphan_rsts_.push_reply_to(to, options_.guest_cid)) {
    ++stats_.orphan_rsts_dropped;
    return;
  }
  schedule_rx();
}

void Muxer::Impl::wake_tx_if_waiting() {
  if (!tx_waits_for_rx_ || orphan_rsts_.full()) return;
  tx_waits_for_rx_ = false;
  schedule_tx();
}

// ---------------------------------------------------------------------------
// Connection table and lifecycle

MuxConnection* Muxer::Impl::find(uint64_t key) {
  auto it = connections_.find(key);
  return it == connections_.end() ? nullptr : it->second.get();
}

MuxConnection& Muxer::Impl::insert(std::unique_ptr<MuxConnection> owned) {
  MuxConnection& mc = *owned;
  const uint64_t key = connection_key(mc.conn.local_port(), mc.conn.peer_port());
  if (MuxConnection* old = find(key)) erase(*old);  // callers check first; belt and braces
  ++local_ports_in_use_[mc.conn.local_port()];
  connections_.emplace(key, std::move(owned));
  stats_.connections_active = connections_.size();
  return mc;
}

void Muxer::Impl::erase(MuxConnection& mc) {
  if (mc.timer != 0) loop_.cancel_timer(mc.timer);
  const uint32_t local = mc.conn.local_port();
  const uint32_t peer = mc.conn.peer_port();
  if (mc.was_established) log_info("local={} peer={} connection closed", local, peer);
  auto port = local_ports_in_use_.find(local);
  if (port != local_ports_in_use_.end() && --port->second == 0) local_ports_in_use_.erase(port);
  connections_.erase(connection_key(local, peer));  // destroys mc, closing its host socket
  stats_.connections_active = connections_.size();
}

void Muxer::Impl::watch(MuxConnection& mc) {
  const uint64_t key = connection_key(mc.conn.local_port(), mc.conn.peer_port());
  const uint64_t id = mc.id;
  try {
    mc.conn.watch_host([this, key, id](HostEvents events) { on_host_event(key, id, events); });
  } catch (const std::exception& error) {
    // epoll refused the socket (out of memory or watches): this connection cannot work.
    spdlog::error("cid={} local={} peer={} cannot watch host socket: {}", options_.guest_cid, mc.conn.local_port(),
                  mc.conn.peer_port(), error.what());
    mc.conn.reset();
  }
}

bool Muxer::Impl::after_change(MuxConnection& mc, ConnectionState before) {
  const ConnectionState now = mc.conn.state();
  if (now == ConnectionState::kForgotten) {
    if (before == ConnectionState::kAwaitingResponse) ++stats_.handshake_failures;
    erase(mc);
    return false;
  }
  if (now != before) {
    if (before == ConnectionState::kAwaitingResponse) {
      if (now == ConnectionState::kEstablished) {
        mc.was_established = true;
        ++stats_.connections_opened;
        log_info("local={} peer={} host connection established", mc.conn.local_port(), mc.conn.peer_port());
      } else {
        ++stats_.handshake_failures;
      }
    }
    start_state_timer(mc);
  }
  if (mc.conn.wants_to_send_data()) {
    if (mc.conn.peer_credit() > 0) {
      data_list_.push_back(mc.data_hook);
      schedule_rx();
    } else {
      // Not queued: a connection without guest credit would spin the RX pass
      // until the guest's next CREDIT_UPDATE, which re-runs this function.
      mc.conn.note_credit_starved();
    }
  }
  if (mc.conn.pending_control() != 0) {
    control_list_.push_back(mc.control_hook);
    schedule_rx();
  }
  return true;
}

void Muxer::Impl::start_state_timer(MuxConnection& mc) {
  if (mc.timer != 0) {
    loop_.cancel_timer(mc.timer);
    mc.timer = 0;
  }
  std::chrono::milliseconds delay{0};
  switch (mc.conn.state()) {
    case ConnectionState::kAwaitingResponse:
      delay = options_.limits.request_timeout;
      break;
    case ConnectionState::kClosingAfterFlush:
      mc.flush_backlog = mc.conn.host_backlog();
      delay = options_.limits.shutdown_timeout;
      break;
    case ConnectionState::kAwaitingGuestRst:
      delay = options_.limits.shutdown_timeout;
      break;
    default:
      return;
  }
  const uint64_t key = connection_key(mc.conn.local_port(), mc.conn.peer_port());
  mc.timer = loop_.add_timer(delay, [this, key, id = mc.id, alive = std::weak_ptr<bool>(alive_)] {
    if (!alive.expired()) on_state_timer(key, id);
  });
}

void Muxer::Impl::on_state_timer(uint64_t key, uint64_t id) {
  MuxConnection* mc = find(key);
  if (mc == nullptr || mc->id != id) return;
  mc->timer = 0;
  const ConnectionState before = mc->conn.state();
  switch (before) {
    case ConnectionState::kAwaitingResponse:
      log_info("local={} peer={} guest did not answer our REQUEST in {} ms", mc->conn.local_port(),
               mc->conn.peer_port(), options_.limits.request_timeout.count());
      mc->conn.reset();
      break;
    case ConnectionState::kClosingAfterFlush:
      // The timeout is for a host that stopped reading, not a slow one: the
      // host never sees a truncated stream while it keeps reading.
      if (mc->conn.host_backlog() < mc->flush_backlog) {
        start_state_timer(*mc);
        return;
      }
      log_info("local={} peer={} host read none of the last {} bytes in {} ms; closing", mc->conn.local_port(),
               mc->conn.peer_port(), mc->conn.tx_buffered_bytes(), options_.limits.shutdown_timeout.count());
      mc->conn.reset();
      break;
    case ConnectionState::kAwaitingGuestRst:
      spdlog::debug("cid={} local={} peer={} guest did not RST after SHUTDOWN; forgetting", options_.guest_cid,
                    mc->conn.local_port(), mc->conn.peer_port());
      mc->conn.reset();
      break;
    default:
      return;
  }
  after_change(*mc, before);
}

void Muxer::Impl::on_host_event(uint64_t key, uint64_t id, HostEvents events) {
  MuxConnection* mc = find(key);
  if (mc == nullptr || mc->id != id) return;
  const ConnectionState before = mc->conn.state();
  mc->conn.on_host_events(events);
  after_change(*mc, before);
}

}  // namespace vhost_vsock::vsock
