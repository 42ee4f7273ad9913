// Private to the muxer: the implementation class shared by muxer.cpp (guest
// packets, connection lifecycle), muxer_rx.cpp (RX scheduling) and
// muxer_host.cpp (connections from the hybrid listener).
#pragma once

#include <spdlog/spdlog.h>

#include <algorithm>
#include <array>
#include <memory>
#include <type_traits>
#include <unordered_map>
#include <vector>

#include "base/event_loop.h"
#include "base/iovec_list.h"
#include "base/log_limiter.h"
#include "base/unique_fd.h"
#include "vsock/connection/connection.h"
#include "vsock/muxer/muxer.h"
#include "vsock/muxer/port_allocator.h"
#include "vsock/packet/packet.h"
#include "vsock/router/connection_table.h"
#include "vsock/router/connection_timers.h"
#include "vsock/router/intrusive_list.h"
#include "vsock/router/orphan_rsts.h"
#include "vsock/transport/hybrid_listener.h"
#include "vsock/transport/unix_stream_dialer.h"

namespace vhost_vsock::vsock {

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
  // The connection a guest packet is addressed to, if any.
  RoutedConnection* find_for(const PacketHeader& from_guest) const;
  RoutedConnection& insert(std::unique_ptr<RoutedConnection> connection);
  void erase(RoutedConnection& connection);
  // The one place a connection changes: applies `change` to it, then settles
  // what follows (stats, logs, timer, RX scheduling, erasure). A change that
  // returns false did nothing worth settling. Returns false if the connection
  // was erased.
  template <typename Change>
  bool mutate(RoutedConnection& connection, Change&& change);
  bool settle(RoutedConnection& connection, ConnectionState before);
  void count_guest_verdict(const RoutedConnection& connection, const PacketHeader& header, ConnectionState before,
                           GuestPacketVerdict verdict);
  void on_timer_expired(RoutedConnection& connection);
  void on_host_event(const ConnectionKey& key, uint64_t id, HostEvents events);
  void watch(RoutedConnection& connection);
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
  DataTurn serve_data(virtio::Queue& queue, RoutedConnection& connection);

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
  std::array<QueueSlot, 2> queues_;
  uint64_t negotiated_features_ = 0;  // Muxer::set_negotiated_features()

  std::unique_ptr<HybridListener> listener_;           // null without a uds-path
  UnixStreamDialer dialer_{loop_, options_.uds_path};  // guest connects to <uds-path>_<port>

  ConnectionTable connections_{options_.limits.max_connections};
  ConnectionTimers timers_{loop_,
                           connections_,
                           {options_.limits.request_timeout, options_.limits.shutdown_timeout},
                           [this](RoutedConnection& connection) { on_timer_expired(connection); }};
  LocalPortAllocator port_allocator_;
  uint64_t next_connection_id_ = 1;

  IntrusiveList<RoutedConnection> control_list_;  // owes the guest a control packet
  IntrusiveList<RoutedConnection> data_list_;     // may have host bytes for the guest
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

template <typename Change>
bool Muxer::Impl::mutate(RoutedConnection& connection, Change&& change) {
  const ConnectionState before = connection.conn.state();
  if constexpr (std::is_same_v<std::invoke_result_t<Change, Connection&>, bool>) {
    if (!change(connection.conn)) return true;
  } else {
    change(connection.conn);
  }
  return settle(connection, before);
}

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
