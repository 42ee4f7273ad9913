// One vsock connection between the guest and a host endpoint: its state
// machine, credit accounting in both directions (wrapping u32 arithmetic, as
// the spec requires), the bounded TX buffer used while the host endpoint would
// block, and the credit-update policy. It knows nothing of sockets (that is the
// HostEndpoint's), other connections, queues or timers: the muxer routes packets
// here, moves host->guest bytes into RX chains, and watches state() to run
// timers and forget dead connections.
#pragma once

#include <sys/uio.h>

#include <algorithm>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <vector>

#include "base/iovec_list.h"
#include "vsock/connection/credit_budget.h"
#include "vsock/connection/host_endpoint.h"
#include "vsock/connection/message_lengths.h"
#include "vsock/connection/tx_ring_buffer.h"
#include "vsock/packet/header.h"

namespace vhost_vsock::vsock {

enum class ConnectionState : uint8_t {
  kAwaitingResponse,   // host-initiated: our REQUEST is out, the guest has not answered
  kConnectingToHost,   // guest-initiated: the host endpoint's connect is in progress (RESPONSE once it completes)
  kEstablished,        // data flows; half-close is tracked by the shutdown flags
  kClosingAfterFlush,  // guest sent SHUTDOWN(RCV|SEND): drain the TX buffer, then close + RST
  kAwaitingGuestRst,   // host closed; we sent SHUTDOWN(RCV|SEND) and wait for the guest's RST
  kDead,               // host endpoint closed; only our RST remains to be sent
  kForgotten,          // nothing left to do: the muxer erases it
};
const char* to_string(ConnectionState state);

// Control packets a connection owes the guest. Flags, not a queue, so a
// connection never holds more than a constant amount of pending work.
namespace control {
inline constexpr uint8_t kRst = 1 << 0;
inline constexpr uint8_t kRequest = 1 << 1;
inline constexpr uint8_t kResponse = 1 << 2;
inline constexpr uint8_t kShutdown = 1 << 3;
inline constexpr uint8_t kCreditUpdate = 1 << 4;
inline constexpr uint8_t kCreditRequest = 1 << 5;
}  // namespace control

// Why a guest packet was refused (the connection has been reset already).
enum class GuestPacketVerdict : uint8_t {
  kOk,
  kCreditViolation,    // RW beyond the credit we advertised
  kProtocolViolation,  // op not valid in this state (e.g. RW after SHUTDOWN(SEND))
  kHostGone,           // RW after the host endpoint was closed (RW the host stopped reading is dropped, kOk)
  kMessageRefused,     // kSeqpacket: the host socket can never carry this message (EMSGSIZE)
  kTooManyMessages,    // kSeqpacket: more than kMaxBufferedMessages whole messages wait for the host
};

// A CREDIT_UPDATE goes out once the host has taken this fraction (1/N) of the
// guest's usable window since the guest last heard from us. A quarter rather
// than a half: with the default 64 KiB window and 64 KiB writes, a half let the
// guest sit idle for each update's round trip (bench: 12 -> 21 Gbit/s pinned),
// and it costs at most four updates per window.
inline constexpr uint32_t kCreditUpdateDivisor = 4;

// kSeqpacket: whole guest messages a connection holds while its host socket
// would block. Bytes are bounded by credit; this bounds the count (tiny or
// empty messages cost no credit but each needs a length).
inline constexpr size_t kMaxBufferedMessages = 4096;

struct ConnectionParams {
  uint64_t guest_cid = 0;
  uint32_t local_port = 0;  // host side (src_port of what we send)
  uint32_t peer_port = 0;   // guest side
  // The credit we advertise when there is no budget (tests); with one, the
  // budget's window and floor decide.
  uint32_t buf_alloc = 64 * 1024;
  // Where rx_cnt/fwd_cnt start. Always 0 on the wire (the guest counts from
  // 0); tests set it near 2^32 to exercise wraparound.
  uint32_t counter_base = 0;
  // The VM's guest->host memory budget (outlives the connection), or null
  // for a fixed buf_alloc.
  CreditBudget* budget = nullptr;
};

class Connection {
 public:
  // Room in the TX buffer beyond buf_alloc for bytes the guest did not send
  // (the endpoint's accept greeting), which never count toward credit.
  static constexpr size_t kUncountedReserve = kMaxGreetingBytes;

