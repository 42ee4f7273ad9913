#include "vsock/pump/queue_pump.h"

#include <climits>

namespace vhost_vsock::vsock {
namespace {

constexpr int kMaxTxRounds = 4;
// Fairness: bytes one connection may move per turn before the next one's turn.
constexpr size_t kDataQuantum = size_t{64} * 1024;
// Turns per pass before yielding to the event loop (a guest that refills its
// RX ring as fast as we fill it must not starve TX and other events).
constexpr size_t kMaxTurnsPerPass = 256;

}  // namespace

QueuePump::QueuePump(base::EventLoop& loop, Router& router, MuxerStats& stats)
    : loop_(loop),
      router_(router),
      stats_(stats),
      rx_task_(loop, [this] { process_rx(); }),
      tx_task_(loop, [this] { process_tx(); }),
      rx_chains_(kMaxRxBatch) {
  rx_iovecs_.reserve(IOV_MAX);
}

void QueuePump::attach(uint16_t index, virtio::Queue& queue) {
  if (index >= queues_.size()) return;
  queues_[index] = &queue;
  queue.enable_notifications();
  (index == kTxQueue ? poll_.tx_kicks_suppressed : poll_.rx_kicks_suppressed) = false;
  // Work may have piled up while the queue was away.
  if (index == kRxQueue) schedule_rx();
  if (index == kTxQueue) schedule_tx();
}

void QueuePump::detach(uint16_t index) {
  if (index == kTxQueue) call_tx_if_owed();  // its used entries are already published
  if (index < queues_.size()) queues_[index] = nullptr;
}

void QueuePump::on_kick(uint16_t index) {
  if (index == kTxQueue) {
    process_tx();
  } else if (index == kRxQueue) {
    schedule_rx();
  }
}

// ---------------------------------------------------------------------------
// TX: guest -> router

void QueuePump::process_tx() {
  virtio::Queue* queue = running_queue(kTxQueue);
  if (queue == nullptr) return;
  ++stats_.tx_passes;
  bool used_any = false;
  const uint64_t walk_limit = queue->stats().descriptors_walked + walk_budget(*queue);
  for (int round = 0; round < kMaxTxRounds; ++round) {
    queue->disable_notifications();
    const TxRound result = drain_tx_round(*queue, walk_limit, used_any);
    if (result == TxRound::kDetached) return;  // detached underneath us (not expected)
    if (result == TxRound::kOutOfBudget) {
      schedule_tx();  // notifications stay off: the next pass comes by itself
      break;
    }
    if (result == TxRound::kBackpressure) break;  // notifications stay off: the router's Wakeups::tx resumes
    if (poll_.polling) break;                     // kicks stay suppressed: the busy poll watches the ring
    queue->enable_notifications();
    if (queue->broken() || !queue->has_available()) break;
    if (round + 1 == kMaxTxRounds) schedule_tx();  // the guest keeps adding: yield, come back
  }
  // Published now, called with the RX pass that follows (scheduled below), so
  // that a guest woken by either interrupt finds both rings up to date and
  // the guest we wake does not preempt us between two halves of one batch.
  if (used_any) {
    queue->flush_used();
    tx_call_owed_ = true;
  }
  note_pass(used_any);
  schedule_rx();
}

QueuePump::TxRound QueuePump::drain_tx_round(virtio::Queue& queue, uint64_t walk_limit, bool& used_any) {
  const TxRound result = route_tx_chains(queue, walk_limit, used_any);
  // The router may still hold payloads of these chains for one write per
  // connection: they go out before the guest may reuse the buffers.
  router_.flush_gathered();
  for (const uint16_t id : routed_chains_) queue.add_used(id, 0);
  routed_chains_.clear();
  return result;
}

QueuePump::TxRound QueuePump::route_tx_chains(virtio::Queue& queue, uint64_t walk_limit, bool& used_any) {
  // Looked up once: neither the size nor where the stats live changes under the router.
  const size_t size = queue.size();
  const virtio::QueueStats& stats = queue.stats();
  for (size_t i = 0; i < size; ++i) {
    if (stats.descriptors_walked >= walk_limit) return TxRound::kOutOfBudget;
    // The chain stays in the avail ring until the router has room for a reply.
    if (!router_.ready_for_guest_packet()) return TxRound::kBackpressure;
    const virtio::PopStatus status = queue.pop(tx_chain_);
    if (status == virtio::PopStatus::kEmpty || status == virtio::PopStatus::kBroken) return TxRound::kDrained;
    used_any = true;  // an invalid chain was already returned by the queue
    if (status == virtio::PopStatus::kInvalidChain) {
      router_.note_invalid_tx_chain();
      continue;
    }
    if (!router_.route_guest_packet(tx_chain_.readable(), tx_chain_.readable_bytes())) {
      queue.unpop(1);  // a sibling's channel is full: the packet waits in the ring
      return TxRound::kBackpressure;
    }
    routed_chains_.push_back(tx_chain_.id());
    if (queues_[kTxQueue] != &queue) return TxRound::kDetached;
  }
  return TxRound::kDrained;
}

// ---------------------------------------------------------------------------
// RX: router -> guest

void QueuePump::process_rx() {
  virtio::Queue* queue = running_queue(kRxQueue);
  if (queue == nullptr) {
    call_tx_if_owed();
    return;
  }
  ++stats_.rx_passes;
  rx_used_any_ = false;
  // Chains that do not fit a turn are given back and walked again later, so
  // the walk, not the turn count, is what bounds a pass.
  RxPass pass{*queue, queue->stats().descriptors_walked + walk_budget(*queue)};
  while (!pass.rx_empty && !pass.yielded) {
    send_control_packets(pass);
    if (pass.rx_empty || pass.yielded) break;
    // Packets from sibling VMs, a batch per turn, between the host's data turns.
    const bool more_from_siblings = deliver_sibling_packets(pass);
    if (pass.rx_empty || pass.yielded) break;
    // Data, one quantum per connection per turn.
    if (!router_.has_data() && !more_from_siblings) break;
    if (pass.turns >= kMaxTurnsPerPass || pass.out_of_budget()) {
      pass.yielded = true;
      break;
    }
    ++pass.turns;
    if (!router_.has_data()) continue;
    const bool served =
        router_.serve_next_data([&](Connection& conn) { return serve_data(*queue, conn) != DataTurn::kRxEmpty; });
    if (!served) pass.rx_empty = true;
  }
  finish_rx_pass(pass);
}

void QueuePump::send_control_packets(RxPass& pass) {
  while (router_.has_control_packet()) {
    if (!take_control_chain(pass)) return;
    router_.send_control_packet([&](const PacketHeader& header) { put_control(pass.queue, header); });
  }
}

// A chain for one control packet into rx_chains_[0], or the reason to stop.
bool QueuePump::take_control_chain(RxPass& pass) {
  if (pass.out_of_budget()) {
    pass.yielded = true;
    return false;
  }
  if (!acquire_rx_chain(pass.queue, rx_chains_[0])) {
    pass.rx_empty = true;
    return false;
  }
  return true;
}

void QueuePump::call_tx_if_owed() {
  if (!tx_call_owed_) return;
  tx_call_owed_ = false;
  if (virtio::Queue* tx = running_queue(kTxQueue)) tx->notify();
}

void QueuePump::finish_rx_pass(RxPass& pass) {
  if (rx_used_any_) pass.queue.notify();
  call_tx_if_owed();
  note_pass(rx_used_any_);
  rx_starved_ = pass.rx_empty;
  if (pass.rx_empty && !poll_.polling) {  // while polling, the busy poll watches the ring
    // Out of buffers: ask the guest to kick when it adds some (with
    // EVENT_IDX this moves avail_event), then close the race with a re-check.
    pass.queue.enable_notifications();
    if (pass.queue.has_available()) schedule_rx();
  }
  // Work left with buffers still available: finish it after other events.
  if (pass.yielded) schedule_rx();
}

// Pops the next chain that can hold at least a header; chains too small are
// returned to the guest with length 0.
bool QueuePump::acquire_rx_chain(virtio::Queue& queue, virtio::DescriptorChain& chain) {
  for (size_t i = 0; i <= queue.size(); ++i) {
    const virtio::PopStatus status = queue.pop(chain);
    if (status == virtio::PopStatus::kEmpty || status == virtio::PopStatus::kBroken) return false;
    if (status == virtio::PopStatus::kInvalidChain) {
      ++stats_.dropped_malformed;
      rx_used_any_ = true;  // the queue returned it: the guest may need an interrupt
      continue;
    }
    if (chain.writable_bytes() >= kHeaderSize) return true;
    queue.add_used(chain.id(), 0);
    rx_used_any_ = true;
    ++stats_.rx_chains_too_small;
  }
  return false;
}

void QueuePump::put_control(virtio::Queue& queue, const PacketHeader& header) {
  // The caller acquired the chain into rx_chains_[0].
  write_rx_header(rx_chains_[0].writable(), header);
  queue.add_used(rx_chains_[0].id(), static_cast<uint32_t>(kHeaderSize));
  rx_used_any_ = true;
  ++stats_.packets_to_guest;
  if (header.operation() == Op::kRst) ++stats_.resets_sent;
  if (header.operation() == Op::kCreditRequest) ++stats_.credit_requests;
}

QueuePump::DataTurn QueuePump::serve_data(virtio::Queue& queue, Connection& conn) {
  if (conn.is_seqpacket()) return serve_message(queue, conn);
  const uint32_t credit = conn.sendable_to_guest();
  if (credit == 0) return DataTurn::kDone;  // not re-queued: see Connection::sendable_to_guest()
  // The quantum (fairness) may end past it, at a chain's end; credit may not.
  const RxBatch batch = reserve_rx_chains(queue, credit, std::min<size_t>(credit, kDataQuantum));
  if (batch.popped == 0) return DataTurn::kRxEmpty;
  size_t got = 0;
  const Connection::ReadStatus status = conn.read_from_host(rx_iovecs_.span(), got);
  const size_t used_chains =
      status == Connection::ReadStatus::kData ? complete_rx_chains(queue, conn, got, batch.popped) : 0;
  return_unused_rx_chains(queue, batch, used_chains);
  return status == Connection::ReadStatus::kData ? DataTurn::kMore : DataTurn::kDone;
}

// Pops RX chains until they hold `target` payload bytes, never more than
// `limit`, and maps their payload areas into rx_iovecs_ (one readv). With
// `target` below `limit` the last chain is filled whole (up to `target`
// bytes from any one chain): Linux posts RX buffers of 3,732 payload bytes,
// and a quantum cut mid-buffer would cost the guest a short packet for every
// quantum.
QueuePump::RxBatch QueuePump::reserve_rx_chains(virtio::Queue& queue, size_t limit, size_t target) {
  RxBatch batch;
  rx_iovecs_.clear();
  // Chains skipped below are bounded too: a guest posting unusable chains as
  // fast as we return them must not keep us here.
  size_t examined = 0;
  while (batch.capacity < target && batch.popped < kMaxRxBatch && rx_iovecs_.size() < IOV_MAX &&
         examined++ <= queue.size()) {
    virtio::DescriptorChain& chain = rx_chains_[batch.popped];
    const virtio::PopStatus status = queue.pop(chain);
    if (status == virtio::PopStatus::kEmpty || status == virtio::PopStatus::kBroken) break;
    if (status == virtio::PopStatus::kInvalidChain) {
      ++stats_.dropped_malformed;
      rx_used_any_ = true;
      if (batch.popped > 0) {
        batch.can_unpop = false;
        break;
      }
      continue;
    }
    const size_t chain_room = rx_payload_capacity(chain.writable_bytes());
    if (chain_room == 0) {
      // Cannot carry data (maybe not even a header). Give it back for a later
      // control packet if it is not first; otherwise return it empty.
      if (batch.popped > 0) {
        queue.unpop(1);
        break;
      }
      queue.add_used(chain.id(), 0);
      rx_used_any_ = true;
      ++stats_.rx_chains_too_small;
      continue;
    }
    // At most `target` from one chain: a guest's huge buffer still gets a quantum.
    const size_t chain_bytes = map_rx_payload(chain, std::min({chain_room, limit - batch.capacity, target}));
    if (chain_bytes == 0) {
      queue.unpop(1);
      break;
    }
    rx_chain_capacity_[batch.popped++] = chain_bytes;
    batch.capacity += chain_bytes;
  }
  return batch;
}

// Appends the chain's payload area (at most `limit` bytes) to rx_iovecs_;
// returns the bytes it added, 0 if none fit.
size_t QueuePump::map_rx_payload(const virtio::DescriptorChain& chain, size_t limit) {
  const size_t iovecs_before = rx_iovecs_.size();
  rx_payload_area(chain.writable(), limit, rx_iovecs_);
  if (rx_iovecs_.size() > IOV_MAX) {
    // A chain of many tiny buffers: keep what fits in one readv.
    size_t keep = 0;
    for (size_t i = 0; i < IOV_MAX; ++i) keep += rx_iovecs_[i].iov_len;
    rx_iovecs_.clip(keep);
  }
  // Only the new entries: summing the whole list would make a batch quadratic.
  size_t added = 0;
  for (size_t i = iovecs_before; i < rx_iovecs_.size(); ++i) added += rx_iovecs_[i].iov_len;
  return added;
}

// Splits `got` bytes read into the reserved chains, in order; returns how many it used.
size_t QueuePump::complete_rx_chains(virtio::Queue& queue, Connection& conn, size_t got, size_t popped, bool message) {
  size_t used_chains = 0;
  size_t left = got;
  // A message takes at least one packet, even when empty.
  while ((left > 0 || (message && used_chains == 0)) && used_chains < popped) {
    const size_t take = std::min(left, rx_chain_capacity_[used_chains]);
    const auto& chain = rx_chains_[used_chains];
    const uint32_t flags = message && take == left ? kSeqEom | kSeqEor : 0;
    write_rx_header(chain.writable(), conn.make_header(Op::kRw, static_cast<uint32_t>(take), flags));
    queue.add_used(chain.id(), static_cast<uint32_t>(kHeaderSize + take));
    rx_used_any_ = true;
    conn.record_sent_to_guest(static_cast<uint32_t>(take));
    ++stats_.packets_to_guest;
    stats_.bytes_to_guest += take;
    left -= take;
    ++used_chains;
  }
  return used_chains;
}

void QueuePump::return_unused_rx_chains(virtio::Queue& queue, const RxBatch& batch, size_t used_chains) {
  const size_t unused = batch.popped - used_chains;
  if (unused == 0) return;
  if (batch.can_unpop) {
    queue.unpop(static_cast<uint16_t>(unused));
    return;
  }
  // Cannot rewind past the invalid chain the queue consumed: return these
  // empty (Linux drops short RX buffers and refills its ring).
  for (size_t i = used_chains; i < batch.popped; ++i) queue.add_used(rx_chains_[i].id(), 0);
  rx_used_any_ = true;
  stats_.rx_chains_too_small += unused;
}

}  // namespace vhost_vsock::vsock
