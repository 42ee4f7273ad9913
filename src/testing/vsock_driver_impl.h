// Private state of GuestVsockDriver, shared by vsock_driver.cpp (rings, I/O
// thread, packet plumbing) and vsock_stream.cpp (the stream state machine).
// Everything here is guarded by Impl::mu.
#pragma once

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <thread>
#include <utility>
#include <vector>

#include "base/unique_fd.h"
#include "testing/vsock_driver.h"

namespace vhost_vsock::testing {

using Clock = std::chrono::steady_clock;

// A stream's received bytes in arrival order. Linux queues each received
// packet's buffer on the socket and copies it out once, in recvmsg
// (virtio_transport_recv_enqueue, virtio_transport_stream_do_dequeue), while
// fresh buffers refill the ring; so here a chunk is normally the RX buffer the
// device filled (`slot`), kept off the ring until it has been read. Small
// payloads are copied into an owned chunk, as Linux copies packets of up to
// GOOD_COPY_LEN bytes into the previous buffer instead of queueing a whole
// buffer for them, and so are larger ones once every spare RX buffer is held.
struct RxChunk {
  int32_t slot = -1;   // the RX buffer's slot, or -1: the bytes are in `owned`
  uint32_t begin = 0;  // first unread byte, in the slot's payload or in `owned`
  uint32_t end = 0;
  std::vector<uint8_t> owned;
};

class RxQueue {
 public:
  static constexpr size_t kOwnedChunkBytes = 4096;  // a Linux RX buffer

  [[nodiscard]] size_t size() const { return size_; }
  [[nodiscard]] bool empty() const { return size_ == 0; }
  void push_held(uint32_t slot, uint32_t len) {
    chunks_.push_back({static_cast<int32_t>(slot), 0, len, {}});
    size_ += len;
  }
  void push_copy(std::span<const uint8_t> bytes) {
    if (bytes.empty()) return;
    if (chunks_.empty() || chunks_.back().slot >= 0 || chunks_.back().owned.size() + bytes.size() > kOwnedChunkBytes) {
      chunks_.emplace_back();
    }
    RxChunk& tail = chunks_.back();
    tail.owned.insert(tail.owned.end(), bytes.begin(), bytes.end());
    tail.end = static_cast<uint32_t>(tail.owned.size());
    size_ += bytes.size();
  }
  // Copies out up to out.size() bytes. `payload_of(slot)` gives a held
  // buffer's payload; `release(slot)` is called once it has been read.
  template <typename PayloadOf, typename Release>
  size_t pop(std::span<uint8_t> out, PayloadOf payload_of, Release release) {
    size_t done = 0;
    while (done < out.size() && !chunks_.empty()) {
      RxChunk& chunk = chunks_.front();
      const uint8_t* bytes = chunk.slot >= 0 ? payload_of(static_cast<uint32_t>(chunk.slot)) : chunk.owned.data();
      const size_t n = std::min<size_t>(out.size() - done, chunk.end - chunk.begin);
      std::memcpy(out.data() + done, bytes + chunk.begin, n);
      chunk.begin += static_cast<uint32_t>(n);
      done += n;
      if (chunk.begin == chunk.end) {
        if (chunk.slot >= 0) release(static_cast<uint32_t>(chunk.slot));
        chunks_.pop_front();
      }
    }
    size_ -= done;
    return done;
  }
  // Every held buffer's unread bytes become an owned copy and the buffer is
  // released: for a connection that leaves the table with data unread.
  template <typename PayloadOf, typename Release>
  void unhold(PayloadOf payload_of, Release release) {
    for (RxChunk& chunk : chunks_) {
      if (chunk.slot < 0) continue;
      const uint8_t* bytes = payload_of(static_cast<uint32_t>(chunk.slot));
      chunk.owned.assign(bytes + chunk.begin, bytes + chunk.end);
      release(static_cast<uint32_t>(chunk.slot));
      chunk = RxChunk{-1, 0, static_cast<uint32_t>(chunk.owned.size()), std::move(chunk.owned)};
    }
  }