  // `host` is connected (or connecting) and not yet watched; never null.
  Connection(const ConnectionParams& params, std::unique_ptr<HostEndpoint> host, ConnectionState initial_state);
  ~Connection();
  Connection(const Connection&) = delete;
  Connection& operator=(const Connection&) = delete;

  // Starts watching the host endpoint (edge-triggered); `callback` should end
  // up in on_host_events(). Throws std::system_error if the loop refuses.
  void watch_host(HostEndpoint::EventCallback callback);

  [[nodiscard]] ConnectionState state() const { return state_; }
  [[nodiscard]] uint32_t local_port() const { return params_.local_port; }
  [[nodiscard]] uint32_t peer_port() const { return params_.peer_port; }
  [[nodiscard]] uint64_t guest_cid() const { return params_.guest_cid; }
  [[nodiscard]] bool host_open() const { return host_->is_open(); }
  // Why the host endpoint's connect failed (errno), 0 if it did not.
  [[nodiscard]] int host_connect_error() const { return host_->connect_error(); }
  [[nodiscard]] SocketType socket_type() const { return socket_type_; }
  [[nodiscard]] bool is_seqpacket() const { return socket_type_ == SocketType::kSeqpacket; }

  // ---- credit ----
  // The buf_alloc the guest last heard from us (or is about to, before the first packet).
  [[nodiscard]] uint32_t buf_alloc() const { return advertised_buf_alloc_; }
  // Guest->host bytes this connection counts against the VM's budget (0 without one).
  [[nodiscard]] uint32_t budget_hold() const { return holds_budget_ ? hold_ : 0; }
  [[nodiscard]] uint32_t rx_cnt() const { return rx_cnt_; }    // guest bytes accepted
  [[nodiscard]] uint32_t fwd_cnt() const { return fwd_cnt_; }  // guest bytes that reached the host endpoint
  [[nodiscard]] uint32_t tx_cnt() const { return tx_cnt_; }    // bytes we sent to the guest
  [[nodiscard]] uint32_t last_advertised_fwd_cnt() const { return advertised_fwd_cnt_; }
  // How many more bytes the guest may send: the last advertised buf_alloc
  // beyond the last advertised fwd_cnt, less what it sent since.
  [[nodiscard]] uint32_t guest_credit() const;
  // How many bytes we may send the guest: peer_buf_alloc - (tx_cnt - peer_fwd_cnt),
  // zero if the guest's numbers are inconsistent.
  [[nodiscard]] uint32_t peer_credit() const;
  void update_peer_credit(uint32_t peer_buf_alloc, uint32_t peer_fwd_cnt);
  [[nodiscard]] uint32_t peer_buf_alloc() const { return peer_buf_alloc_; }

  // ---- packets from the guest ----
  // Routes one packet (op already known to be 1..7) addressed to this
  // connection. Violations reset the connection (state kDead, RST pending).
  GuestPacketVerdict on_guest_packet(const PacketHeader& header, std::span<const iovec> payload);

  // ---- gathered writes (streams) ----
  // A TX pass writes all of one connection's RW payloads with one call.
  // True if this RW would be accepted and written straight to the host, so
  // that holding its write back to the end of the run changes nothing else.
  [[nodiscard]] bool would_forward_at_once(const PacketHeader& header) const;
  // While set, such data is only accounted (deferred_bytes()); the caller
  // keeps the payloads and hands them to send_deferred() before anything else
  // happens to this connection.
  void defer_host_writes(bool on) { defer_host_writes_ = on; }
  [[nodiscard]] uint32_t deferred_bytes() const { return deferred_bytes_; }
  // `payload`: exactly the deferred bytes, in order.
  void send_deferred(std::span<const iovec> payload);

  // ---- host endpoint ----
  // Readiness of the host endpoint: records readability, flushes the TX
  // buffer when writable and notices a fully closed peer.
  void on_host_events(HostEvents events);
  [[nodiscard]] bool tx_buffered() const { return !tx_buffer_.empty(); }
  [[nodiscard]] size_t tx_buffered_bytes() const { return tx_buffer_.size(); }
  [[nodiscard]] bool tx_buffer_allocated() const { return tx_buffer_.allocated(); }
  [[nodiscard]] size_t tx_buffer_capacity() const { return tx_buffer_.capacity(); }
  // Guest bytes the host has not read yet: our TX buffer plus what the host
  // endpoint reports unread. Falls as the host reads; 0 once closed.
  [[nodiscard]] size_t host_backlog() const;

