// RX scheduling: control packets first (per-connection flags, then RSTs for
// unknown connections), then host data round-robin across connections, many
// RX chains filled per readv. Used entries are published once per pass.
#include <climits>

#include "vsock/muxer/muxer_impl.h"

namespace vhost_vsock::vsock {
namespace {

// Fairness: bytes one connection may move per turn before the next one's turn.
constexpr size_t kDataQuantum = 64 * 1024;
// Turns per pass before yielding to the event loop (a guest that refills its
// RX ring as fast as we fill it must not starve TX and other events).
constexpr size_t kMaxTurnsPerPass = 256;

}  // namespace

void Muxer::Impl::schedule_rx() {
  rx_task_.schedule();
}

// Pops the next chain that can hold at least a header; chains too small are
// returned to the guest with length 0.
bool Muxer::Impl::acquire_rx_chain(virtio::Queue& queue, virtio::DescriptorChain& chain) {
  for (size_t i = 0; i <= queue.size(); ++i) {
    const virtio::PopStatus status = queue.pop(chain);
    if (status == virtio::PopStatus::kEmpty || status == virtio::PopStatus::kBroken) return false;
    if (status == virtio::PopStatus::kInvalidChain) {
      ++stats_.dropped_malformed;
      rx_used_any_ = true;  // the queue returned it: the guest may need an interrupt
      continue;
    }
    if (chain.writable_bytes() >= kHeaderSize) return true;
    queue.add_used(chain.head_index(), 0);
    rx_used_any_ = true;
    ++stats_.rx_chains_too_small;
  }
  return false;
}

bool Muxer::Impl::put_control(virtio::Queue& queue, const PacketHeader& header) {
  // The caller acquired the chain into rx_chains_[0].
  write_rx_header(rx_chains_[0].writable(), header);
  queue.add_used(rx_chains_[0].head_index(), static_cast<uint32_t>(kHeaderSize));
  rx_used_any_ = true;
  ++stats_.packets_to_guest;
  if (header.operation() == Op::kRst) ++stats_.resets_sent;
  return true;
}

void Muxer::Impl::process_rx() {
  virtio::Queue* queue = queues_[kRxQueue].queue;
  if (queue == nullptr || !queue->configured() || queue->broken()) return;
  ++stats_.rx_passes;
  rx_used_any_ = false;
  bool rx_empty = false;
  bool yielded = false;
  size_t turns = 0;
  // Chains that do not fit a turn are given back and walked again later, so
  // the walk, not the turn count, is what bounds a pass.
  const uint64_t walk_limit = queue->stats().descriptors_walked + walk_budget(*queue);
  auto out_of_budget = [&] { return queue->stats().descriptors_walked >= walk_limit; };
  // A chain for one control packet into rx_chains_[0], or the reason to stop.
  auto take_control_chain = [&] {
    if (out_of_budget()) {
      yielded = true;
    } else if (!acquire_rx_chain(*queue, rx_chains_[0])) {
      rx_empty = true;
    }
    return !yielded && !rx_empty;
  };

  while (!rx_empty && !yielded) {
    // 1. Control packets owed by live connections.
    while (!rx_empty && !control_list_.empty()) {
      RoutedConnection* connection = control_list_.front();
      if (connection->conn.pending_control() == 0) {
        control_list_.pop_front();
        continue;
      }
      if (connection->conn.pending_control() == control::kCreditUpdate && connection->conn.wants_to_send_data() &&
          connection->conn.peer_credit() > 0) {
        // A data packet is about to carry the same credit: let it. If no data
        // comes out after all, settle() puts the update back here.
        control_list_.pop_front();
        data_list_.push_back(connection->data_hook);
        continue;
      }
      if (!take_control_chain()) break;
      mutate(*connection, [&](Connection& conn) {
        put_control(*queue, *conn.take_control_packet());
        if (conn.pending_control() == 0) control_list_.pop_front();
      });
    }
    // 2. RSTs for packets that matched no connection.
    while (!rx_empty && !yielded && !orphan_rsts_.empty()) {
      if (!take_control_chain()) break;
      put_control(*queue, orphan_rsts_.front());
      orphan_rsts_.pop();
    }
    wake_tx_if_waiting();
    if (rx_empty || yielded) break;
    // 3. Data, one quantum per connection per turn.
    if (data_list_.empty()) break;
    if (turns >= kMaxTurnsPerPass || out_of_budget()) {
      yielded = true;
      break;
    }
    ++turns;
    RoutedConnection* connection = data_list_.pop_front();
    if (!connection->conn.wants_to_send_data()) continue;
    DataTurn turn = DataTurn::kDone;
    // Settling re-queues it behind the others if it still has data and credit.
    mutate(*connection, [&](Connection&) {
      turn = serve_data(*queue, *connection);
      return turn != DataTurn::kRxEmpty;  // nothing read: it keeps its place below
    });
    if (turn == DataTurn::kRxEmpty) {
      rx_empty = true;
      data_list_.push_back(connection->data_hook);  // keep its place for the next RX kick
    }
  }

  if (rx_used_any_) queue->notify();
  if (rx_empty) {
    // Out of buffers: ask the guest to kick when it adds some (with
    // EVENT_IDX this moves avail_event), then close the race with a re-check.
    queue->enable_notifications();
    if (queue->has_available()) schedule_rx();
  }
  // Work left with buffers still available: finish it after other events.
  if (yielded) schedule_rx();
}

Muxer::Impl::DataTurn Muxer::Impl::serve_data(virtio::Queue& queue, RoutedConnection& connection) {
  Connection& conn = connection.conn;
  const uint32_t credit = conn.peer_credit();
  if (credit == 0) {
    conn.note_credit_starved();
    return DataTurn::kDone;  // the guest's next credit update puts it back
  }
  const size_t budget = std::min<size_t>(credit, kDataQuantum);
  size_t popped = 0;
  size_t capacity = 0;
  bool can_unpop = true;  // false once the queue itself consumed an invalid chain after ours
  rx_iovecs_.clear();
  // Chains skipped below are bounded too: a guest posting unusable chains as
  // fast as we return them must not keep us here.
  size_t examined = 0;
  while (capacity < budget && popped < kMaxRxBatch && rx_iovecs_.size() < IOV_MAX && examined++ <= queue.size()) {
    virtio::DescriptorChain& chain = rx_chains_[popped];
    const virtio::PopStatus status = queue.pop(chain);
    if (status == virtio::PopStatus::kEmpty || status == virtio::PopStatus::kBroken) break;
    if (status == virtio::PopStatus::kInvalidChain) {
      ++stats_.dropped_malformed;
      rx_used_any_ = true;
      if (popped > 0) {
        can_unpop = false;
        break;
      }
      continue;
    }
    const size_t chain_room = rx_payload_capacity(chain.writable_bytes());
    if (chain_room == 0) {
      // Cannot carry data (maybe not even a header). Give it back for a later
      // control packet if it is not first; otherwise return it empty.
      if (popped > 0) {
        queue.unpop(1);
        break;
      }
      queue.add_used(chain.head_index(), 0);
      rx_used_any_ = true;
      ++stats_.rx_chains_too_small;
      continue;
    }
    const size_t iovecs_before = rx_iovecs_.size();
    const size_t bytes_before = capacity;
    rx_payload_area(chain.writable(), std::min(chain_room, budget - capacity), rx_iovecs_);
    if (rx_iovecs_.size() > IOV_MAX) {
      // A chain of many tiny buffers: keep what fits in one readv.
      size_t keep = 0;
      for (size_t i = 0; i < IOV_MAX; ++i) keep += rx_iovecs_[i].iov_len;
      rx_iovecs_.clip(keep);
    }
    const size_t chain_bytes = rx_iovecs_.total_bytes() - bytes_before;
    if (chain_bytes == 0 || rx_iovecs_.size() == iovecs_before) {
      queue.unpop(1);
      break;
    }
    rx_chain_capacity_[popped] = chain_bytes;
    capacity += chain_bytes;
    ++popped;
  }
  if (popped == 0) return DataTurn::kRxEmpty;

  size_t got = 0;
  const Connection::ReadStatus status = conn.read_from_host(rx_iovecs_.span(), got);
  size_t used_chains = 0;
  if (status == Connection::ReadStatus::kData) {
    size_t left = got;
    while (left > 0 && used_chains < popped) {
      const size_t take = std::min(left, rx_chain_capacity_[used_chains]);
      const auto& chain = rx_chains_[used_chains];
      write_rx_header(chain.writable(), conn.make_header(Op::kRw, static_cast<uint32_t>(take)));
      queue.add_used(chain.head_index(), static_cast<uint32_t>(kHeaderSize + take));
      rx_used_any_ = true;
      conn.record_sent_to_guest(static_cast<uint32_t>(take));
      ++stats_.packets_to_guest;
      stats_.bytes_to_guest += take;
      left -= take;
      ++used_chains;
    }
  }
  const size_t unused = popped - used_chains;
  if (unused > 0) {
    if (can_unpop) {
      queue.unpop(static_cast<uint16_t>(unused));
    } else {
      // Cannot rewind past the invalid chain the queue consumed: return these
      // empty (Linux drops short RX buffers and refills its ring).
      for (size_t i = used_chains; i < popped; ++i) queue.add_used(rx_chains_[i].head_index(), 0);
      rx_used_any_ = true;
      stats_.rx_chains_too_small += unused;
    }
  }
  return status == Connection::ReadStatus::kData ? DataTurn::kMore : DataTurn::kDone;
}

}  // namespace vhost_vsock::vsock