 private:
  std::deque<RxChunk> chunks_;
  size_t size_ = 0;
};

// A whole seqpacket message, as received (EOR: the sender marked a record end).
struct ReceivedMessage {
  std::string bytes;  // handed to recv_message() as is, without another copy
  bool eor = false;
};

struct Connection {
  uint32_t local_port = 0;
  uint32_t peer_port = 0;
  uint16_t type = static_cast<uint16_t>(vsock::SocketType::kStream);  // every packet carries it
  StreamState state = StreamState::kConnecting;
  bool reset_received = false;
  bool refused = false;
  bool in_table = true;
  uint32_t peer_shutdown = 0;   // SHUTDOWN flags the peer sent
  uint32_t local_shutdown = 0;  // SHUTDOWN flags we sent
  // Receive side: our credit. A stream's bytes queue in `rx`; a seqpacket's
  // whole messages in `messages`, the one still missing its EOM in `partial`.
  RxQueue rx;
  std::deque<ReceivedMessage> messages;
  std::string partial;
  size_t message_bytes = 0;        // in `messages` and `partial`
  uint32_t rx_cnt = 0;             // payload bytes received, wrapping
  uint32_t fwd_cnt = 0;            // payload bytes the application consumed, wrapping
  uint32_t last_fwd_cnt_sent = 0;  // fwd_cnt in the last packet we sent
  // Send side: the peer's credit.
  uint32_t tx_cnt = 0;
  uint32_t peer_buf_alloc = 0;
  uint32_t peer_fwd_cnt = 0;
  Clock::time_point close_deadline{};
};

struct PendingPacket {
  vsock::PacketHeader header;
  std::vector<uint8_t> payload;
};

struct GuestVsockDriver::Impl {
  Impl(GuestVsockDriver& owner, const GuestOptions& options) : owner(owner), options(options) {}

  GuestVsockDriver& owner;
  const GuestOptions& options;
  uint64_t guest_cid = 0;
  std::unique_ptr<GuestRam> ram;
  std::unique_ptr<GuestRing> rx_ring;
  std::unique_ptr<GuestRing> tx_ring;
  VhostUserFrontend* frontend = nullptr;

  mutable std::mutex mu;
  std::condition_variable cv;
  std::thread io_thread;
  base::UniqueFd wake_fd;
  base::UniqueFd epoll_fd;  // call fds and wake_fd, edge-triggered
  bool stopping = false;
  bool running = false;
  bool rx_paused = false;
  // Threads waiting for a TX buffer (or for queued control packets to go) and
  // in wait_stats(): the I/O thread wakes them for passes that reap no RX.
  uint32_t tx_space_waiters = 0;
  uint32_t stats_waiters = 0;

  // Packet buffers: each slot is [44-byte header][payload], contiguous.
  // RX has spare_rx_slots more than the ring can hold, which streams keep
  // (held_rx_slots of them) until their data is read; see RxQueue.
  std::vector<uint64_t> rx_slots;
  uint32_t spare_rx_slots = 0;
  uint32_t held_rx_slots = 0;
  std::vector<uint32_t> free_rx_slots;
  std::vector<int32_t> rx_slot_of_head;
  std::vector<uint64_t> tx_slots;
  std::vector<uint32_t> free_tx_slots;
  std::vector<int32_t> tx_slot_of_head;
  bool tx_kick_pending = false;
  uint16_t tx_kick_from = 0;
  std::deque<PendingPacket> pending;  // control packets waiting for a TX buffer

  std::map<std::pair<uint32_t, uint32_t>, std::shared_ptr<Connection>> connections;  // (local, peer)
  std::map<uint32_t, std::deque<std::shared_ptr<Connection>>> listeners;
  std::map<uint32_t, uint16_t> listener_types;  // by port
  bool seqpacket_negotiated = false;            // VIRTIO_VSOCK_F_SEQPACKET acked
  uint32_t next_local_port = 49152;

