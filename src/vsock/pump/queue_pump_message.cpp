// SOCK_SEQPACKET data turns: the host's next message goes to the guest whole,
// split over RX chains with EOM|EOR on the last packet, or not at all. It
// waits for credit (Connection::sendable_to_guest() already held it back
// until the guest's credit covers the message) and for enough RX buffers
// (the guest's kick brings us back); a message that can never fit the
// guest's buffer resets the connection: never dropped in part, never cut.
#include <spdlog/spdlog.h>

#include <climits>

#include "vsock/pump/queue_pump.h"

namespace vhost_vsock::vsock {

QueuePump::DataTurn QueuePump::serve_message(virtio::Queue& queue, Connection& conn) {
  const std::optional<uint32_t> message = conn.next_host_message();
  if (!message.has_value()) return DataTurn::kDone;  // none waiting (or EOF: the state says so)
  if (*message > conn.peer_buf_alloc()) {
    refuse_message(conn, *message, "larger than the guest's receive buffer");
    return DataTurn::kDone;
  }
  if (conn.sendable_to_guest() == 0) return DataTurn::kDone;  // credit short: the guest's update requeues it
  const RxBatch batch = reserve_message_chains(queue, *message);
  if (batch.popped == 0) return DataTurn::kRxEmpty;
  if (batch.capacity < *message) {
    return_unused_rx_chains(queue, batch, 0);
    // More buffers than one turn may take would be needed: waiting cannot help.
    if (batch.popped == kMaxRxBatch || rx_iovecs_.size() >= IOV_MAX) {
      refuse_message(conn, *message, "more than one turn of RX buffers");
      return DataTurn::kDone;
    }
    return DataTurn::kRxEmpty;  // the guest's next RX kick brings us back
  }
  size_t got = 0;
  const Connection::ReadStatus status = conn.read_from_host(rx_iovecs_.span(), got);
  const size_t used_chains = status == Connection::ReadStatus::kData
                                 ? complete_rx_chains(queue, conn, got, batch.popped, /*message=*/true)
                                 : 0;
  return_unused_rx_chains(queue, batch, used_chains);
  return status == Connection::ReadStatus::kData ? DataTurn::kMore : DataTurn::kDone;
}

// RX chains for exactly `message_bytes` of payload; an empty message takes
// one chain that can hold a header.
QueuePump::RxBatch QueuePump::reserve_message_chains(virtio::Queue& queue, uint32_t message_bytes) {
  if (message_bytes > 0) return reserve_rx_chains(queue, message_bytes, message_bytes);
  RxBatch batch;
  rx_iovecs_.clear();
  if (!acquire_rx_chain(queue, rx_chains_[0])) return batch;
  rx_chain_capacity_[0] = 0;
  batch.popped = 1;
  return batch;
}

void QueuePump::refuse_message(Connection& conn, uint32_t message_bytes, const char* why) {
  ++stats_.messages_refused;
  if (message_log_limiter_.allow()) {
    spdlog::warn(
        "cid={} local={} peer={} host sent a {}-byte seqpacket message, {} ({} bytes); resetting the "
        "connection",
        conn.guest_cid(), conn.local_port(), conn.peer_port(), message_bytes, why, conn.peer_buf_alloc());
  }
  conn.reset();
}

}  // namespace vhost_vsock::vsock
