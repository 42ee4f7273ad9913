// The per-VM vsock multiplexer: every stream between this guest and the host,
// the hybrid listener on uds-path (CONNECT <port>), guest-initiated connects to
// <uds-path>_<port>, and the scheduling of packets into the guest's RX queue.
// It knows virtqueues, not vhost-user: the daemon glue hands it the queues.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "base/event_loop.h"
#include "virtio/queue.h"
#include "vsock/router/limits_and_stats.h"
#include "vsock/transport/vsock_forward.h"

namespace vhost_vsock::vsock {

class SiblingHub;

// One VM of the daemon as sibling routing sees it.
struct SiblingVm {
  uint64_t cid = 0;
  std::vector<std::string> groups;  // vhost-device-vsock's groups ("default" unless given)
  size_t max_connections = 0;       // its cap; a sibling connection counts against both VMs'
};
// Shared by the muxers of one daemon: a guest reaches another VM's guest when
// the two share a group. Build it before the muxers; it must outlive them.
std::shared_ptr<SiblingHub> make_sibling_hub(const std::vector<SiblingVm>& vms);

// vhost-device-vsock's vsock backend (--forward-cid, --forward-listen), used
// instead of uds-path.
struct VsockForwarding {
  uint32_t cid = 0;                    // a guest connect to port P goes to AF_VSOCK (cid, P)
  std::vector<uint32_t> listen_ports;  // host AF_VSOCK listeners (VMADDR_CID_ANY, P) -> guest port P
  // Tests replace AF_VSOCK with stand-in families (never AF_VSOCK on the test
  // host); empty: (cid, P) and vsock_listen_address(P).
  ForwardAddressFor connect_address;
  ForwardAddressFor listen_address;
};

struct MuxerOptions {
  uint64_t guest_cid = 0;
  // Host listener; guest connects go to uds_path + "_" + port. Empty: no
  // listener (host-initiated connections disabled), for tests.
  std::string uds_path;
  MuxerLimits limits;
  std::shared_ptr<SiblingHub> siblings;    // null: no sibling routing (packets for other CIDs get an RST)
  std::optional<VsockForwarding> forward;  // set: guest connects and host listeners use it, not uds_path
};

// One live connection as the metrics listing shows it (a copy, taken on the
// muxer's thread). The byte counts are the virtio counters, modulo 2^32.
struct ConnectionInfo {
  uint64_t peer_cid = 2;  // the host (2), or the sibling VM at the other end
  uint32_t guest_port = 0;
  uint32_t host_port = 0;  // our side's port (the <uds-path>_<port> suffix for guest connects)
  std::string host_path;   // guest connects: <uds-path>_<port>; host connects: uds-path (or <uds-path>_seqpacket); ""
                           // for siblings; forwarding: vsock:<cid>:<port> / vsock-listen:<port>
  bool guest_initiated = false;
  const char* type = "";   // "stream" or "seqpacket"
  const char* state = "";  // ConnectionState spelled out
  std::chrono::milliseconds age{0};
  uint32_t bytes_from_guest = 0;  // rx_cnt
  uint32_t bytes_to_guest = 0;    // tx_cnt
  uint64_t buffered_to_host = 0;  // guest bytes the host has not read yet
  uint32_t guest_credit = 0;      // bytes the guest may still send us
  uint32_t peer_credit = 0;       // bytes we may still send the guest
};

class Muxer {
 public:
  static constexpr uint16_t kRxQueue = 0;
  static constexpr uint16_t kTxQueue = 1;

  // Creates the uds-path listener (replacing a stale socket file), or the
  // forward-listen listeners, on `loop`. Throws std::runtime_error naming the
  // path or port if it cannot.
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

  [[nodiscard]] MuxerStats stats() const;
  // <uds-path>_seqpacket if its SOCK_SEQPACKET listener is open, else empty
  // (no uds-path, or the path could not be used: streams work regardless).
  [[nodiscard]] std::string seqpacket_uds_path() const;
  // Appends every live connection to `out` (for the metrics listing).
  void list_connections(std::vector<ConnectionInfo>* out) const;

 private:
  class Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace vhost_vsock::vsock
