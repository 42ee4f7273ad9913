// Test-only (unit tests and the muxer fuzzer): a Muxer driven through real
// SplitQueues whose driver side is the testing/ simulator's DriverVring,
// with a temp directory for uds-path. Header-only so it needs no library.
#pragma once

#include <stdlib.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstring>
#include <deque>
#include <filesystem>
#include <functional>
#include <map>
#include <optional>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "base/event_loop.h"
#include "memory/guest_memory.h"
#include "testing/driver_vring.h"
#include "testing/guest_ram.h"
#include "testing/loop_wait.h"
#include "virtio/features.h"
#include "virtio/split_queue.h"
#include "vsock/muxer/muxer.h"
#include "vsock/packet/header.h"

namespace vhost_vsock::vsock::test {

struct GuestPacket {
  PacketHeader header;
  std::vector<uint8_t> payload;
};

class MuxerHarness {
 public:
  static constexpr uint64_t kGuestCid = 3;
  static constexpr uint32_t kRxPayload = 4096;

  // `temp_base`: where the socket directory goes (short: AF_UNIX paths are
  // limited to 107 bytes; a tmpfs such as /dev/shm makes fuzzing faster).
  // `customize` may change the muxer's options last (e.g. another CID and a sibling hub).
  explicit MuxerHarness(MuxerLimits limits = {}, uint16_t queue_size = 256, size_t ram_bytes = 64 << 20,
                        bool with_listener = true, const std::string& temp_base = "/tmp", bool event_idx = false,
                        const std::function<void(MuxerOptions&)>& customize = {})
      : ram_(ram_bytes), rx_ring_(ram_, queue_size, event_idx), tx_ring_(ram_, queue_size, event_idx) {
    std::string dir_template = temp_base + "/vmxXXXXXX";
    if (::mkdtemp(dir_template.data()) == nullptr) throw std::runtime_error("mkdtemp in " + temp_base);
    dir_ = dir_template;
    uds_path_ = dir_ + "/v";
    memory_ = memory::GuestMemory::wrap_existing(ram_.gpa_base(), std::span(ram_.data(), ram_.size()));
    std::string error;
    for (auto [queue, ring] : {std::pair{&rx_queue_, &rx_ring_}, std::pair{&tx_queue_, &tx_ring_}}) {
      if (!queue->configure(memory_, ring->size(), ring->desc_gpa(), ring->avail_gpa(), ring->used_gpa(), &error)) {
        throw std::runtime_error(error);
      }
      queue->set_features(virtio::kFeatureVersion1 | (event_idx ? virtio::kFeatureEventIdx : 0));
      // A real call eventfd, as the vhost-user session hands over: interrupts are counted as sent.
      queue->set_call_fd(base::UniqueFd(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)));
    }
    MuxerOptions options;
    options.guest_cid = kGuestCid;
    options.uds_path = with_listener ? uds_path_ : "";
    options.limits = limits;
    if (customize) customize(options);
    muxer_ = std::make_unique<Muxer>(loop_, options);
    muxer_->attach_queue(Muxer::kRxQueue, rx_queue_);
    muxer_->attach_queue(Muxer::kTxQueue, tx_queue_);
    tx_area_ = ram_.alloc(kTxAreaBytes);
  }

  ~MuxerHarness() {
    muxer_.reset();
    std::error_code ignored;
    std::filesystem::remove_all(dir_, ignored);
  }

  Muxer& muxer() { return *muxer_; }
  base::EventLoop& loop() { return loop_; }
  MuxerStats stats() { return muxer_->stats(); }
  [[nodiscard]] const virtio::SplitQueue& tx_queue() const { return tx_queue_; }
  void destroy_muxer() { muxer_.reset(); }  // as at daemon exit; the scratch directory stays
  const std::string& uds_path() const { return uds_path_; }
  std::string port_path(uint32_t port) const { return uds_path_ + "_" + std::to_string(port); }
  testing::DriverVring& rx_ring() { return rx_ring_; }
  testing::DriverVring& tx_ring() { return tx_ring_; }
  testing::GuestRam& ram() { return ram_; }
  virtio::SplitQueue& rx_queue() { return rx_queue_; }
  virtio::SplitQueue& tx_queue() { return tx_queue_; }
  // Times the muxer's notify() wrote the RX call eventfd.
  uint64_t rx_interrupts() const { return rx_queue_.stats().notifications_sent; }

