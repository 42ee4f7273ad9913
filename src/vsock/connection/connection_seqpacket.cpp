// The SOCK_SEQPACKET half of Connection: message boundaries in both
// directions. Guest -> host, a message's RW packets are collected up to the
// one with VIRTIO_VSOCK_SEQ_EOM and sent with one sendmsg (straight from guest
// memory when the message is one packet and nothing waits before it). Host ->
// guest, the next message is sized with a peek, so the pump can wait until the
// guest's credit and RX buffers hold all of it.
#include <algorithm>
#include <climits>
#include <limits>

#include "vsock/connection/connection.h"

namespace vhost_vsock::vsock {
namespace {

// Clips the (at most two) iovecs to their first `bytes` bytes; returns how many are left.
size_t clip_iovecs(iovec (&iov)[2], size_t count, size_t bytes) {
  size_t kept = 0;
  for (size_t i = 0; i < count; ++i) {
    iov[i].iov_len = std::min(iov[i].iov_len, bytes);
    bytes -= iov[i].iov_len;
    if (iov[i].iov_len > 0) kept = i + 1;
  }
  return kept;
}

}  // namespace

void Connection::drop_tx_bytes() {
  tx_buffer_.clear();
  uncounted_front_bytes_ = 0;
  tx_messages_.clear();
  partial_message_bytes_ = 0;
  release_unneeded();
}

GuestPacketVerdict Connection::accept_message_part(std::span<const iovec> payload, uint32_t len, bool ends_message) {
  // Fast path: a one-packet message with nothing queued before it goes out
  // from guest memory, like stream data.
  if (ends_message && tx_buffer_.empty() && host_writable_ && payload.size() <= IOV_MAX) {
    const HostEndpoint::SendResult result = host_->send(payload);
    switch (result.status) {
      case HostEndpoint::SendStatus::kOk:
        after_forwarded(len);
        return GuestPacketVerdict::kOk;
      case HostEndpoint::SendStatus::kGone:
        on_host_write_closed();
        return GuestPacketVerdict::kOk;
      case HostEndpoint::SendStatus::kRefused:
        reset();
        return GuestPacketVerdict::kMessageRefused;
      case HostEndpoint::SendStatus::kWouldBlock:
        host_writable_ = false;
        break;  // buffered below
    }
  }
  if (ends_message && tx_messages_.size() >= kMaxBufferedMessages) {
    reset();
    return GuestPacketVerdict::kTooManyMessages;
  }
  // Cannot fall short: credit bounds the guest bytes held here by buf_alloc
  // (fwd_cnt moves only when a whole message reached the host).
  size_tx_buffer();
  tx_buffer_.append(payload, 0, len);
  partial_message_bytes_ += len;
  if (!ends_message) {
    advertise_if_guest_out_of_credit();
    return GuestPacketVerdict::kOk;
  }
  tx_messages_.push_back(partial_message_bytes_);
  partial_message_bytes_ = 0;
  if (host_writable_) flush_tx();
  return GuestPacketVerdict::kOk;
}

void Connection::flush_tx_messages() {
  while (!tx_messages_.empty() && host_writable_ && host_->is_open()) {
    const uint32_t message = tx_messages_.front();
    iovec iov[2];
    const size_t count = clip_iovecs(iov, tx_buffer_.readable_iovecs(iov), message);
    const HostEndpoint::SendResult result = host_->send(std::span<const iovec>(iov, count));
    if (result.status == HostEndpoint::SendStatus::kWouldBlock) {
      host_writable_ = false;
      return;
    }
    if (result.status == HostEndpoint::SendStatus::kGone) {
      on_host_write_closed();
      return;
    }
    if (result.status == HostEndpoint::SendStatus::kRefused) {
      reset();
      return;
    }
    tx_messages_.pop_front();
    const size_t uncounted = std::min<size_t>(message, uncounted_front_bytes_);
    uncounted_front_bytes_ -= uncounted;
    tx_buffer_.consume(message);
    if (message > uncounted) after_forwarded(static_cast<uint32_t>(message - uncounted));
  }
}

std::optional<uint32_t> Connection::next_host_message() {
  if (next_message_bytes_.has_value() || !wants_to_send_data()) return next_message_bytes_;
  const HostEndpoint::ReceiveResult result = host_->peek_message_size();
  switch (result.status) {
    case HostEndpoint::ReceiveStatus::kData:
      next_message_bytes_ = static_cast<uint32_t>(std::min<size_t>(result.bytes, std::numeric_limits<uint32_t>::max()));
      break;
    case HostEndpoint::ReceiveStatus::kWouldBlock:
      host_readable_ = false;
      break;
    case HostEndpoint::ReceiveStatus::kEof:
      on_host_eof();
      break;
    case HostEndpoint::ReceiveStatus::kError:
      on_host_fully_closed();
      break;
  }
  return next_message_bytes_;
}

}  // namespace vhost_vsock::vsock
