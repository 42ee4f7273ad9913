// A small virtio-vsock guest stack (modelled on Linux's
// vmw_vsock_virtio_transport) over a VhostUserFrontend and two GuestRings
// (split DriverVrings, or PackedDriverVrings with GuestOptions::packed_ring):
// it keeps the RX queue stocked, sends TX packets, and runs stream sockets
// with exact credit accounting in both directions. Whatever the device does
// wrong (bad addresses, credit overruns, malformed used entries) is recorded
// as a violation that tests can assert on.
//
// Threading: one I/O thread waits on the call eventfds and processes used
// rings; every public call is thread-safe and every wait has a timeout.
#pragma once

#include <sys/socket.h>

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "testing/driver_vring.h"
#include "testing/frontend.h"
#include "testing/guest_ram.h"
#include "testing/guest_ring.h"
#include "testing/packed_driver_vring.h"
#include "vsock/packet/header.h"

namespace vhost_vsock::testing {

using Millis = std::chrono::milliseconds;

// How a packet is laid out over descriptors.
enum class BufferLayout {
  kSplit,       // header and payload in separate descriptors (Linux TX; RX before the sk_buff rework)
  kMerged,      // header and payload in one descriptor (Linux RX with sk_buff, Debian 12's 6.1 included)
  kFragmented,  // header split in two, payload in up to three pieces (stress)
};

struct GuestOptions {
  uint16_t queue_size = 256;
  bool packed_ring = false;  // VIRTIO_F_RING_PACKED (as QEMU's packed=on), else split rings
  bool event_idx = true;
  bool indirect = false;  // publish every chain through one INDIRECT descriptor
  BufferLayout rx_layout = BufferLayout::kMerged;
  BufferLayout tx_layout = BufferLayout::kSplit;
  // Payload bytes per RX buffer. Linux posts one page-sized sk_buff per
  // buffer, SKB_WITH_OVERHEAD(4096) = 3776 bytes on x86-64, header included:
  // what the daemon sees from the Debian 12 guest of the e2e tests and the VM
  // benchmark (older kernels posted a 4096-byte payload after the header).
  uint32_t rx_buffer_size = 3776 - static_cast<uint32_t>(vsock::kHeaderSize);
  uint32_t tx_max_payload = 64 * 1024;  // Linux: VIRTIO_VSOCK_MAX_PKT_BUF_SIZE
  uint32_t buf_alloc = 256 * 1024;      // our receive buffer per stream (Linux default)
  // Ack VIRTIO_VSOCK_F_SEQPACKET when the device offers it (Linux >= 5.14).
  bool seqpacket = true;
  bool split_memory_regions = false;  // see FrontendOptions
  // Linux answers a full SHUTDOWN from the peer with RST once nothing is left
  // to read. Turn off to test the device's shutdown timeout.
  bool reset_on_peer_shutdown = true;
  Millis close_timeout{8000};    // after close(), RST if the peer has not (Linux: 8 s)
  bool capture_packets = false;  // keep every packet the device sends (see wait_packet)
  size_t ram_size = 0;           // 0: computed from the options
  Millis setup_timeout{5000};
};

struct DriverStats {
  uint64_t packets_received = 0;
  uint64_t packets_sent = 0;
  uint64_t bytes_received = 0;  // RW payload
  uint64_t bytes_sent = 0;
  uint64_t credit_updates_sent = 0;
  uint64_t credit_updates_received = 0;
  uint64_t credit_requests_received = 0;
  uint64_t resets_received = 0;
  uint64_t resets_sent = 0;
  uint64_t rx_interrupts = 0;
  uint64_t tx_interrupts = 0;
  uint64_t rx_kicks = 0;
  uint64_t tx_kicks = 0;
  uint64_t orphan_packets = 0;         // for no known connection
  uint64_t used_found_on_timeout = 0;  // used entries found by the fallback poll, not an interrupt
  uint64_t violations = 0;
};

struct CapturedPacket {
  vsock::PacketHeader header;
  std::string payload;
};

enum class StreamState { kConnecting, kEstablished, kClosing, kClosed };

class GuestVsockDriver;
struct Connection;

// A guest socket handle, stream or seqpacket (type()). Copies share one
// connection; a Stream must not outlive the GuestVsockDriver that made it.
class Stream {
 public:
  Stream() = default;
  [[nodiscard]] bool valid() const { return conn_ != nullptr; }
  [[nodiscard]] uint32_t local_port() const;
  [[nodiscard]] uint32_t peer_port() const;
  [[nodiscard]] vsock::SocketType type() const;

  // Seqpacket: one message, in RW packets within the peer's credit, the last
  // with EOM (and EOR if `eor`). False, having sent nothing, for a message
  // larger than the peer's buf_alloc (Linux: EMSGSIZE); false on timeout,
  // reset or shutdown.
  bool send_message(std::span<const uint8_t> data, bool eor = true, Millis timeout = Millis(10000));
  bool send_message(std::string_view data, bool eor = true, Millis timeout = Millis(10000));
  // Seqpacket: the next whole message; nullopt on timeout, EOF or reset.
  // `eor` (optional) tells whether its last packet carried EOR.
  std::optional<std::string> recv_message(Millis timeout = Millis(10000), bool* eor = nullptr);
  [[nodiscard]] size_t messages_readable() const;