  // Posts `count` RX buffers shaped like Linux's: header and payload in two descriptors.
  void post_rx_buffers(size_t count, uint32_t payload_bytes = kRxPayload) {
    for (size_t i = 0; i < count; ++i) {
      const uint64_t header = ram_.alloc(kHeaderSize);
      const uint64_t payload = ram_.alloc(payload_bytes);
      const testing::DriverVring::Buffer buffers[] = {{header, static_cast<uint32_t>(kHeaderSize), true},
                                                      {payload, payload_bytes, true}};
      auto head = rx_ring_.add_chain(buffers);
      if (!head) throw std::runtime_error("RX ring full");
      rx_posted_[*head] = {header, payload, payload_bytes};
    }
  }
  void kick_rx() { muxer_->on_queue_kicked(Muxer::kRxQueue); }

  // Sends one packet through the TX queue (header and payload in separate descriptors) and kicks.
  void send(const PacketHeader& header, std::span<const uint8_t> payload = {}, bool kick = true) {
    queue_tx(header, payload);
    if (kick) muxer_->on_queue_kicked(Muxer::kTxQueue);
  }
  void queue_tx(const PacketHeader& header, std::span<const uint8_t> payload) {
    reclaim_tx();
    const uint64_t header_gpa = tx_alloc(kHeaderSize);
    encode_header(header, std::span<uint8_t, kHeaderSize>(ram_.host(header_gpa, kHeaderSize), kHeaderSize));
    std::vector<testing::DriverVring::Buffer> buffers{{header_gpa, static_cast<uint32_t>(kHeaderSize), false}};
    if (!payload.empty()) {
      const uint64_t payload_gpa = tx_alloc(payload.size());
      std::memcpy(ram_.host(payload_gpa, payload.size()), payload.data(), payload.size());
      buffers.push_back({payload_gpa, static_cast<uint32_t>(payload.size()), false});
    }
    if (!tx_ring_.add_chain(buffers)) throw std::runtime_error("TX ring full");
  }
  void kick_tx() { muxer_->on_queue_kicked(Muxer::kTxQueue); }
  size_t reclaim_tx() {
    size_t n = 0;
    while (tx_ring_.pop_used()) ++n;
    return n;
  }

  PacketHeader guest_header(Op op, uint32_t src_port, uint32_t dst_port, uint32_t len = 0, uint32_t flags = 0) const {
    PacketHeader h;
    h.src_cid = kGuestCid;
    h.dst_cid = kCidHost;
    h.src_port = src_port;
    h.dst_port = dst_port;
    h.len = len;
    h.type = static_cast<uint16_t>(SocketType::kStream);
    h.op = static_cast<uint16_t>(op);
    h.flags = flags;
    h.buf_alloc = guest_buf_alloc;
    h.fwd_cnt = guest_fwd_cnt;
    return h;
  }

  // Runs the loop until nothing happens for a moment (or `max` elapses).
  // The first passes run whatever the clock says: a thread preempted past
  // `max` before its first pass must still take what is ready.
  void pump(std::chrono::milliseconds max = std::chrono::milliseconds(200)) {
    const auto deadline = std::chrono::steady_clock::now() + max;
    int idle = 0;
    for (int passes = 0; idle < 3 && (passes < 3 || std::chrono::steady_clock::now() < deadline); ++passes) {
      const uint16_t before = rx_ring_.device_used_idx();
      loop_.run_once(std::chrono::milliseconds(5));
      idle = rx_ring_.device_used_idx() == before ? idle + 1 : 0;
    }
  }

  // Runs the loop for the whole of `duration`, for checks that something
  // does NOT happen (its last pass comes after the whole duration).
  void run_for(std::chrono::milliseconds duration) { testing::run_for(loop_, duration); }

  // Runs the loop until `done()` holds (up to `deadline`); returns done().
  template <typename Done>
  bool run_until(Done&& done, std::chrono::milliseconds deadline = testing::kEventDeadline) {
    return testing::run_until(loop_, std::forward<Done>(done), deadline);
  }

