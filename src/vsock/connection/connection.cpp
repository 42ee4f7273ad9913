#include "vsock/connection/connection.h"

#include <algorithm>
#include <array>

namespace vhost_vsock::vsock {
namespace {

constexpr uint32_t kShutdownBoth = kShutdownRcv | kShutdownSend;

}  // namespace

const char* to_string(ConnectionState state) {
  switch (state) {
    case ConnectionState::kAwaitingResponse:
      return "awaiting-response";
    case ConnectionState::kConnectingToHost:
      return "connecting-to-host";
    case ConnectionState::kEstablished:
      return "established";
    case ConnectionState::kClosingAfterFlush:
      return "closing-after-flush";
    case ConnectionState::kAwaitingGuestRst:
      return "awaiting-guest-rst";
    case ConnectionState::kDead:
      return "dead";
    case ConnectionState::kForgotten:
      return "forgotten";
  }
  return "unknown";
}

Connection::Connection(const ConnectionParams& params, std::unique_ptr<HostEndpoint> host,
                       ConnectionState initial_state)
    : params_(params),
      host_(std::move(host)),
      socket_type_(host_->socket_type()),
      state_(initial_state),
      rx_cnt_(params.counter_base),
      fwd_cnt_(params.counter_base),
      advertised_fwd_cnt_(params.counter_base),
      tx_buffer_(static_cast<size_t>(params.buf_alloc) + kUncountedReserve) {
  if (params_.budget != nullptr) {
    hold_ = params_.budget->join();
    holds_budget_ = true;
  }
  // What the first packet (our REQUEST or RESPONSE) will promise.
  advertised_buf_alloc_ = window_to_advertise();
}

Connection::~Connection() {
  close_host();
  leave_budget();
}

void Connection::watch_host(HostEndpoint::EventCallback callback) {
  if (!host_->is_open()) return;
  host_->watch(std::move(callback));
}

void Connection::close_host() {
  if (!host_->is_open()) return;
  host_->close();
  drop_tx_bytes();
  next_message_bytes_.reset();
  early_host_bytes_.clear();
  early_host_bytes_.shrink_to_fit();
  host_readable_ = false;
  // Guest data is refused from now on: nothing more needs holding.
  leave_budget();
}

// ---- credit ----

uint32_t Connection::guest_credit() const {
  // Measured from what the guest heard, not from fwd_cnt: bytes forwarded
  // since are not credit until advertised (the budget may have taken them back).
  const uint32_t in_flight = rx_cnt_ - advertised_fwd_cnt_;
  return in_flight >= advertised_buf_alloc_ ? 0 : advertised_buf_alloc_ - in_flight;
}

uint32_t Connection::must_hold() const {
  const size_t capacity = tx_buffer_.allocated() ? tx_buffer_.capacity() : 0;
  const size_t storage = capacity > kUncountedReserve ? capacity - kUncountedReserve : 0;
  return std::max({owed_to_guest(), static_cast<uint32_t>(storage), message_window_});
}

uint32_t Connection::window_to_advertise() {
  // Closed towards the host: guest data is refused, keep the last figure.
  if (params_.budget != nullptr && !holds_budget_) return advertised_buf_alloc_;
  if (message_window_ != 0 && params_.budget == nullptr) return message_window_;
  uint32_t wanted = message_window_;
  if (wanted == 0) {
    wanted = params_.budget != nullptr ? params_.budget->window() : params_.buf_alloc;
    if (is_seqpacket()) wanted = std::min(wanted, host_->max_message_bytes());
  }
  uint32_t window = wanted;
  if (params_.budget != nullptr) {
    hold_ = params_.budget->rehold(hold_, std::max(wanted, must_hold()));
    // hold_ >= must_hold() >= owed: what was promised is never taken back.
    window = std::min(wanted, hold_);
  }
  // A Linux guest sends no message above our buf_alloc; once it has heard one
  // figure, a smaller one would make its next message fail with EMSGSIZE.
  if (is_seqpacket()) message_window_ = window;
  return window;
}

void Connection::release_unneeded() {
  if (holds_budget_) hold_ = params_.budget->rehold(hold_, must_hold());
}

void Connection::leave_budget() {
  if (!holds_budget_) return;
  params_.budget->leave(hold_);
  holds_budget_ = false;
  hold_ = 0;
}

uint32_t Connection::peer_credit() const {
  // A guest that reports a fwd_cnt ahead of what we sent makes this wrap to a
  // huge in-flight count: treat it as no credit rather than unlimited.
  const uint32_t in_flight = tx_cnt_ - peer_fwd_cnt_;
  return in_flight >= peer_buf_alloc_ ? 0 : peer_buf_alloc_ - in_flight;
}

void Connection::update_peer_credit(uint32_t peer_buf_alloc, uint32_t peer_fwd_cnt) {
  peer_buf_alloc_ = peer_buf_alloc;
  peer_fwd_cnt_ = peer_fwd_cnt;
  // kSeqpacket: credit that still cannot carry the waiting message is no
  // answer to our CREDIT_REQUEST (asking again would ping-pong with the guest).
  if (peer_credit() >= credit_needed()) {
    credit_request_sent_ = false;
    credit_stalled_ = false;
  }
}

uint32_t Connection::credit_needed() const {
  if (!next_message_bytes_.has_value()) return 1;
  return std::max<uint32_t>(*next_message_bytes_, 1);
}

uint32_t Connection::sendable_to_guest() {
  if (!wants_to_send_data()) return 0;
  const uint32_t credit = peer_credit();
  // A message that can never fit goes to the pump all the same: it resets the connection.
  if (next_message_never_fits()) return std::max<uint32_t>(credit, 1);
  if (credit < credit_needed()) {
    note_credit_starved();
    return 0;
  }
  return credit;
}

void Connection::note_credit_starved() {
  if (state_ != ConnectionState::kEstablished) return;
  if (!credit_stalled_) {
    credit_stalled_ = true;
    ++credit_stalls_;
  }
  if (is_seqpacket()) request_credit();
}

void Connection::request_credit() {
  if (credit_request_sent_ || state_ != ConnectionState::kEstablished) return;
  credit_request_sent_ = true;
  pending_control_ |= control::kCreditRequest;
}

// Policy: advertise once the host has taken 1/kCreditUpdateDivisor of the
// guest's usable window since the guest last heard from us. Linux caps its view of our buf_alloc at
// its own buf_alloc (256 KiB by default), so the window is the smaller of the
// two: with ours alone, a --tx-buffer-size well above the guest's buffer
// would leave the guest waiting at zero credit while we wait for more bytes.
// A guest stalls only with its whole window unacknowledged; draining that
// always crosses the threshold, so a stall with everything forwarded is
// impossible.
void Connection::after_forwarded(uint32_t guest_bytes) {
  fwd_cnt_ += guest_bytes;
  release_unneeded();
  const uint32_t window = std::min(advertised_buf_alloc_, peer_buf_alloc_);
  const uint32_t threshold = std::max<uint32_t>(1, window / kCreditUpdateDivisor);
  if (fwd_cnt_ - advertised_fwd_cnt_ >= threshold && state_ == ConnectionState::kEstablished) {
    pending_control_ |= control::kCreditUpdate;
  }
  advertise_if_guest_out_of_credit();
}

// A guest whose view of our credit is zero waits for a CREDIT_UPDATE (Linux
// never asks). On a stream the threshold above always fires first, but a
// seqpacket's unfinished message holds bytes we cannot forward: with the rest
// of the window forwarded below the threshold, both sides would wait forever.
void Connection::advertise_if_guest_out_of_credit() {
  const uint32_t window = std::min(advertised_buf_alloc_, peer_buf_alloc_);
  if (rx_cnt_ - advertised_fwd_cnt_ >= window && fwd_cnt_ != advertised_fwd_cnt_ &&
      state_ == ConnectionState::kEstablished) {
    pending_control_ |= control::kCreditUpdate;
  }
}

size_t Connection::host_backlog() const {
  if (!host_->is_open()) return 0;
  return tx_buffer_.size() + host_->unread_by_peer();
}

// ---- guest -> host ----

GuestPacketVerdict Connection::on_guest_packet(const PacketHeader& header, std::span<const iovec> payload) {
  update_peer_credit(header.buf_alloc, header.fwd_cnt);
  const Op op = header.operation();
  if (op == Op::kRst) {
    forget();
    return GuestPacketVerdict::kOk;
  }
  switch (state_) {
    case ConnectionState::kAwaitingResponse:
      if (op != Op::kResponse) {
        reset();
        return GuestPacketVerdict::kProtocolViolation;
      }
      return on_guest_accept();

    case ConnectionState::kConnectingToHost:
      // The guest waits for our RESPONSE: only credit news is valid now.
      if (op == Op::kCreditUpdate || op == Op::kCreditRequest) return GuestPacketVerdict::kOk;
      reset();
      return GuestPacketVerdict::kProtocolViolation;

    case ConnectionState::kEstablished:
      return on_established_packet(op, header, payload);

    case ConnectionState::kClosingAfterFlush:
      // The guest promised to send nothing more.
      if (op == Op::kRw || op == Op::kRequest || op == Op::kResponse) {
        reset();
        return GuestPacketVerdict::kProtocolViolation;
      }
      return GuestPacketVerdict::kOk;

    case ConnectionState::kAwaitingGuestRst:
      if (op == Op::kShutdown || op == Op::kRw) {
        // The guest is closing too (or raced us with data the host can no
        // longer take): finish with our RST.
        reset();
      }
      return GuestPacketVerdict::kOk;

    case ConnectionState::kDead:
    case ConnectionState::kForgotten:
      return GuestPacketVerdict::kOk;
  }
  return GuestPacketVerdict::kOk;
}

GuestPacketVerdict Connection::on_guest_accept() {
  state_ = ConnectionState::kEstablished;
  std::array<uint8_t, kMaxGreetingBytes> greeting;
  const size_t greeting_bytes = host_->accept_greeting(params_.local_port, greeting);
  if (greeting_bytes > 0) {
    // Same ordered path as guest data, so a peer that never reads cannot block us.
    size_tx_buffer();
    const size_t appended = tx_buffer_.append(std::span<const uint8_t>(greeting.data(), greeting_bytes));
    uncounted_front_bytes_ += appended;
    if (is_seqpacket()) tx_messages_.push_back(static_cast<uint32_t>(appended));  // its own message
  }
  host_readable_ = true;  // the endpoint may already hold data (edge-triggered: we must look)
  // Some guest kernels give the accepted child socket no peer credit from
  // our REQUEST; one update makes sure it can write before the host does.
  pending_control_ |= control::kCreditUpdate;
  flush_tx();
  return GuestPacketVerdict::kOk;
}

GuestPacketVerdict Connection::on_established_packet(Op op, const PacketHeader& header,
                                                     std::span<const iovec> payload) {
  switch (op) {
    case Op::kRw:
      return accept_guest_data(payload, header.len, header.flags);
    case Op::kShutdown:
      on_guest_shutdown(header.flags);
      return GuestPacketVerdict::kOk;
    case Op::kCreditUpdate:
      return GuestPacketVerdict::kOk;
    case Op::kCreditRequest:
      pending_control_ |= control::kCreditUpdate;
      return GuestPacketVerdict::kOk;
    default:
      reset();
      return GuestPacketVerdict::kProtocolViolation;
  }
}

GuestPacketVerdict Connection::accept_guest_data(std::span<const iovec> payload, uint32_t len, uint32_t flags) {
  if (guest_shutdown_ & kShutdownSend) {
    reset();
    return GuestPacketVerdict::kProtocolViolation;
  }
  if (len > guest_credit()) {
    reset();
    return GuestPacketVerdict::kCreditViolation;
  }
  // kSeqpacket: an empty RW with EOM still ends a message (maybe an empty one).
  const bool ends_message = is_seqpacket() && (flags & kSeqEom) != 0;
  if (len == 0 && !ends_message) return GuestPacketVerdict::kOk;
  if (!host_->is_open()) {
    reset();
    return GuestPacketVerdict::kHostGone;
  }
  rx_cnt_ += len;
  // The host stopped reading and the guest has been (or is being) told with
  // SHUTDOWN(RCV); what it sent before hearing so is dropped, never counted in
  // fwd_cnt. Resetting instead would throw away what the host wrote before it
  // closed and the guest has not read yet. Credit still bounds the guest.
  if (host_write_closed_) return GuestPacketVerdict::kOk;
  if (is_seqpacket()) return accept_message_part(payload, len, ends_message);
  if (defer_host_writes_ && tx_buffer_.empty() && host_writable_) {
    deferred_bytes_ += len;
    return GuestPacketVerdict::kOk;
  }
  forward_to_host(payload, len);
  return GuestPacketVerdict::kOk;
}

void Connection::forward_to_host(std::span<const iovec> payload, uint32_t len) {
  size_t written = 0;
  // Order: once bytes are buffered, new bytes queue behind them.
  if (tx_buffer_.empty() && host_writable_) {
    const HostEndpoint::SendResult result = host_->send(payload);
    written = result.bytes;
    if (result.status == HostEndpoint::SendStatus::kWouldBlock) host_writable_ = false;
    if (result.status == HostEndpoint::SendStatus::kGone) {
      if (written > 0) after_forwarded(static_cast<uint32_t>(written));
      on_host_write_closed();
      return;
    }
  }
  if (written > 0) after_forwarded(static_cast<uint32_t>(written));
  if (written < len) {
    // Cannot fall short: the credit check bounds buffered guest bytes by what we promised.
    size_tx_buffer();
    tx_buffer_.append(payload, written, len - written);
    if (host_writable_) flush_tx();
  }
}

// The checks accept_guest_data() makes, for data that would go straight out.
bool Connection::would_forward_at_once(const PacketHeader& header) const {
  return header.operation() == Op::kRw && state_ == ConnectionState::kEstablished && !is_seqpacket() &&
         header.len > 0 && (guest_shutdown_ & kShutdownSend) == 0 && header.len <= guest_credit() && host_->is_open() &&
         !host_write_closed_ && tx_buffer_.empty() && host_writable_;
}

void Connection::send_deferred(std::span<const iovec> payload) {
  const uint32_t len = deferred_bytes_;
  deferred_bytes_ = 0;
  if (len > 0) forward_to_host(payload, len);
}

void Connection::on_guest_shutdown(uint32_t flags) {
  guest_shutdown_ |= flags & kShutdownBoth;
  if ((guest_shutdown_ & kShutdownBoth) == kShutdownBoth) {
    // Linux close(): deliver what we hold, then close and RST (Linux waits for it).
    state_ = ConnectionState::kClosingAfterFlush;
    pending_control_ &= control::kRst;
    if (flushed()) {
      close_host();
      pending_control_ = control::kRst;
      state_ = ConnectionState::kDead;
    }
    return;
  }
  maybe_finish_guest_send_side();
}

void Connection::maybe_finish_guest_send_side() {
  if ((guest_shutdown_ & kShutdownSend) && flushed() && !host_write_shut_ && host_->is_open()) {
    host_write_shut_ = true;
    host_->shutdown_send();
  }
}

void Connection::flush_tx() {
  if (is_seqpacket()) flush_tx_messages();
  while (!is_seqpacket() && !tx_buffer_.empty() && host_writable_ && host_->is_open()) {
    iovec iov[2];
    const size_t count = tx_buffer_.readable_iovecs(iov);
    const HostEndpoint::SendResult result = host_->send(std::span<const iovec>(iov, count));
    const size_t uncounted = std::min(result.bytes, uncounted_front_bytes_);
    uncounted_front_bytes_ -= uncounted;
    tx_buffer_.consume(result.bytes);
    if (result.bytes > uncounted) after_forwarded(static_cast<uint32_t>(result.bytes - uncounted));
    if (result.status == HostEndpoint::SendStatus::kWouldBlock) {
      host_writable_ = false;
      break;
    }
    if (result.status == HostEndpoint::SendStatus::kGone) {
      on_host_write_closed();
      return;
    }
  }
  release_unneeded();  // the storage may be gone
  // A message without its EOM is never sent: the guest closing abandons it.
  if (!flushed()) return;
  if (state_ == ConnectionState::kClosingAfterFlush) {
    close_host();
    pending_control_ = control::kRst;
    state_ = ConnectionState::kDead;
    return;
  }
  maybe_finish_guest_send_side();
}

// ---- host -> guest ----

void Connection::set_early_host_bytes(std::span<const uint8_t> bytes) {
  early_host_bytes_.assign(bytes.begin(), bytes.end());
}

bool Connection::wants_to_send_data() const {
  // The endpoint (a virtual call) last: a stream the host is not writing to stops before it.
  return state_ == ConnectionState::kEstablished && !(guest_shutdown_ & kShutdownRcv) && !host_eof_ &&
         host_readable() && host_->is_open();
}

Connection::ReadStatus Connection::read_from_host(std::span<const iovec> into, size_t& bytes) {
  bytes = 0;
  if (!early_host_bytes_.empty()) {
    bytes = base::copy_to_iovecs(into, 0, early_host_bytes_);
    early_host_bytes_.erase(early_host_bytes_.begin(), early_host_bytes_.begin() + static_cast<std::ptrdiff_t>(bytes));
    if (early_host_bytes_.empty()) early_host_bytes_.shrink_to_fit();
    return bytes > 0 ? ReadStatus::kData : ReadStatus::kWouldBlock;
  }
  if (!host_->is_open()) return ReadStatus::kError;
  const HostEndpoint::ReceiveResult result = host_->receive(into);
  switch (result.status) {
    case HostEndpoint::ReceiveStatus::kData:
      bytes = result.bytes;
      next_message_bytes_.reset();
      return ReadStatus::kData;
    case HostEndpoint::ReceiveStatus::kEof:
      on_host_eof();
      return ReadStatus::kEof;
    case HostEndpoint::ReceiveStatus::kWouldBlock:
      host_readable_ = false;
      return ReadStatus::kWouldBlock;
    case HostEndpoint::ReceiveStatus::kError:
      break;
  }
  on_host_fully_closed();
  return ReadStatus::kError;
}

void Connection::on_connect_finished(HostEvents events) {
  if (!events.connected) {
    if (events.hangup) reset();  // the connect failed: the guest gets its RST now
    return;
  }
  state_ = ConnectionState::kEstablished;
  accept_connect();
}

void Connection::on_host_events(HostEvents events) {
  if (!host_->is_open()) return;
  if (state_ == ConnectionState::kConnectingToHost) {
    on_connect_finished(events);
    if (state_ != ConnectionState::kEstablished) return;
  }
  if (events.readable) host_readable_ = true;
  if (events.hangup) host_hup_ = true;
  if (events.writable) {
    host_writable_ = true;
    flush_tx();
    if (!host_->is_open()) return;
  }
  // Nothing more will be read towards a guest that shut its receive side, or
  // after EOF: a hang-up then means the peer is entirely gone.
  if (host_hup_ && state_ == ConnectionState::kEstablished && ((guest_shutdown_ & kShutdownRcv) || host_eof_)) {
    on_host_fully_closed();
  }
}

void Connection::on_host_write_closed() {
  host_write_closed_ = true;
  drop_tx_bytes();
  if (state_ == ConnectionState::kClosingAfterFlush) {
    close_host();
    pending_control_ = control::kRst;
    state_ = ConnectionState::kDead;
    return;
  }
  if (host_eof_) {
    on_host_fully_closed();
    return;
  }
  if (state_ == ConnectionState::kEstablished) {
    // Tell the guest to stop sending; keep delivering what the host wrote.
    shutdown_flags_to_send_ |= kShutdownRcv;
    pending_control_ |= control::kShutdown;
  }
}

void Connection::on_host_eof() {
  host_eof_ = true;
  host_readable_ = false;
  if (host_hup_ || host_write_closed_) {
    on_host_fully_closed();
    return;
  }
  if (state_ == ConnectionState::kEstablished) {
    shutdown_flags_to_send_ |= kShutdownSend;
    pending_control_ |= control::kShutdown;
  }
}

void Connection::on_host_fully_closed() {
  if (state_ != ConnectionState::kEstablished) {
    // Nothing was promised to the guest yet (or it is already closing): reset.
    if (state_ == ConnectionState::kAwaitingResponse || state_ == ConnectionState::kClosingAfterFlush) reset();
    return;
  }
  close_host();
  shutdown_flags_to_send_ = kShutdownBoth;
  pending_control_ = (pending_control_ & (control::kCreditUpdate)) | control::kShutdown;
  state_ = ConnectionState::kAwaitingGuestRst;
}

// ---- control packets ----

PacketHeader Connection::make_header(Op op, uint32_t len, uint32_t flags) {
  PacketHeader h;
  h.src_cid = kCidHost;
  h.dst_cid = params_.guest_cid;
  h.src_port = params_.local_port;
  h.dst_port = params_.peer_port;
  h.len = len;
  h.type = static_cast<uint16_t>(socket_type_);
  h.op = static_cast<uint16_t>(op);
  h.flags = flags;
  h.buf_alloc = window_to_advertise();
  h.fwd_cnt = fwd_cnt_;
  advertised_buf_alloc_ = h.buf_alloc;
  advertised_fwd_cnt_ = fwd_cnt_;
  // A larger promise while bytes are held needs larger storage now.
  if (tx_buffer_.allocated()) size_tx_buffer();
  pending_control_ &= static_cast<uint8_t>(~control::kCreditUpdate);
  return h;
}

std::optional<PacketHeader> Connection::take_control_packet() {
  const uint8_t pending = pending_control_;
  if (pending == 0) return std::nullopt;
  if (pending & control::kRst) {
    pending_control_ = 0;
    if (state_ == ConnectionState::kDead) state_ = ConnectionState::kForgotten;
    return make_header(Op::kRst);
  }
  if (pending & control::kRequest) {
    pending_control_ &= static_cast<uint8_t>(~control::kRequest);
    return make_header(Op::kRequest);
  }
  if (pending & control::kResponse) {
    pending_control_ &= static_cast<uint8_t>(~control::kResponse);
    return make_header(Op::kResponse);
  }
  if (pending & control::kShutdown) {
    pending_control_ &= static_cast<uint8_t>(~control::kShutdown);
    return make_header(Op::kShutdown, 0, shutdown_flags_to_send_);
  }
  if (pending & control::kCreditUpdate) return make_header(Op::kCreditUpdate);
  pending_control_ &= static_cast<uint8_t>(~control::kCreditRequest);
  return make_header(Op::kCreditRequest);
}

// ---- transitions ----

void Connection::reset() {
  close_host();
  pending_control_ = control::kRst;
  state_ = ConnectionState::kDead;
}

void Connection::forget() {
  close_host();
  pending_control_ = 0;
  state_ = ConnectionState::kForgotten;
}

}  // namespace vhost_vsock::vsock