  // Sends all of `data` in RW packets within the peer's credit. False (having
  // sent a prefix) on timeout, reset, local SHUT_WR or peer SHUTDOWN(RCV).
  bool send(std::span<const uint8_t> data, Millis timeout = Millis(10000));
  bool send(std::string_view data, Millis timeout = Millis(10000));
  // Waits up to `timeout` for data; returns at most `max` bytes. Returns 0 /
  // empty on timeout, EOF (peer SHUTDOWN(SEND) and nothing left) or reset.
  size_t recv_into(std::span<uint8_t> out, Millis timeout = Millis(10000));
  std::string recv(size_t max = 65536, Millis timeout = Millis(10000));
  // Exactly `n` bytes, or fewer on EOF / reset / timeout.
  std::string recv_exactly(size_t n, Millis timeout = Millis(10000));
  // Everything up to EOF (or reset / timeout / `max` bytes).
  std::string recv_until_eof(Millis timeout = Millis(10000), size_t max = 64 << 20);

  // SHUT_RD, SHUT_WR or SHUT_RDWR: sends SHUTDOWN with the matching flags.
  bool shutdown(int how);
  // Linux close(): SHUTDOWN(RCV|SEND) unless already fully shut, then wait
  // (in the background) for the peer's RST, sending RST after close_timeout.
  void close();
  void reset();  // RST now

  [[nodiscard]] StreamState state() const;
  [[nodiscard]] bool established() const { return state() == StreamState::kEstablished; }
  [[nodiscard]] bool reset_received() const;
  [[nodiscard]] bool refused() const;  // RST in answer to our REQUEST
  [[nodiscard]] uint32_t peer_shutdown_flags() const;
  [[nodiscard]] bool eof() const;  // peer will send no more and everything was read
  [[nodiscard]] size_t readable_bytes() const;
  [[nodiscard]] uint32_t peer_free_credit() const;
  [[nodiscard]] uint32_t peer_buf_alloc() const;

  bool wait_established(Millis timeout);
  bool wait_closed(Millis timeout);
  bool wait_reset(Millis timeout);
  bool wait_peer_shutdown(uint32_t flags, Millis timeout);
  bool wait_readable(size_t bytes, Millis timeout);

 private:
  friend class GuestVsockDriver;
  Stream(GuestVsockDriver* driver, std::shared_ptr<Connection> conn) : driver_(driver), conn_(std::move(conn)) {}
  GuestVsockDriver* driver_ = nullptr;
  std::shared_ptr<Connection> conn_;
};

class GuestVsockDriver {
 public:
  // Connects a front-end to `vhost_socket`, negotiates, sets up memory and
  // rings, stocks RX and starts the I/O thread. Throws std::runtime_error.
  explicit GuestVsockDriver(const std::string& vhost_socket, GuestOptions options = {});
  ~GuestVsockDriver();
  GuestVsockDriver(const GuestVsockDriver&) = delete;
  GuestVsockDriver& operator=(const GuestVsockDriver&) = delete;

  [[nodiscard]] uint64_t guest_cid() const { return guest_cid_; }
  [[nodiscard]] bool seqpacket_negotiated() const;
  [[nodiscard]] const GuestOptions& options() const { return options_; }

  // Guest -> host CID 2. connect() waits for RESPONSE or RST (check
  // established()/refused()); connect_async() only sends the REQUEST.
  Stream connect(uint32_t port, Millis timeout = Millis(5000), vsock::SocketType type = vsock::SocketType::kStream);
  Stream connect_async(uint32_t port, vsock::SocketType type = vsock::SocketType::kStream);
  // A REQUEST of the other type is refused with RST, as Linux does.
  void listen(uint32_t port, vsock::SocketType type = vsock::SocketType::kStream);
  void unlisten(uint32_t port);
  // The next connection the host made to a listening port.
  std::optional<Stream> accept(uint32_t port, Millis timeout = Millis(5000));

  // Hostile tests: sends exactly this header and payload (header.len is not
  // fixed up). False if no TX buffer frees up within `timeout` or payload is
  // larger than tx_max_payload.
  bool send_raw(const vsock::PacketHeader& header, std::span<const uint8_t> payload = {},
                Millis timeout = Millis(5000));
  // A header from this guest to the host with our credit fields filled in.
  [[nodiscard]] vsock::PacketHeader make_header(vsock::Op op, uint32_t local_port, uint32_t peer_port, uint32_t len = 0,
                                                uint32_t flags = 0) const;
  // With capture_packets: the first captured packet matching `match`.
  std::optional<CapturedPacket> wait_packet(const std::function<bool(const CapturedPacket&)>& match, Millis timeout);
  std::vector<CapturedPacket> captured_packets() const;
  void clear_captured_packets();

  // Slow guest: stop taking used RX buffers (the device runs out of them).
  void set_rx_paused(bool paused);
  // Raw ring access while the I/O thread is held off (for hostile tests).
  // as_split() / as_packed() give the layout's raw writers.
  void with_rings(const std::function<void(GuestRam&, GuestRing& rx, GuestRing& tx)>& fn);
  void kick(uint16_t queue_index);

  // Closes the vhost-user socket and stops the I/O thread; every stream
  // ends up closed. The driver cannot be restarted: make a new one.
  void disconnect();
  [[nodiscard]] bool connected() const;

  [[nodiscard]] DriverStats stats() const;
  [[nodiscard]] std::vector<std::string> violations() const;
  // Waits until `pred(stats())` holds.
  bool wait_stats(const std::function<bool(const DriverStats&)>& pred, Millis timeout);
  [[nodiscard]] size_t connection_count() const;
  // Rings, buffers and per-connection credit, for failure messages.
  [[nodiscard]] std::string debug_state() const;
  VhostUserFrontend& frontend() { return *frontend_; }

  struct Impl;  // opaque: defined in vsock_driver_impl.h

 private:
  friend class Stream;
  std::unique_ptr<Impl> impl_;
  GuestOptions options_;
  uint64_t guest_cid_ = 0;
  std::unique_ptr<VhostUserFrontend> frontend_;
};

}  // namespace vhost_vsock::testing