  // Bytes the host sent right after its CONNECT line; they reach the guest
  // before anything received from the endpoint afterwards.
  void set_early_host_bytes(std::span<const uint8_t> bytes);

  // Whether host->guest data may flow now (state, half-close, readability),
  // credit aside.
  [[nodiscard]] bool wants_to_send_data() const;
  // The RX credit contract, in one place: how many host bytes may go to the
  // guest now. Zero when there is nothing to send, or when the guest left us
  // no credit; then a credit stall begins (see note_credit_starved) and the
  // connection must not be scheduled again until the guest's next
  // credit update, or the RX pass would spin. RX buffers are the pump's to check.
  uint32_t sendable_to_guest();
  // Whether a data packet could go out now (no side effect).
  [[nodiscard]] bool can_send_to_guest() const { return wants_to_send_data() && peer_credit() >= credit_needed(); }
  // kSeqpacket: the size of the host's next message (peeked once, kept until
  // it is read), or nothing if none is waiting (EOF and errors update the
  // state as read_from_host does). A message goes to the guest whole, so it
  // waits for credit >= its size; one above peer_buf_alloc() never fits.
  std::optional<uint32_t> next_host_message();
  [[nodiscard]] bool host_readable() const { return host_readable_ || !early_host_bytes_.empty(); }

  enum class ReadStatus { kData, kWouldBlock, kEof, kError };
  // Reads host bytes straight into `into` (guest RX payload areas). On kData
  // `bytes` is set; the caller must then packetize exactly that many bytes and
  // call record_sent_to_guest(). kEof / kError update the state (SHUTDOWN or
  // full close towards the guest).
  ReadStatus read_from_host(std::span<const iovec> into, size_t& bytes);
  void record_sent_to_guest(uint32_t bytes) { tx_cnt_ += bytes; }

  // Data is waiting on the host side but the guest gave us no credit: a
  // stall begins (counted once, until its credit moves). A kSeqpacket message
  // may need more credit than a guest returns unasked, so it asks at once. A
  // stream does not: Linux never sends CREDIT_REQUEST and its receiver returns
  // credit unasked once its reader frees the window, so every guest that
  // works with Linux hosts does; asking at once only adds a round trip. The
  // router asks (request_credit) if a stall outlasts MuxerLimits::credit_request_delay.
  void note_credit_starved();
  [[nodiscard]] bool credit_stalled() const { return credit_stalled_; }
  [[nodiscard]] uint64_t credit_stalls() const { return credit_stalls_; }
  // Owes one CREDIT_REQUEST, not another until the guest's credit moves.
  void request_credit();

  // ---- control packets towards the guest ----
  [[nodiscard]] uint8_t pending_control() const { return pending_control_; }
  // The next control packet to send, highest priority first, and clears it.
  // Sending our RST from kDead moves the connection to kForgotten.
  std::optional<PacketHeader> take_control_packet();
  // Header for a packet on this connection. Every packet carries our current
  // buf_alloc/fwd_cnt, so building one counts as advertising credit.
  PacketHeader make_header(Op op, uint32_t len = 0, uint32_t flags = 0);

  // ---- transitions driven by the muxer ----
  // Protocol error, timeout, or a guest that never answered our full
  // SHUTDOWN: close the host endpoint, owe the guest an RST (state kDead).
  void reset();
  // Guest RST: close the host endpoint, owe nothing.
  void forget();
  // Queues a REQUEST (host-initiated connections start with one).
  void request_connect() { pending_control_ |= control::kRequest; }
  // Guest-initiated: the host endpoint is connected, answer with RESPONSE.
  void accept_connect() { pending_control_ |= control::kResponse; }