  // Every RX packet the device published since the last call; reposts the buffers.
  std::vector<GuestPacket> received(bool repost = true) {
    std::vector<GuestPacket> out;
    while (auto used = rx_ring_.pop_used()) {
      auto it = rx_posted_.find(used->id);
      if (it == rx_posted_.end()) throw std::runtime_error("used id we never posted");
      const RxBuffers buffers = it->second;
      rx_posted_.erase(it);
      GuestPacket packet;
      if (used->len >= kHeaderSize) {
        packet.header =
            decode_header(std::span<const uint8_t, kHeaderSize>(ram_.host(buffers.header, kHeaderSize), kHeaderSize));
        const size_t payload = used->len - kHeaderSize;
        if (payload > buffers.payload_len || payload != packet.header.len) throw std::runtime_error("bad RX length");
        const uint8_t* p = ram_.host(buffers.payload, buffers.payload_len);
        packet.payload.assign(p, p + payload);
        out.push_back(std::move(packet));
      } else {
        ++empty_rx_returns;
      }
      if (repost) {
        const testing::DriverVring::Buffer again[] = {{buffers.header, static_cast<uint32_t>(kHeaderSize), true},
                                                      {buffers.payload, buffers.payload_len, true}};
        auto head = rx_ring_.add_chain(again);
        if (head) rx_posted_[*head] = buffers;
      }
    }
    return out;
  }

  // A host program's side: connect to uds-path (or uds-path_<port> listeners we create).
  static base::UniqueFd connect_unix(const std::string& path, int type = SOCK_STREAM) {
    base::UniqueFd fd(::socket(AF_UNIX, type | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
    sockaddr_un address{};
    address.sun_family = AF_UNIX;
    std::strncpy(address.sun_path, path.c_str(), sizeof(address.sun_path) - 1);
    if (::connect(fd.get(), reinterpret_cast<const sockaddr*>(&address), sizeof(address)) != 0) return {};
    return fd;
  }
  static base::UniqueFd listen_unix(const std::string& path, int type = SOCK_STREAM) {
    base::UniqueFd fd(::socket(AF_UNIX, type | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
    sockaddr_un address{};
    address.sun_family = AF_UNIX;
    std::strncpy(address.sun_path, path.c_str(), sizeof(address.sun_path) - 1);
    if (::bind(fd.get(), reinterpret_cast<const sockaddr*>(&address), sizeof(address)) != 0) return {};
    if (::listen(fd.get(), 1024) != 0) return {};
    return fd;
  }

  uint32_t guest_buf_alloc = 256 * 1024;
  uint32_t guest_fwd_cnt = 0;
  uint64_t empty_rx_returns = 0;

 private:
  struct RxBuffers {
    uint64_t header;
    uint64_t payload;
    uint32_t payload_len;
  };
  static constexpr size_t kTxAreaBytes = 8 << 20;

  // TX buffers come from a ring-shaped area: the device consumes TX chains
  // synchronously on kick, so space is reused once the ring has wrapped.
  uint64_t tx_alloc(size_t len) {
    len = (len + 15) & ~size_t{15};
    if (len > kTxAreaBytes) throw std::runtime_error("TX packet too large for the harness");
    if (tx_offset_ + len > kTxAreaBytes) tx_offset_ = 0;
    const uint64_t gpa = tx_area_ + tx_offset_;
    tx_offset_ += len;
    return gpa;
  }

  testing::GuestRam ram_;
  testing::DriverVring rx_ring_;
  testing::DriverVring tx_ring_;
  std::shared_ptr<const memory::GuestMemory> memory_;
  virtio::SplitQueue rx_queue_;
  virtio::SplitQueue tx_queue_;
  base::EventLoop loop_;
  std::string dir_;
  std::string uds_path_;
  std::unique_ptr<Muxer> muxer_;
  std::map<uint16_t, RxBuffers> rx_posted_;
  uint64_t tx_area_ = 0;
  size_t tx_offset_ = 0;
};

}  // namespace vhost_vsock::vsock::test