  DriverStats stats;
  std::vector<std::string> violation_log;
  std::vector<CapturedPacket> captured;

  // --- vsock_driver.cpp: rings and plumbing (mu held) ---
  void setup_buffers();
  void watch_interrupts();
  void io_loop();
  // True when a waiter may have something to do (see its comment).
  bool process_used();
  void refill_rx();
  // True when a stream kept the buffer (it is freed once read).
  bool handle_rx_buffer(uint32_t slot, uint32_t used_len);
  // A stream's queued bytes: copied out, or dropped (read_stream with out empty
  // is a no-op; drop_stream_rx returns how many were dropped).
  size_t read_stream(Connection& conn, std::span<uint8_t> out);
  size_t drop_stream_rx(Connection& conn);
  void unhold_stream_rx(Connection& conn);
  [[nodiscard]] const uint8_t* held_payload(uint32_t slot) const;
  void release_held(uint32_t slot);
  // Publishes one packet if a TX buffer is free; false otherwise.
  bool publish_tx(const vsock::PacketHeader& header, std::span<const uint8_t> payload);
  [[nodiscard]] bool tx_buffer_available() const;
  void flush_tx_kick();
  void flush_pending();
  void wake_io_thread() const;
  void violation(std::string message);
  void stop_io_thread(std::unique_lock<std::mutex>& lock);

  // --- vsock_stream.cpp: protocol (mu held) ---
  // `rx_slot` holds the packet; true when a stream kept it (RxQueue).
  bool handle_packet(const vsock::PacketHeader& header, std::span<const uint8_t> payload, uint32_t rx_slot);
  // handle_packet's parts: false (and a violation) unless host -> this guest, STREAM.
  [[nodiscard]] bool addressed_to_us(const vsock::PacketHeader& header);
  void handle_packet_without_connection(const vsock::PacketHeader& header, vsock::Op op);
  void handle_packet_while_connecting(Connection& conn, const vsock::PacketHeader& header, vsock::Op op);
  bool receive_data(Connection& conn, const vsock::PacketHeader& header, std::span<const uint8_t> payload,
                    uint32_t rx_slot);
  void receive_message_part(Connection& conn, const vsock::PacketHeader& header, std::span<const uint8_t> payload);
  // Sends `data` in RW packets within the peer's credit; a message (even an
  // empty one) ends with a packet carrying `last_flags`. False on timeout,
  // reset or shutdown.
  bool send_data(Connection& conn, std::span<const uint8_t> data, bool message, uint32_t last_flags,
                 std::unique_lock<std::mutex>& lock, Clock::time_point deadline);
  // Nothing queued for the application (stream bytes or message bytes).
  [[nodiscard]] static bool nothing_to_read(const Connection& conn) {
    return conn.rx.empty() && conn.message_bytes == 0;
  }
  void receive_shutdown(Connection& conn, const vsock::PacketHeader& header);
  void reset_unexpected(Connection& conn, const vsock::PacketHeader& header, const char* where);
  [[nodiscard]] vsock::PacketHeader header_for(Connection& conn, vsock::Op op, uint32_t len = 0,
                                               uint32_t flags = 0) const;
  // Control packets never block: they queue when TX is full.
  void send_control(Connection& conn, vsock::Op op, uint32_t flags = 0);
  void send_orphan_reset(const vsock::PacketHeader& to);
  void update_peer_credit(Connection& conn, const vsock::PacketHeader& header);
  void maybe_send_credit_update(Connection& conn);
  void maybe_finish_peer_shutdown(Connection& conn);
  void mark_closed(Connection& conn);
  bool check_close_timers();  // true if a connection closed
  uint32_t allocate_local_port();
  [[nodiscard]] static uint32_t peer_free_credit(const Connection& conn);
};

}  // namespace vhost_vsock::testing
