// Private to the muxer: the implementation class shared by muxer.cpp (guest
// packets, connection lifecycle), muxer_rx.cpp (RX scheduling) and
// muxer_host.cpp (connections from the hybrid listener).
#pragma once

#include <spdlog/spdlog.h>

#include <algorithm>
#include <array>
#include <memory>
#include <unordered_map>
#include <vector>

#include "base/event_loop.h"
#include "base/iovec_list.h"
#include "base/log_limiter.h"
#include "base/unique_fd.h"
#include "vsock/connection/connection.h"
#include "vsock/muxer/intrusive_list.h"
#include "vsock/muxer/muxer.h"
#include "vsock/muxer/orphan_rsts.h"
#include "vsock/muxer/port_allocator.h"
#include "vsock/packet/packet.h"
#include "vsock/transport/hybrid_listener.h"
#include "vsock/transport/unix_stream_dialer.h"

namespace vhost_vsock::vsock {

inline uint64_t connection_key(uint32_t local_port, uint32_t peer_port) {
  return (static_cast<uint64_t>(local_port) << 32) | peer_port;
}

struct MuxConnection {
  MuxConnection(const ConnectionParams& params, std::unique_ptr<HostEndpoint> host, ConnectionState state, uint64_t id_)
      : conn(params, std::move(host), state), id(id_) {
    control_hook.owner = this;
    data_hook.owner = this;
  }
  ~MuxConnection() {
    control_hook.unlink();
    data_hook.unlink();
  }
  Connection conn;
  uint64_t id;  // unique for the muxer's lifetime: stale timers and events check it
  base::EventLoop::TimerId timer = 0;
  size_t flush_backlog = 0;  // kClosingAfterFlush: host_backlog() when the timer was armed
  bool was_established = false;
  ListHook<MuxConnection> control_hook;
  ListHook<MuxConnection> data_hook;
};

class Muxer::Impl {
 public:
  Impl(base::EventLoop& loop, MuxerOptions options);
  ~Impl();

  void attach_queue(uint16_t index, virtio::Queue& queue);
  void detach_queue(uint16_t index);
  void on_queue_kicked(uint16_t index);
  void reset_all_connections();
  [[nodiscard]] const MuxerStats& stats() const { return stats_; }

  // --- muxer.cpp: guest packets and connection lifecycle ---
  void process_tx();
  void schedule_tx();
  void handle_tx_chain(const virtio::DescriptorChain& chain);
  void handle_guest_packet(const PacketHeader& header, std::span<const iovec> payload);
  void handle_guest_connect(const PacketHeader& header);
  void reply_rst(const PacketHeader& to);
  void wake_tx_if_waiting();
  MuxConnection* find(uint64_t key);
  MuxConnection& insert(std::unique_ptr<MuxConnection> mc);
  void erase(MuxConnection& mc);
  // Reacts to whatever a connection just did: stats, logs, timers, scheduling,
  // erasure. Returns false if `mc` was erased.
  bool after_change(MuxConnection& mc, ConnectionState before);
  void start_state_timer(MuxConnection& mc);
  void on_state_timer(uint64_t key, uint64_t id);
  void on_host_event(uint64_t key, uint64_t id, HostEvents events);
  void watch(MuxConnection& mc);
  template <typename... Args>
  void warn_guest(fmt::format_string<Args...> format, Args&&... args);
  template <typename... Args>
  void log_info(fmt::format_string<Args...> format, Args&&... args);

  // --- muxer_rx.cpp: RX scheduling ---
  void schedule_rx();
  // Descriptors one pass may walk before it yields to the event loop. Every
  // chain walk is bounded by the queue size, but a guest can list suffixes of
  // one long chain in every avail slot: without a budget a pass would cost
  // O(queue size^2). Legitimate chains (2-3 descriptors) never reach it.
  [[nodiscard]] static uint64_t walk_budget(const virtio::Queue& queue) {
    return std::max<uint64_t>(uint64_t{1} << 16, 4 * uint64_t{queue.size()});
  }
  void process_rx();
  bool acquire_rx_chain(virtio::Queue& queue, virtio::DescriptorChain& chain);
  bool put_control(virtio::Queue& queue, const PacketHeader& header);
  enum class DataTurn { kRxEmpty, kMore, kDone };
  DataTurn serve_data(virtio::Queue& queue, MuxConnection& mc);

  // --- muxer_host.cpp: connections from the hybrid listener ---
  void open_listener();
  [[nodiscard]] size_t pending_host_peers() const;
  bool admit_host_peer();
  void on_host_connect(std::unique_ptr<HostEndpoint> endpoint, uint32_t guest_port,
                       std::span<const uint8_t> early_bytes);

  struct QueueSlot {
    virtio::Queue* queue = nullptr;
  };

  base::EventLoop& loop_;
  MuxerOptions options_;
  MuxerStats stats_;
  std::shared_ptr<bool> alive_ = std::make_shared<bool>(true);
  std::array<QueueSlot, 2> queues_;
  uint64_t negotiated_features_ = 0;  // Muxer::set_negotiated_features()

  std::unique_ptr<HybridListener> listener_;           // null without a uds-path
  UnixStreamDialer dialer_{loop_, options_.uds_path};  // guest connects to <uds-path>_<port>

  std::unordered_map<uint64_t, std::unique_ptr<MuxConnection>> connections_;
  std::unordered_map<uint32_t, uint32_t> local_ports_in_use_;  // port -> live connections using it
  LocalPortAllocator port_allocator_;
  uint64_t next_connection_id_ = 1;

  IntrusiveList<MuxConnection> control_list_;  // owes the guest a control packet
  IntrusiveList<MuxConnection> data_list_;     // may have host bytes for the guest
  OrphanRstQueue orphan_rsts_;
  // The TX pass stopped taking guest packets because orphan_rsts_ was full;
  // the RX pass wakes it once a reply went out.
  bool tx_waits_for_rx_ = false;

  bool rx_used_any_ = false;  // this RX pass added used entries
  // Coalesced per event batch; scheduling them does not allocate.
  base::DeferredTask rx_task_{loop_, [this] { process_rx(); }};
  base::DeferredTask tx_task_{loop_, [this] { process_tx(); }};

  // Reused on every kick so the data path does not allocate.
  virtio::DescriptorChain tx_chain_;
  TxPacket tx_packet_;
  static constexpr size_t kMaxRxBatch = 64;
  std::vector<virtio::DescriptorChain> rx_chains_;
  std::array<size_t, kMaxRxBatch> rx_chain_capacity_{};
  base::IovecList rx_iovecs_;

  base::LogLimiter warn_limiter_{"guest warnings", 20};
  base::LogLimiter info_limiter_{"connection messages", 200};  // lifecycle, refusals, handshake failures
};

template <typename... Args>
void Muxer::Impl::log_info(fmt::format_string<Args...> format, Args&&... args) {
  if (info_limiter_.allow()) {
    spdlog::info("cid={} {}", options_.guest_cid, fmt::format(format, std::forward<Args>(args)...));
  }
}

template <typename... Args>
void Muxer::Impl::warn_guest(fmt::format_string<Args...> format, Args&&... args) {
  if (warn_limiter_.allow()) {
    spdlog::warn("cid={} guest misbehaves: {}", options_.guest_cid, fmt::format(format, std::forward<Args>(args)...));
  }
}

}  // namespace vhost_vsock::vsock
