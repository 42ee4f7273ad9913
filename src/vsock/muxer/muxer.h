// The per-VM vsock multiplexer: every stream between this guest and the host,
// the hybrid listener on uds-path (CONNECT <port>), guest-initiated connects to
// <uds-path>_<port>, and the scheduling of packets into the guest's RX queue.
// It knows virtqueues, not vhost-user: the daemon glue hands it the queues.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>

#include "base/event_loop.h"
#include "virtio/queue.h"

namespace vhost_vsock::vsock {

struct MuxerLimits {
  // Our buf_alloc per connection: the most guest->host bytes we hold for one
  // connection while its host socket would block (vhost-device-vsock's
  // --tx-buffer-size, default 64 KiB).
  uint32_t tx_buffer_size = 64 * 1024;
  size_t max_connections = 65536;
  std::chrono::milliseconds handshake_timeout{5000};  // host peer must finish "CONNECT <port>\n"
  std::chrono::milliseconds request_timeout{2000};    // guest must answer our REQUEST
  std::chrono::milliseconds shutdown_timeout{2000};   // guest must RST after our full SHUTDOWN
  size_t max_connect_line = 64;                       // bytes, newline included
};

struct MuxerOptions {
  uint64_t guest_cid = 0;
  // Host listener; guest connects go to uds_path + "_" + port. Empty: no
  // listener (host-initiated connections disabled), for tests.
  std::string uds_path;
  MuxerLimits limits;
};

struct MuxerStats {
  uint64_t connections_opened = 0;  // reached ESTABLISHED
  uint64_t connections_active = 0;
  uint64_t host_connects_refused = 0;  // guest REQUEST with no host listener
  uint64_t handshake_failures = 0;     // bad/over-long/silent CONNECT lines, guest refusals, timeouts
  uint64_t packets_from_guest = 0;
  uint64_t packets_to_guest = 0;
  uint64_t bytes_from_guest = 0;
  uint64_t bytes_to_guest = 0;
  uint64_t dropped_bad_address = 0;  // src_cid != guest cid or dst_cid != host
  uint64_t dropped_malformed = 0;    // unparseable chains, unknown type/op
  uint64_t resets_sent = 0;
  uint64_t credit_violations = 0;    // guest sent beyond our advertised credit
  uint64_t protocol_violations = 0;  // op not valid in the connection's state
  uint64_t rx_chains_too_small = 0;  // RX chains returned unused (no room for a header, or for data)
  uint64_t orphan_rsts_dropped = 0;  // RST replies lost to a full queue: 0 (TX backpressure); a tripwire
  uint64_t rx_passes = 0;            // RX scheduling passes run (wake-ups of the RX path)
  uint64_t tx_passes = 0;            // TX passes run (each drains the ring up to a budget)
};

class Muxer {
 public:
  static constexpr uint16_t kRxQueue = 0;
  static constexpr uint16_t kTxQueue = 1;

  // Creates the uds-path listener (replacing a stale socket file) on `loop`.
  // Throws std::runtime_error naming the path if it cannot.
  Muxer(base::EventLoop& loop, MuxerOptions options);
  ~Muxer();  // resets every connection, closes and unlinks the listener
  Muxer(const Muxer&) = delete;
  Muxer& operator=(const Muxer&) = delete;

  // The guest's queues come and go with the front-end; each interrupts the
  // guest itself (Queue::notify()). While a queue is missing, work for it
  // waits (bounded by the limits above).
  void attach_queue(uint16_t index, virtio::Queue& queue);
  void detach_queue(uint16_t index);
  void on_queue_kicked(uint16_t index);
  // The guest's driver state is gone (front-end disconnect, device reset,
  // reboot): close every host socket and forget every connection.
  void reset_all_connections();
  // The virtio features the driver acked (vsock bits such as
  // VIRTIO_VSOCK_F_SEQPACKET included); 0 until negotiated.
  void set_negotiated_features(uint64_t features);
  [[nodiscard]] uint64_t negotiated_features() const;

  [[nodiscard]] const MuxerStats& stats() const;

 private:
  class Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace vhost_vsock::vsock
