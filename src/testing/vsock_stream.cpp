// The guest's stream sockets: connection state machine and credit accounting
// (after Linux's virtio_transport_common.c), and the Stream handle API.
#include <spdlog/spdlog.h>

#include <algorithm>

#include "testing/vsock_driver_impl.h"

namespace vhost_vsock::testing {

namespace {

using vsock::Op;
using vsock::PacketHeader;

// Linux sends a CREDIT_UPDATE after a read once the peer's view of our free
// space drops below one maximum packet.
constexpr uint32_t kCreditUpdateThreshold = vsock::kMaxPacketPayload;
// Linux copies RW payloads up to this size into the previous queued buffer
// rather than queueing a whole RX buffer for them (virtio_transport_recv_enqueue).
constexpr size_t kGoodCopyLen = 128;
constexpr uint32_t kShutdownBoth = vsock::kShutdownRcv | vsock::kShutdownSend;

}  // namespace

// ---------------------------------------------------------------------------
// Protocol (Impl::mu held)

uint32_t GuestVsockDriver::Impl::peer_free_credit(const Connection& conn) {
  const uint32_t in_flight = conn.tx_cnt - conn.peer_fwd_cnt;
  return in_flight >= conn.peer_buf_alloc ? 0 : conn.peer_buf_alloc - in_flight;
}

PacketHeader GuestVsockDriver::Impl::header_for(Connection& conn, Op op, uint32_t len, uint32_t flags) const {
  PacketHeader h = owner.make_header(op, conn.local_port, conn.peer_port, len, flags);
  h.type = conn.type;
  h.fwd_cnt = conn.fwd_cnt;
  conn.last_fwd_cnt_sent = conn.fwd_cnt;
  return h;
}

void GuestVsockDriver::Impl::send_control(Connection& conn, Op op, uint32_t flags) {
  const PacketHeader h = header_for(conn, op, 0, flags);
  if (op == Op::kRst) ++stats.resets_sent;
  if (op == Op::kCreditUpdate) ++stats.credit_updates_sent;
  if (pending.empty() && publish_tx(h, {})) {
    flush_tx_kick();
    return;
  }
  pending.push_back({h, {}});
  wake_io_thread();
}

void GuestVsockDriver::Impl::send_orphan_reset(const PacketHeader& to) {
  PacketHeader h = owner.make_header(Op::kRst, to.dst_port, to.src_port);
  h.type = to.type;
  ++stats.resets_sent;
  if (pending.empty() && publish_tx(h, {})) {
    flush_tx_kick();
    return;
  }
  pending.push_back({h, {}});
}

void GuestVsockDriver::Impl::update_peer_credit(Connection& conn, const PacketHeader& header) {
  conn.peer_buf_alloc = header.buf_alloc;
  conn.peer_fwd_cnt = header.fwd_cnt;
  // fwd_cnt counts bytes the device forwarded; it cannot run ahead of what we sent.
  if (conn.tx_cnt - conn.peer_fwd_cnt > (1U << 31)) {
    violation("peer fwd_cnt " + std::to_string(header.fwd_cnt) + " is ahead of the " + std::to_string(conn.tx_cnt) +
              " bytes we sent: " + vsock::describe(header));
  }
}

void GuestVsockDriver::Impl::maybe_send_credit_update(Connection& conn) {
  if (conn.state != StreamState::kEstablished) return;
  const uint32_t consumed_unreported = conn.fwd_cnt - conn.last_fwd_cnt_sent;
  if (consumed_unreported == 0) return;
  if (options.buf_alloc - std::min(options.buf_alloc, consumed_unreported) < kCreditUpdateThreshold) {
    send_control(conn, Op::kCreditUpdate);
  }
}

void GuestVsockDriver::Impl::mark_closed(Connection& conn) {
  conn.state = StreamState::kClosed;
  unhold_stream_rx(conn);  // unread bytes stay readable, but hold no spare RX buffer
  if (conn.in_table) {
    connections.erase({conn.local_port, conn.peer_port});
    conn.in_table = false;
  }
}

// Linux: once the peer has shut down both ways and nothing is left to read,
// reset and close (virtio_transport_recv_connected, SHUTDOWN case).
void GuestVsockDriver::Impl::maybe_finish_peer_shutdown(Connection& conn) {
  if (!options.reset_on_peer_shutdown || conn.peer_shutdown != kShutdownBoth || !nothing_to_read(conn)) return;
  if (conn.state == StreamState::kClosed) return;
  send_control(conn, Op::kRst);
  mark_closed(conn);
}

bool GuestVsockDriver::Impl::check_close_timers() {
  const auto now = Clock::now();
  std::vector<std::shared_ptr<Connection>> expired;
  for (auto& [key, conn] : connections) {
    if (conn->state == StreamState::kClosing && now >= conn->close_deadline) expired.push_back(conn);
  }
  for (auto& conn : expired) {
    send_control(*conn, Op::kRst);
    mark_closed(*conn);
  }
  return !expired.empty();
}

uint32_t GuestVsockDriver::Impl::allocate_local_port() {
  for (uint32_t attempt = 0; attempt < 65536; ++attempt) {
    const uint32_t port = next_local_port;
    next_local_port = next_local_port >= 65535 ? 1024 : next_local_port + 1;
    if (listeners.count(port) != 0) continue;
    auto it = connections.lower_bound({port, 0});
    if (it != connections.end() && it->first.first == port) continue;
    return port;
  }
  throw std::runtime_error("guest driver: no free local port");
}

// Dispatch of one packet from the device: addressing checks, then by
// connection state (none, connecting, open) and, when open, by op.
bool GuestVsockDriver::Impl::handle_packet(const PacketHeader& header, std::span<const uint8_t> payload,
                                           uint32_t rx_slot) {
  if (!addressed_to_us(header)) return false;
  const Op op = header.operation();
  if (!payload.empty() && op != Op::kRw) violation("payload on a non-RW packet: " + vsock::describe(header));

  auto it = connections.find({header.dst_port, header.src_port});
  if (it == connections.end()) {
    handle_packet_without_connection(header, op);
    return false;
  }
  std::shared_ptr<Connection> conn = it->second;  // keeps it alive past mark_closed
  if (header.type != conn->type) {
    reset_unexpected(*conn, header, "of the other socket type");  // Linux resets on a type mismatch
    return false;
  }
  update_peer_credit(*conn, header);
  if (conn->state == StreamState::kConnecting) {
    handle_packet_while_connecting(*conn, header, op);
    return false;
  }
  switch (op) {
    case Op::kRw:
      return receive_data(*conn, header, payload, rx_slot);
    case Op::kCreditUpdate:
      ++stats.credit_updates_received;
      break;
    case Op::kCreditRequest:
      ++stats.credit_requests_received;
      send_control(*conn, Op::kCreditUpdate);
      break;
    case Op::kShutdown:
      receive_shutdown(*conn, header);
      break;
    case Op::kRst:
      ++stats.resets_received;
      conn->reset_received = true;
      mark_closed(*conn);
      break;
    default:
      reset_unexpected(*conn, header, "on an open stream");
      break;
  }
  return false;
}

bool GuestVsockDriver::Impl::addressed_to_us(const PacketHeader& header) {
  if (header.src_cid != vsock::kCidHost || header.dst_cid != guest_cid) {
    violation("packet not from host to this guest: " + vsock::describe(header));
    return false;
  }
  const bool stream = header.type == static_cast<uint16_t>(vsock::SocketType::kStream);
  // Without the feature the device may still answer our type-2 REQUEST: with RST.
  const bool seqpacket = header.type == static_cast<uint16_t>(vsock::SocketType::kSeqpacket) &&
                         (seqpacket_negotiated || header.operation() == vsock::Op::kRst);
  if (!stream && !seqpacket) {
    violation("packet of a socket type we never used: " + vsock::describe(header));
    return false;
  }
  return true;
}

// A REQUEST to a listening port opens a connection (answered with RESPONSE);
// anything else is an orphan, answered with RST unless it is one.
void GuestVsockDriver::Impl::handle_packet_without_connection(const PacketHeader& header, Op op) {
  auto listener = listeners.find(header.dst_port);
  if (op == Op::kRequest && listener != listeners.end() && listener_types[header.dst_port] == header.type) {
    auto conn = std::make_shared<Connection>();
    conn->local_port = header.dst_port;
    conn->peer_port = header.src_port;
    conn->type = header.type;
    conn->state = StreamState::kEstablished;
    update_peer_credit(*conn, header);
    connections[{conn->local_port, conn->peer_port}] = conn;
    listener->second.push_back(conn);
    send_control(*conn, Op::kResponse);
    return;
  }
  ++stats.orphan_packets;
  if (op == Op::kRst) {
    ++stats.resets_received;
  } else {
    send_orphan_reset(header);
  }
}

void GuestVsockDriver::Impl::handle_packet_while_connecting(Connection& conn, const PacketHeader& header, Op op) {
  if (op == Op::kResponse) {
    conn.state = StreamState::kEstablished;
  } else if (op == Op::kRst) {
    ++stats.resets_received;
    conn.reset_received = true;
    conn.refused = true;
    mark_closed(conn);
  } else {
    reset_unexpected(conn, header, "while connecting");
  }
}

bool GuestVsockDriver::Impl::receive_data(Connection& conn, const PacketHeader& header,
                                          std::span<const uint8_t> payload, uint32_t rx_slot) {
  conn.rx_cnt += header.len;
  stats.bytes_received += header.len;
  if (conn.type == static_cast<uint16_t>(vsock::SocketType::kStream) && header.flags != 0) {
    violation("stream RW with flags: " + vsock::describe(header));
  }
  if (conn.rx_cnt - conn.last_fwd_cnt_sent > options.buf_alloc) {
    violation("credit overrun: " + std::to_string(conn.rx_cnt - conn.last_fwd_cnt_sent) +
              " bytes unacknowledged, buf_alloc " + std::to_string(options.buf_alloc) + ": " + vsock::describe(header));
  }
  if (conn.peer_shutdown & vsock::kShutdownSend) {
    violation("data after the peer's SHUTDOWN(SEND): " + vsock::describe(header));
  }
  // Data for a closing socket is dropped, but still counted as consumed.
  if (conn.state == StreamState::kClosing || (conn.local_shutdown & vsock::kShutdownRcv)) {
    conn.fwd_cnt += header.len;
  } else if (conn.type == static_cast<uint16_t>(vsock::SocketType::kSeqpacket)) {
    receive_message_part(conn, header, payload);
  } else if (payload.size() > kGoodCopyLen && held_rx_slots < spare_rx_slots) {
    conn.rx.push_held(rx_slot, header.len);  // read out of the RX buffer once, in recv
    ++held_rx_slots;
    return true;
  } else {
    conn.rx.push_copy(payload);
  }
  return false;
}

void GuestVsockDriver::Impl::receive_shutdown(Connection& conn, const PacketHeader& header) {
  conn.peer_shutdown |= header.flags & kShutdownBoth;
  if (conn.state == StreamState::kClosing && conn.peer_shutdown == kShutdownBoth) {
    // Both sides are done: Linux resets rather than waiting out the linger.
    send_control(conn, Op::kRst);
    mark_closed(conn);
  } else {
    maybe_finish_peer_shutdown(conn);
  }
}

// A packet the protocol does not allow in this state: recorded, then RST and close.
void GuestVsockDriver::Impl::reset_unexpected(Connection& conn, const PacketHeader& header, const char* where) {
  violation(std::string("unexpected ") + vsock::op_name(header.op) + " " + where + ": " + vsock::describe(header));
  send_control(conn, Op::kRst);
  mark_closed(conn);
}

// ---------------------------------------------------------------------------
// Driver-level socket calls

Stream GuestVsockDriver::connect_async(uint32_t port, vsock::SocketType type) {
  std::unique_lock lock(impl_->mu);
  Impl& s = *impl_;
  auto conn = std::make_shared<Connection>();
  conn->peer_port = port;
  conn->type = static_cast<uint16_t>(type);
  if (!s.running) {
    conn->state = StreamState::kClosed;
    conn->in_table = false;
    return Stream(this, conn);
  }
  conn->local_port = s.allocate_local_port();
  s.connections[{conn->local_port, port}] = conn;
  s.send_control(*conn, Op::kRequest);
  return Stream(this, conn);
}

Stream GuestVsockDriver::connect(uint32_t port, Millis timeout, vsock::SocketType type) {
  Stream stream = connect_async(port, type);
  stream.wait_established(timeout);
  return stream;
}

void GuestVsockDriver::listen(uint32_t port, vsock::SocketType type) {
  std::lock_guard lock(impl_->mu);
  impl_->listeners[port];
  impl_->listener_types[port] = static_cast<uint16_t>(type);
}

void GuestVsockDriver::unlisten(uint32_t port) {
  std::lock_guard lock(impl_->mu);
  impl_->listeners.erase(port);
  impl_->listener_types.erase(port);
}

std::optional<Stream> GuestVsockDriver::accept(uint32_t port, Millis timeout) {
  std::unique_lock lock(impl_->mu);
  const bool ready = impl_->cv.wait_for(lock, timeout, [&] {
    auto it = impl_->listeners.find(port);
    return it == impl_->listeners.end() || !it->second.empty();
  });
  auto it = impl_->listeners.find(port);
  if (!ready || it == impl_->listeners.end()) return std::nullopt;
  auto conn = it->second.front();
  it->second.pop_front();
  return Stream(this, std::move(conn));
}

// ---------------------------------------------------------------------------
// Stream

uint32_t Stream::local_port() const {
  return conn_ ? conn_->local_port : 0;
}
uint32_t Stream::peer_port() const {
  return conn_ ? conn_->peer_port : 0;
}

bool Stream::send(std::string_view data, Millis timeout) {
  return send(std::span(reinterpret_cast<const uint8_t*>(data.data()), data.size()), timeout);
}

bool Stream::send(std::span<const uint8_t> data, Millis timeout) {
  if (!conn_) return false;
  auto& s = *driver_->impl_;
  std::unique_lock lock(s.mu);
  return s.send_data(*conn_, data, false, 0, lock, Clock::now() + timeout);
}

bool GuestVsockDriver::Impl::send_data(Connection& c, std::span<const uint8_t> data, bool message, uint32_t last_flags,
                                       std::unique_lock<std::mutex>& lock, Clock::time_point deadline) {
  size_t offset = 0;
  bool done = data.empty() && !message;
  while (!done) {
    if (c.state != StreamState::kEstablished || (c.local_shutdown & vsock::kShutdownSend) ||
        (c.peer_shutdown & vsock::kShutdownRcv) || !running) {
      break;
    }
    const uint32_t credit = peer_free_credit(c);
    const size_t left = data.size() - offset;
    // An empty message still takes one (empty) packet to carry its EOM.
    if ((credit > 0 || left == 0) && pending.empty() && tx_buffer_available()) {
      const size_t chunk = std::min<size_t>({left, credit, options.tx_max_payload});
      const bool last = chunk == left;
      const PacketHeader h = header_for(c, Op::kRw, static_cast<uint32_t>(chunk), message && last ? last_flags : 0);
      if (publish_tx(h, data.subspan(offset, chunk))) {
        c.tx_cnt += static_cast<uint32_t>(chunk);
        stats.bytes_sent += chunk;
        offset += chunk;
        done = last;
        continue;
      }
    }
    flush_tx_kick();
    // Out of credit, only a packet from the peer can let us go on; otherwise
    // we wait for a TX buffer or for queued control packets to leave.
    const bool waits_for_tx = credit > 0 || left == 0;
    if (waits_for_tx) ++tx_space_waiters;
    const std::cv_status status = cv.wait_until(lock, deadline);
    if (waits_for_tx) --tx_space_waiters;
    if (status == std::cv_status::timeout && Clock::now() >= deadline) break;
  }
  flush_tx_kick();
  return done;
}

size_t Stream::recv_into(std::span<uint8_t> out, Millis timeout) {
  if (!conn_ || out.empty()) return 0;
  auto& s = *driver_->impl_;
  Connection& c = *conn_;
  std::unique_lock lock(s.mu);
  s.cv.wait_for(lock, timeout, [&] {
    return !c.rx.empty() || c.state == StreamState::kClosed || (c.peer_shutdown & vsock::kShutdownSend);
  });
  const size_t n = s.read_stream(c, out);
  if (n == 0) return 0;
  c.fwd_cnt += static_cast<uint32_t>(n);
  if (c.state == StreamState::kEstablished) {
    s.maybe_send_credit_update(c);
    s.maybe_finish_peer_shutdown(c);
  }
  return n;
}

std::string Stream::recv(size_t max, Millis timeout) {
  std::string out(max, '\0');
  out.resize(recv_into(std::span(reinterpret_cast<uint8_t*>(out.data()), out.size()), timeout));
  return out;
}

std::string Stream::recv_exactly(size_t n, Millis timeout) {
  std::string out(n, '\0');
  size_t got = 0;
  const auto deadline = Clock::now() + timeout;
  while (got < n) {
    const auto left = std::chrono::duration_cast<Millis>(deadline - Clock::now());
    if (left.count() <= 0) break;
    const size_t r = recv_into(std::span(reinterpret_cast<uint8_t*>(out.data()) + got, n - got), left);
    if (r == 0 && (eof() || state() == StreamState::kClosed)) break;
    got += r;
  }
  out.resize(got);
  return out;
}

std::string Stream::recv_until_eof(Millis timeout, size_t max) {
  std::string out;
  std::string chunk(65536, '\0');
  const auto deadline = Clock::now() + timeout;
  while (out.size() < max) {
    const auto left = std::chrono::duration_cast<Millis>(deadline - Clock::now());
    if (left.count() <= 0) break;
    const size_t r =
        recv_into(std::span(reinterpret_cast<uint8_t*>(chunk.data()), std::min(chunk.size(), max - out.size())), left);
    out.append(chunk.data(), r);
    if (r == 0 && (eof() || state() == StreamState::kClosed)) break;
  }
  return out;
}

bool Stream::shutdown(int how) {
  if (!conn_) return false;
  auto& s = *driver_->impl_;
  std::lock_guard lock(s.mu);
  if (conn_->state != StreamState::kEstablished) return false;
  uint32_t flags = 0;
  if (how == SHUT_RD || how == SHUT_RDWR) flags |= vsock::kShutdownRcv;
  if (how == SHUT_WR || how == SHUT_RDWR) flags |= vsock::kShutdownSend;
  conn_->local_shutdown |= flags;
  s.send_control(*conn_, Op::kShutdown, flags);
  s.cv.notify_all();
  return true;
}

void Stream::close() {
  if (!conn_) return;
  auto& s = *driver_->impl_;
  std::lock_guard lock(s.mu);
  Connection& c = *conn_;
  if (c.state == StreamState::kConnecting) {
    s.send_control(c, Op::kRst);
    s.mark_closed(c);
  } else if (c.state == StreamState::kEstablished) {
    if (c.local_shutdown != kShutdownBoth) {
      c.local_shutdown = kShutdownBoth;
      s.send_control(c, Op::kShutdown, kShutdownBoth);
    }
    // Unread data is discarded; the peer is told it was consumed.
    c.fwd_cnt += static_cast<uint32_t>(s.drop_stream_rx(c));
    c.fwd_cnt += static_cast<uint32_t>(c.message_bytes);
    c.message_bytes = 0;
    c.messages.clear();
    c.partial.clear();
    if (c.peer_shutdown == kShutdownBoth) {
      s.send_control(c, Op::kRst);
      s.mark_closed(c);
    } else {
      c.state = StreamState::kClosing;
      c.close_deadline = Clock::now() + s.options.close_timeout;
    }
  }
  s.cv.notify_all();
}

void Stream::reset() {
  if (!conn_) return;
  auto& s = *driver_->impl_;
  std::lock_guard lock(s.mu);
  if (conn_->state != StreamState::kClosed) {
    s.send_control(*conn_, Op::kRst);
    s.mark_closed(*conn_);
  }
  s.cv.notify_all();
}

#define VUV_STREAM_GETTER(type, name, expr)   \
  type Stream::name() const {                 \
    if (!conn_) return {};                    \
    std::lock_guard lock(driver_->impl_->mu); \
    const Connection& c = *conn_;             \
    return expr;                              \
  }
VUV_STREAM_GETTER(StreamState, state, c.state)
VUV_STREAM_GETTER(bool, reset_received, c.reset_received)
VUV_STREAM_GETTER(bool, refused, c.refused)
VUV_STREAM_GETTER(uint32_t, peer_shutdown_flags, c.peer_shutdown)
VUV_STREAM_GETTER(bool, eof,
                  GuestVsockDriver::Impl::nothing_to_read(c) && (c.peer_shutdown & vsock::kShutdownSend) != 0)
VUV_STREAM_GETTER(size_t, readable_bytes, c.rx.size())
VUV_STREAM_GETTER(uint32_t, peer_free_credit, GuestVsockDriver::Impl::peer_free_credit(c))
VUV_STREAM_GETTER(uint32_t, peer_buf_alloc, c.peer_buf_alloc)
#undef VUV_STREAM_GETTER

namespace {
template <typename Pred>
bool wait_on(GuestVsockDriver::Impl& s, Millis timeout, Pred pred) {
  std::unique_lock lock(s.mu);
  return s.cv.wait_for(lock, timeout, pred);
}
}  // namespace

bool Stream::wait_established(Millis timeout) {
  if (!conn_) return false;
  const Connection& c = *conn_;
  return wait_on(*driver_->impl_, timeout, [&] { return c.state != StreamState::kConnecting; }) &&
         state() == StreamState::kEstablished;
}

bool Stream::wait_closed(Millis timeout) {
  if (!conn_) return false;
  const Connection& c = *conn_;
  return wait_on(*driver_->impl_, timeout, [&] { return c.state == StreamState::kClosed; });
}

bool Stream::wait_reset(Millis timeout) {
  if (!conn_) return false;
  const Connection& c = *conn_;
  return wait_on(*driver_->impl_, timeout, [&] { return c.reset_received; });
}

bool Stream::wait_peer_shutdown(uint32_t flags, Millis timeout) {
  if (!conn_) return false;
  const Connection& c = *conn_;
  return wait_on(*driver_->impl_, timeout, [&] { return (c.peer_shutdown & flags) == flags; });
}

bool Stream::wait_readable(size_t bytes, Millis timeout) {
  if (!conn_) return false;
  const Connection& c = *conn_;
  return wait_on(*driver_->impl_, timeout, [&] { return c.rx.size() >= bytes; });
}

}  // namespace vhost_vsock::testing
