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
  connections_.for_each([this](RoutedConnection& connection) {
    timers_.cancel(connection);
    if (connection.was_established) {
      log_info("local={} peer={} connection reset (guest driver gone)", connection.conn.local_port(),
               connection.conn.peer_port());
    }
  });
  connections_.clear();  // closes every host socket
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
    if (RoutedConnection* connection = find_for(header)) {
      mutate(*connection, [](Connection& conn) { conn.reset(); });
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
  RoutedConnection* connection = find_for(header);
  if (!is_known_op(header.op)) {
    ++stats_.dropped_malformed;
    warn_guest("unknown op: {}", describe(header));
    if (connection != nullptr) {
      mutate(*connection, [](Connection& conn) { conn.reset(); });
    } else {
      reply_rst(header);
    }
    return;
  }
  if (connection == nullptr) {
    if (op == Op::kRequest) {
      handle_guest_connect(header);
    } else if (op != Op::kRst) {
      reply_rst(header);  // never answer an orphan RST: it could reset a reused port pair
    }
    return;
  }
  mutate(*connection, [&](Connection& conn) {
    const ConnectionState before = conn.state();
    count_guest_verdict(*connection, header, before, conn.on_guest_packet(header, payload));
  });
}

void Muxer::Impl::count_guest_verdict(const RoutedConnection& connection, const PacketHeader& header,
                                      ConnectionState before, GuestPacketVerdict verdict) {
  const Connection& conn = connection.conn;
  switch (verdict) {
    case GuestPacketVerdict::kOk:
      if (header.operation() == Op::kRw && before == ConnectionState::kEstablished) {
        stats_.bytes_from_guest += header.len;
      }
      break;
    case GuestPacketVerdict::kCreditViolation:
      ++stats_.credit_violations;
      warn_guest("local={} peer={} credit violation: len={} beyond credit (buf_alloc={} rx_cnt={} fwd_cnt={})",
                 conn.local_port(), conn.peer_port(), header.len, conn.buf_alloc(), conn.rx_cnt(), conn.fwd_cnt());
      break;
    case GuestPacketVerdict::kProtocolViolation:
      ++stats_.protocol_violations;
      warn_guest("local={} peer={} {} not valid in state {}", conn.local_port(), conn.peer_port(), op_name(header.op),
                 to_string(before));
      break;
    case GuestPacketVerdict::kHostGone:
      spdlog::debug("cid={} local={} peer={} data for a closed host socket; resetting", options_.guest_cid,
                    conn.local_port(), conn.peer_port());
      break;
  }
}

void Muxer::Impl::handle_guest_connect(const PacketHeader& header) {
  const uint32_t port = header.dst_port;
  if (!connections_.has_room(pending_host_peers())) {
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
  RoutedConnection& connection = insert(std::make_unique<RoutedConnection>(
      params, std::move(dialed.endpoint), ConnectionState::kEstablished, next_connection_id_++));
  connection.was_established = true;
  ++stats_.connections_opened;
  log_info("local={} peer={} guest connection established", port, header.src_port);
  mutate(connection, [&](Connection& conn) {
    conn.update_peer_credit(header.buf_alloc, header.fwd_cnt);
    conn.accept_connect();
    watch(connection);
  });
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

RoutedConnection* Muxer::Impl::find_for(const PacketHeader& from_guest) const {
  return connections_.find({options_.guest_cid, from_guest.dst_port, from_guest.src_port});
}

RoutedConnection& Muxer::Impl::insert(std::unique_ptr<RoutedConnection> owned) {
  if (RoutedConnection* old = connections_.find(owned->key())) erase(*old);  // callers check first
  RoutedConnection& connection = connections_.insert(std::move(owned));
  stats_.connections_active = connections_.size();
  return connection;
}

void Muxer::Impl::erase(RoutedConnection& connection) {
  timers_.cancel(connection);
  if (connection.was_established) {
    log_info("local={} peer={} connection closed", connection.conn.local_port(), connection.conn.peer_port());
  }
  connections_.erase(connection);  // destroys it, closing its host socket
  stats_.connections_active = connections_.size();
}

void Muxer::Impl::watch(RoutedConnection& connection) {
  Connection& conn = connection.conn;
  try {
    conn.watch_host(
        [this, key = connection.key(), id = connection.id](HostEvents events) { on_host_event(key, id, events); });
  } catch (const std::exception& error) {
    // epoll refused the socket (out of memory or watches): this connection cannot work.
    spdlog::error("cid={} local={} peer={} cannot watch host socket: {}", options_.guest_cid, conn.local_port(),
                  conn.peer_port(), error.what());
    conn.reset();
  }
}

bool Muxer::Impl::settle(RoutedConnection& connection, ConnectionState before) {
  Connection& conn = connection.conn;
  const ConnectionState now = conn.state();
  if (now == ConnectionState::kForgotten) {
    if (before == ConnectionState::kAwaitingResponse) ++stats_.handshake_failures;
    erase(connection);
    return false;
  }
  if (now != before) {
    if (before == ConnectionState::kAwaitingResponse) {
      if (now == ConnectionState::kEstablished) {
        connection.was_established = true;
        ++stats_.connections_opened;
        log_info("local={} peer={} host connection established", conn.local_port(), conn.peer_port());
      } else {
        ++stats_.handshake_failures;
      }
    }
    timers_.arm_for_state(connection);
  }
  if (conn.wants_to_send_data()) {
    if (conn.peer_credit() > 0) {
      data_list_.push_back(connection.data_hook);
      schedule_rx();
    } else {
      // Not queued: a connection without guest credit would spin the RX pass
      // until the guest's next CREDIT_UPDATE, which settles it again.
      conn.note_credit_starved();
    }
  }
  if (conn.pending_control() != 0) {
    control_list_.push_back(connection.control_hook);
    schedule_rx();
  }
  return true;
}

void Muxer::Impl::on_timer_expired(RoutedConnection& connection) {
  const Connection& conn = connection.conn;
  const ConnectionTimers::Durations& durations = timers_.durations();
  switch (conn.state()) {
    case ConnectionState::kAwaitingResponse:
      log_info("local={} peer={} guest did not answer our REQUEST in {} ms", conn.local_port(), conn.peer_port(),
               durations.request_timeout.count());
      break;
    case ConnectionState::kClosingAfterFlush:
      // The timeout is for a host that stopped reading, not a slow one: the
      // host never sees a truncated stream while it keeps reading.
      if (conn.host_backlog() < connection.flush_backlog) {
        timers_.arm_for_state(connection);
        return;
      }
      log_info("local={} peer={} host read none of the last {} bytes in {} ms; closing", conn.local_port(),
               conn.peer_port(), conn.tx_buffered_bytes(), durations.shutdown_timeout.count());
      break;
    case ConnectionState::kAwaitingGuestRst:
      spdlog::debug("cid={} local={} peer={} guest did not RST after SHUTDOWN; forgetting", options_.guest_cid,
                    conn.local_port(), conn.peer_port());
      break;
    default:
      return;
  }
  mutate(connection, [](Connection& expired) { expired.reset(); });
}

void Muxer::Impl::on_host_event(const ConnectionKey& key, uint64_t id, HostEvents events) {
  RoutedConnection* connection = connections_.find(key);
  if (connection == nullptr || connection->id != id) return;
  mutate(*connection, [events](Connection& conn) { conn.on_host_events(events); });
}

}  // namespace vhost_vsock::vsock
