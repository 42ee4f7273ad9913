// The guest's SOCK_SEQPACKET side (after Linux's virtio_transport_common.c):
// messages assembled from RW packets up to EOM, and sent as RW packets with
// EOM (and EOR) on the last, under the same credit as streams.
#include <algorithm>

#include "testing/vsock_driver_impl.h"

namespace vhost_vsock::testing {

namespace {

using vsock::PacketHeader;

constexpr uint32_t kMessageFlags = vsock::kSeqEom | vsock::kSeqEor;

}  // namespace

void GuestVsockDriver::Impl::receive_message_part(Connection& conn, const PacketHeader& header,
                                                  std::span<const uint8_t> payload) {
  // The device only ever sets EOM, or EOM|EOR on a message's last packet.
  if ((header.flags & ~kMessageFlags) != 0 || header.flags == vsock::kSeqEor) {
    violation("seqpacket RW with flags other than EOM or EOM|EOR: " + vsock::describe(header));
  }
  conn.partial.append(reinterpret_cast<const char*>(payload.data()), payload.size());
  conn.message_bytes += payload.size();
  if ((header.flags & vsock::kSeqEom) == 0) return;
  conn.messages.push_back({std::move(conn.partial), (header.flags & vsock::kSeqEor) != 0});
  conn.partial.clear();
}

vsock::SocketType Stream::type() const {
  if (!conn_) return vsock::SocketType::kStream;
  std::lock_guard lock(driver_->impl_->mu);
  return static_cast<vsock::SocketType>(conn_->type);
}

bool Stream::send_message(std::string_view data, bool eor, Millis timeout) {
  return send_message(std::span(reinterpret_cast<const uint8_t*>(data.data()), data.size()), eor, timeout);
}

bool Stream::send_message(std::span<const uint8_t> data, bool eor, Millis timeout) {
  if (!conn_) return false;
  auto& s = *driver_->impl_;
  Connection& c = *conn_;
  std::unique_lock lock(s.mu);
  if (c.type != static_cast<uint16_t>(vsock::SocketType::kSeqpacket)) return false;
  // Linux: a message the peer's whole buffer cannot hold is EMSGSIZE.
  if (data.size() > c.peer_buf_alloc) return false;
  const uint32_t flags = vsock::kSeqEom | (eor ? vsock::kSeqEor : 0);
  return s.send_data(c, data, true, flags, lock, Clock::now() + timeout);
}

std::optional<std::string> Stream::recv_message(Millis timeout, bool* eor) {
  if (!conn_) return std::nullopt;
  auto& s = *driver_->impl_;
  Connection& c = *conn_;
  std::unique_lock lock(s.mu);
  s.cv.wait_for(lock, timeout, [&] {
    return !c.messages.empty() || c.state == StreamState::kClosed || (c.peer_shutdown & vsock::kShutdownSend);
  });
  if (c.messages.empty()) return std::nullopt;
  ReceivedMessage message = std::move(c.messages.front());
  c.messages.pop_front();
  c.message_bytes -= message.bytes.size();
  if (eor != nullptr) *eor = message.eor;
  c.fwd_cnt += static_cast<uint32_t>(message.bytes.size());
  if (c.state == StreamState::kEstablished) {
    s.maybe_send_credit_update(c);
    s.maybe_finish_peer_shutdown(c);
  }
  return std::move(message.bytes);
}

size_t Stream::messages_readable() const {
  if (!conn_) return 0;
  std::lock_guard lock(driver_->impl_->mu);
  return conn_->messages.size();
}

}  // namespace vhost_vsock::testing
