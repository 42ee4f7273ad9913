// A guest that writes its rings by hand, for attacks below the packet level
// (descriptor loops, addresses outside memory, direction mismatches, avail
// index jumps). It uses the simulator's front-end and ring layout but none of
// its driver logic: every descriptor is placed explicitly, and every used
// entry the device returns is logged with its length.
//
// Descriptor indices below kAttackBase carry ordinary traffic (RX buffers,
// TX packets); indices from kAttackBase up belong to the test. Single
// threaded: call pump() (or a wait_*) to reap.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "testing/driver_vring.h"
#include "testing/frontend.h"
#include "testing/guest_ram.h"
#include "vsock/packet/header.h"

namespace vhost_vsock::hostile {

struct RawPacket {
  vsock::PacketHeader header;
  std::string payload;
};

class RawGuest {
 public:
  static constexpr uint16_t kQueueSize = 64;
  static constexpr uint16_t kAttackBase = 32;
  static constexpr uint16_t kRxBuffers = kAttackBase;    // one writable descriptor each
  static constexpr uint16_t kTxSlots = kAttackBase / 2;  // header + payload descriptor pairs
  static constexpr uint32_t kRxPayload = 4096;
  static constexpr uint16_t kRx = 0;
  static constexpr uint16_t kTx = 1;

  // Sets the device up like QEMU would (no EVENT_IDX, INDIRECT_DESC on) and
  // posts kRxBuffers ordinary RX buffers. Throws on setup failure.
  explicit RawGuest(const std::string& vhost_socket, bool post_rx_buffers = true);

  [[nodiscard]] uint64_t cid() const { return cid_; }
  testing::GuestRam& ram() { return *ram_; }
  testing::DriverVring& ring(uint16_t queue) { return queue == kRx ? *rx_ : *tx_; }
  testing::VhostUserFrontend& frontend() { return *frontend_; }

  // A STREAM header from us to the host with our credit fields.
  [[nodiscard]] vsock::PacketHeader header(vsock::Op op, uint32_t src_port, uint32_t dst_port, uint32_t len = 0) const;
  // One packet as a header descriptor plus a payload descriptor (if any).
  bool send(const vsock::PacketHeader& header, std::span<const uint8_t> payload = {},
            std::chrono::milliseconds timeout = std::chrono::milliseconds(2000));
  bool send(const vsock::PacketHeader& header, std::string_view payload) {
    return send(header, std::span(reinterpret_cast<const uint8_t*>(payload.data()), payload.size()));
  }

  // Guest memory for attack descriptors (zeroed, never reused).
  uint64_t scratch(size_t len, size_t align = 16) { return ram_->alloc(len, align); }
  // Writes descriptor `index` (>= kAttackBase, or any index of a ring the
  // test owns) of `queue`.
  void write_descriptor(uint16_t queue, uint16_t index, uint64_t addr, uint32_t len, uint16_t flags, uint16_t next = 0);
  // Publishes `head` on `queue` and kicks.
  void publish(uint16_t queue, uint16_t head);
  void kick(uint16_t queue) { frontend_->kick(queue); }

  // Reaps both used rings: logs every entry, re-posts ordinary RX buffers and
  // keeps their packets, frees ordinary TX slots.
  void pump();
  // The length the device returned for `head`, waiting up to `timeout`.
  // Considers entries returned since the last forget_used().
  std::optional<uint32_t> wait_used(uint16_t queue, uint16_t head, std::chrono::milliseconds timeout);
  void forget_used(uint16_t queue) { used_log_[queue].clear(); }
  // The first received packet matching `match` (kept packets are searched).
  std::optional<RawPacket> wait_packet(const std::function<bool(const RawPacket&)>& match,
                                       std::chrono::milliseconds timeout);
  [[nodiscard]] const std::vector<RawPacket>& packets() const { return packets_; }
  // Ordinary RX buffers that came back with a length the guest cannot parse.
  [[nodiscard]] uint64_t malformed_rx() const { return malformed_rx_; }

  // Posts the ordinary RX buffers (done by the constructor unless told not to).
  void post_ordinary_rx();

  // Opens a stream to the host: REQUEST, then waits for RESPONSE (or RST).
  bool connect(uint32_t local_port, uint32_t peer_port, std::chrono::milliseconds timeout);

 private:
  struct UsedRecord {
    uint16_t id;
    uint32_t len;
  };

  void post_rx(uint16_t index);

  std::unique_ptr<testing::GuestRam> ram_;
  std::unique_ptr<testing::DriverVring> rx_;
  std::unique_ptr<testing::DriverVring> tx_;
  std::unique_ptr<testing::VhostUserFrontend> frontend_;
  uint64_t cid_ = 0;
  std::vector<uint64_t> rx_buffers_;  // gpa per ordinary RX descriptor
  std::vector<uint64_t> tx_buffers_;  // gpa per TX slot (header, then payload)
  std::vector<bool> tx_busy_;
  std::vector<UsedRecord> used_log_[2];
  std::vector<RawPacket> packets_;
  uint64_t malformed_rx_ = 0;
};

}  // namespace vhost_vsock::hostile
