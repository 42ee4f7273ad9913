#include "vsock/connection/connection.h"

#include <fmt/format.h>
#include <linux/sock_diag.h>
#include <sys/socket.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstring>
#include <string>

namespace vhost_vsock::vsock {
namespace {

constexpr size_t kMaxIovecsPerCall = IOV_MAX;
constexpr uint32_t kShutdownBoth = kShutdownRcv | kShutdownSend;

bool would_block(int error) {
  return error == EAGAIN || error == EWOULDBLOCK;
}

}  // namespace

const char* to_string(ConnectionState state) {
  switch (state) {
    case ConnectionState::kAwaitingResponse:
      return "awaiting-response";
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

Connection::Connection(base::EventLoop& loop, const ConnectionParams& params, base::UniqueFd host_fd,
                       ConnectionState initial_state)
    : loop_(loop),
      params_(params),
      host_fd_(std::move(host_fd)),
      state_(initial_state),
      rx_cnt_(params.counter_base),
      fwd_cnt_(params.counter_base),
      advertised_fwd_cnt_(params.counter_base),
      tx_buffer_(static_cast<size_t>(params.buf_alloc) + kUncountedReserve) {}

Connection::~Connection() {
  close_host();
}

void Connection::watch_host(base::EventLoop::FdCallback callback) {
  if (!host_fd_) return;
  loop_.add(host_fd_.get(), EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET, std::move(callback));
}

void Connection::close_host() {
  if (!host_fd_) return;
  loop_.remove(host_fd_.get());
  host_fd_.reset();
  tx_buffer_.clear();
  uncounted_front_bytes_ = 0;
  early_host_bytes_.clear();
  early_host_bytes_.shrink_to_fit();
  host_readable_ = false;
}

// ---- credit ----

uint32_t Connection::guest_credit() const {
  const uint32_t in_flight = rx_cnt_ - fwd_cnt_;
  return in_flight >= params_.buf_alloc ? 0 : params_.buf_alloc - in_flight;
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
  if (peer_credit() > 0) credit_request_sent_ = false;
}

void Connection::note_credit_starved() {
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
  const uint32_t window = std::min(params_.buf_alloc, peer_buf_alloc_);
  const uint32_t threshold = std::max<uint32_t>(1, window / kCreditUpdateDivisor);
  if (fwd_cnt_ - advertised_fwd_cnt_ >= threshold && state_ == ConnectionState::kEstablished) {
    pending_control_ |= control::kCreditUpdate;
  }
}

size_t Connection::host_backlog() const {
  if (!host_fd_) return 0;
  // getsockopt rather than ioctl(SIOCOUTQ): the sandbox allows the former.
  uint32_t meminfo[SK_MEMINFO_VARS] = {};
  socklen_t length = sizeof(meminfo);
  size_t unread = 0;
  if (::getsockopt(host_fd_.get(), SOL_SOCKET, SO_MEMINFO, meminfo, &length) == 0 &&
      length > SK_MEMINFO_WMEM_ALLOC * sizeof(uint32_t)) {
    unread = meminfo[SK_MEMINFO_WMEM_ALLOC];  // sent bytes the peer has not read (AF_UNIX)
  }
  return tx_buffer_.size() + unread;
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
      state_ = ConnectionState::kEstablished;
      {
        // Same ordered path as guest data, so a peer that never reads cannot block us.
        const std::string reply = fmt::format("OK {}\n", params_.local_port);
        uncounted_front_bytes_ +=
            tx_buffer_.append(std::span(reinterpret_cast<const uint8_t*>(reply.data()), reply.size()));
      }
      host_readable_ = true;  // the socket may already hold data (edge-triggered: we must look)
      // Some guest kernels give the accepted child socket no peer credit from
      // our REQUEST; one update makes sure it can write before the host does.
      pending_control_ |= control::kCreditUpdate;
      flush_tx();
      return GuestPacketVerdict::kOk;

    case ConnectionState::kEstablished:
      switch (op) {
        case Op::kRw:
          return accept_guest_data(payload, header.len);
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
        kill();
      }
      return GuestPacketVerdict::kOk;

    case ConnectionState::kDead:
    case ConnectionState::kForgotten:
      return GuestPacketVerdict::kOk;
  }
  return GuestPacketVerdict::kOk;
}

GuestPacketVerdict Connection::accept_guest_data(std::span<const iovec> payload, uint32_t len) {
  if (guest_shutdown_ & kShutdownSend) {
    reset();
    return GuestPacketVerdict::kProtocolViolation;
  }
  if (len > guest_credit()) {
    reset();
    return GuestPacketVerdict::kCreditViolation;
  }
  if (len == 0) return GuestPacketVerdict::kOk;
  if (!host_fd_) {
    reset();
    return GuestPacketVerdict::kHostGone;
  }
  rx_cnt_ += len;
  // The host stopped reading and the guest has been (or is being) told with
  // SHUTDOWN(RCV); what it sent before hearing so is dropped, never counted in
  // fwd_cnt. Resetting instead would throw away what the host wrote before it
  // closed and the guest has not read yet. Credit still bounds the guest.
  if (host_write_closed_) return GuestPacketVerdict::kOk;
  size_t written = 0;
  // Order: once bytes are buffered, new bytes queue behind them.
  if (tx_buffer_.empty() && host_writable_) {
    if (write_to_host(payload, written) == WriteStatus::kGone) {
      if (written > 0) after_forwarded(static_cast<uint32_t>(written));
      on_host_write_closed();
      return GuestPacketVerdict::kOk;
    }
  }
  if (written > 0) after_forwarded(static_cast<uint32_t>(written));
  if (written < len) {
    // Cannot fall short: the credit check bounds buffered guest bytes by buf_alloc.
    tx_buffer_.append(payload, written, len - written);
    if (host_writable_) flush_tx();
  }
  return GuestPacketVerdict::kOk;
}

void Connection::on_guest_shutdown(uint32_t flags) {
  guest_shutdown_ |= flags & kShutdownBoth;
  if ((guest_shutdown_ & kShutdownBoth) == kShutdownBoth) {
    // Linux close(): deliver what we hold, then close and RST (Linux waits for it).
    state_ = ConnectionState::kClosingAfterFlush;
    pending_control_ &= control::kRst;
    if (tx_buffer_.empty()) {
      close_host();
      pending_control_ = control::kRst;
      state_ = ConnectionState::kDead;
    }
    return;
  }
  maybe_finish_guest_send_side();
}

void Connection::maybe_finish_guest_send_side() {
  if ((guest_shutdown_ & kShutdownSend) && tx_buffer_.empty() && !host_write_shut_ && host_fd_) {
    host_write_shut_ = true;
    ::shutdown(host_fd_.get(), SHUT_WR);
  }
}

Connection::WriteStatus Connection::write_to_host(std::span<const iovec> iovs, size_t& written) {
  written = 0;
  while (!iovs.empty()) {
    const size_t count = std::min(iovs.size(), kMaxIovecsPerCall);
    msghdr msg{};
    msg.msg_iov = const_cast<iovec*>(iovs.data());
    msg.msg_iovlen = count;
    const ssize_t n = ::sendmsg(host_fd_.get(), &msg, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n < 0) {
      if (errno == EINTR) continue;
      if (would_block(errno)) {
        host_writable_ = false;
        return WriteStatus::kWouldBlock;
      }
      return WriteStatus::kGone;
    }
    written += static_cast<size_t>(n);
    size_t left = static_cast<size_t>(n);
    size_t i = 0;
    while (i < count && left >= iovs[i].iov_len) left -= iovs[i++].iov_len;
    // Partial write: the caller buffers the rest and flushes, which finds out
    // for certain whether the socket is full (and arms EPOLLOUT if so).
    if (i < count) return WriteStatus::kOk;
    iovs = iovs.subspan(count);
  }
  return WriteStatus::kOk;
}

void Connection::flush_tx() {
  while (!tx_buffer_.empty() && host_writable_ && host_fd_) {
    iovec iov[2];
    const size_t count = tx_buffer_.readable_iovecs(iov);
    msghdr msg{};
    msg.msg_iov = iov;
    msg.msg_iovlen = count;
    const ssize_t n = ::sendmsg(host_fd_.get(), &msg, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n < 0) {
      if (errno == EINTR) continue;
      if (would_block(errno)) {
        host_writable_ = false;
        break;
      }
      on_host_write_closed();
      return;
    }
    size_t sent = static_cast<size_t>(n);
    const size_t uncounted = std::min(sent, uncounted_front_bytes_);
    uncounted_front_bytes_ -= uncounted;
    tx_buffer_.consume(sent);
    if (sent > uncounted) after_forwarded(static_cast<uint32_t>(sent - uncounted));
  }
  if (!tx_buffer_.empty()) return;
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
  return state_ == ConnectionState::kEstablished && host_fd_.valid() && !(guest_shutdown_ & kShutdownRcv) &&
         !host_eof_ && host_readable();
}

Connection::ReadStatus Connection::read_from_host(std::span<const iovec> into, size_t& bytes) {
  bytes = 0;
  if (!early_host_bytes_.empty()) {
    bytes = base::copy_to_iovecs(into, 0, early_host_bytes_);
    early_host_bytes_.erase(early_host_bytes_.begin(), early_host_bytes_.begin() + static_cast<std::ptrdiff_t>(bytes));
    if (early_host_bytes_.empty()) early_host_bytes_.shrink_to_fit();
    return bytes > 0 ? ReadStatus::kData : ReadStatus::kWouldBlock;
  }
  if (!host_fd_) return ReadStatus::kError;
  const int count = static_cast<int>(std::min(into.size(), kMaxIovecsPerCall));
  for (;;) {
    const ssize_t n = ::readv(host_fd_.get(), into.data(), count);
    if (n > 0) {
      bytes = static_cast<size_t>(n);
      return ReadStatus::kData;
    }
    if (n == 0) {
      on_host_eof();
      return ReadStatus::kEof;
    }
    if (errno == EINTR) continue;
    if (would_block(errno)) {
      host_readable_ = false;
      return ReadStatus::kWouldBlock;
    }
    on_host_fully_closed();
    return ReadStatus::kError;
  }
}

void Connection::on_host_events(uint32_t events) {
  if (!host_fd_) return;
  if (events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR)) host_readable_ = true;
  if (events & (EPOLLHUP | EPOLLERR)) host_hup_ = true;
  if (events & (EPOLLOUT | EPOLLHUP | EPOLLERR)) {
    host_writable_ = true;
    flush_tx();
    if (!host_fd_) return;
  }
  // Nothing more will be read towards a guest that shut its receive side, or
  // after EOF: a hang-up then means the peer is entirely gone.
  if (host_hup_ && state_ == ConnectionState::kEstablished && ((guest_shutdown_ & kShutdownRcv) || host_eof_)) {
    on_host_fully_closed();
  }
}

void Connection::on_host_write_closed() {
  host_write_closed_ = true;
  tx_buffer_.clear();
  uncounted_front_bytes_ = 0;
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
  h.type = static_cast<uint16_t>(SocketType::kStream);
  h.op = static_cast<uint16_t>(op);
  h.flags = flags;
  h.buf_alloc = params_.buf_alloc;
  h.fwd_cnt = fwd_cnt_;
  advertised_fwd_cnt_ = fwd_cnt_;
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

void Connection::kill() {
  close_host();
  pending_control_ = control::kRst;
  state_ = ConnectionState::kDead;
}

}  // namespace vhost_vsock::vsock