 private:
  GuestPacketVerdict on_guest_accept();
  GuestPacketVerdict on_established_packet(Op op, const PacketHeader& header, std::span<const iovec> payload);
  GuestPacketVerdict accept_guest_data(std::span<const iovec> payload, uint32_t len, uint32_t flags);
  // kSeqpacket (connection_seqpacket.cpp): collect a message up to EOM, send it whole.
  GuestPacketVerdict accept_message_part(std::span<const iovec> payload, uint32_t len, bool ends_message);
  // Writes what it can and buffers the rest (streams).
  void forward_to_host(std::span<const iovec> payload, uint32_t len);
  void flush_tx_messages();
  // Everything the host can be sent now has been (a partial message waits for its EOM).
  [[nodiscard]] bool flushed() const { return is_seqpacket() ? tx_messages_.empty() : tx_buffer_.empty(); }
  void drop_tx_bytes();
  // Credit one host->guest data packet needs: a whole message for kSeqpacket.
  [[nodiscard]] uint32_t credit_needed() const;
  [[nodiscard]] bool next_message_never_fits() const {
    return next_message_bytes_.has_value() && *next_message_bytes_ > peer_buf_alloc_;
  }
  void on_guest_shutdown(uint32_t flags);
  void flush_tx();
  void after_forwarded(uint32_t guest_bytes);
  // ---- the credit promise (see CreditBudget) ----
  // Guest bytes we may still have to hold: promised up to
  // advertised_fwd_cnt + advertised_buf_alloc, minus what reached the host.
  [[nodiscard]] uint32_t owed_to_guest() const { return advertised_fwd_cnt_ + advertised_buf_alloc_ - fwd_cnt_; }
  [[nodiscard]] uint32_t must_hold() const;
  // The buf_alloc for the next packet: as much of the window as the budget
  // gives, never less than what is already promised.
  uint32_t window_to_advertise();
  // Gives the budget back what is no longer promised or stored.
  void release_unneeded();
  void leave_budget();
  // Sizes the TX buffer before bytes are appended: to the whole window last
  // advertised, which the budget already holds, not just to what is still owed
  // (smaller once bytes were forwarded since); the next CREDIT_UPDATE owes the
  // guest that whole window again, and growing then would move every held byte.
  void size_tx_buffer() {
    tx_buffer_.set_capacity(static_cast<size_t>(std::max(owed_to_guest(), advertised_buf_alloc_)) + kUncountedReserve);
  }
  void advertise_if_guest_out_of_credit();
  void maybe_finish_guest_send_side();
  // kConnectingToHost: `connected` answers the guest, a failure resets.
  void on_connect_finished(HostEvents events);
  void on_host_write_closed();
  void on_host_eof();
  void on_host_fully_closed();
  void close_host();

  ConnectionParams params_;
  std::unique_ptr<HostEndpoint> host_;
  SocketType socket_type_;
  ConnectionState state_;

  uint32_t rx_cnt_ = 0;
  uint32_t fwd_cnt_ = 0;
  uint32_t advertised_fwd_cnt_ = 0;
  uint32_t advertised_buf_alloc_ = 0;
  uint32_t tx_cnt_ = 0;
  uint32_t peer_buf_alloc_ = 0;
  uint32_t peer_fwd_cnt_ = 0;

  TxRingBuffer tx_buffer_;
  size_t uncounted_front_bytes_ = 0;  // accept greeting bytes at the front of tx_buffer_
  // kSeqpacket: lengths of the whole messages in tx_buffer_ (the greeting is
  // one), oldest first; the bytes after them are a message still without EOM.
  MessageLengths tx_messages_;
  uint32_t partial_message_bytes_ = 0;
  std::optional<uint32_t> next_message_bytes_;  // kSeqpacket: peeked size of the host's next message
  std::vector<uint8_t> early_host_bytes_;

  uint8_t pending_control_ = 0;
  uint32_t shutdown_flags_to_send_ = 0;
  uint32_t guest_shutdown_ = 0;  // SHUTDOWN flags the guest sent (cumulative)

  bool host_readable_ = false;
  bool host_writable_ = true;
  bool host_eof_ = false;
  bool host_hup_ = false;
  bool host_write_closed_ = false;
  bool host_write_shut_ = false;  // we shut the host endpoint's send side
  bool credit_request_sent_ = false;
  bool credit_stalled_ = false;
  uint64_t credit_stalls_ = 0;

  bool defer_host_writes_ = false;
  uint32_t deferred_bytes_ = 0;

  bool holds_budget_ = false;
  uint32_t hold_ = 0;  // bytes counted in params_.budget for us
  // kSeqpacket: the window we advertise, fixed at the first one (at most the
  // host socket's largest message).
  uint32_t message_window_ = 0;
};

}  // namespace vhost_vsock::vsock
