// The per-VM vsock multiplexer: every stream between this guest and the host,
// the hybrid listener on uds-path (CONNECT <port>), guest-initiated connects to
// <uds-path>_<port>, and the scheduling of packets into the guest's RX queue.
// It knows virtqueues, not vhost-user: the daemon glue hands it the queues.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "base/event_loop.h"
#include "virtio/queue.h"
#include "vsock/router/limits_and_stats.h"

namespace vhost_vsock::vsock {

struct MuxerOptions {
  uint64_t guest_cid = 0;
  // Host listener; guest connects go to uds_path + "_" + port. Empty: no
  // listener (host-initiated connections disabled), for tests.
  std::string uds_path;
  MuxerLimits limits;
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
  // <uds-path>_seqpacket if its SOCK_SEQPACKET listener is open, else empty
  // (no uds-path, or the path could not be used: streams work regardless).
  [[nodiscard]] std::string seqpacket_uds_path() const;

 private:
  class Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace vhost_vsock::vsock
