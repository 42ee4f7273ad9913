// The router: every connection of one guest and what happens to packets.
// Guest packets come in from the queue pump and are routed to their
// connection (or refused: RST, counted, logged); host events, timers and host
// connects change connections too, and every change goes through mutate().
// What is owed to the guest (control packets, RSTs for unknown connections,
// host data) waits here until the pump asks for it. The router never touches
// a virtqueue; it asks the pump for passes through Wakeups.
#pragma once

#include <spdlog/spdlog.h>

#include <array>
#include <deque>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <type_traits>

#include "base/event_loop.h"
#include "base/log_limiter.h"
#include "vsock/connection/connection.h"
#include "vsock/packet/packet.h"
#include "vsock/router/connection_table.h"
#include "vsock/router/connection_timers.h"
#include "vsock/router/intrusive_list.h"
#include "vsock/router/limits_and_stats.h"
#include "vsock/router/orphan_rsts.h"
#include "vsock/router/port_allocator.h"
#include "vsock/router/sibling_hub.h"
#include "vsock/router/sibling_table.h"
#include "vsock/transport/unix_stream_dialer.h"
#include "vsock/transport/vsock_forward.h"

namespace vhost_vsock::vsock {

class Router {
 public:
  struct Options {
    uint64_t guest_cid = 0;
    std::string uds_path;  // guest connects dial <uds_path>_<port>
    MuxerLimits limits;
    // The daemon's sibling VMs (null: none). Must outlive the router.
    SiblingHub* siblings = nullptr;
    // --forward-cid: a guest connect to port P dials this address (AF_VSOCK
    // (cid, P) in production) without blocking, instead of <uds_path>_<P>.
    // Empty: the hybrid dialer.
    ForwardAddressFor forward_to;
  };
  // How the router asks for queue passes (the pump's deferred tasks).
  struct Wakeups {
    std::function<void()> rx;  // something is owed to the guest
    std::function<void()> tx;  // room for replies again after backpressure
  };

  Router(base::EventLoop& loop, Options options, MuxerStats& stats, Wakeups wakeups);
  ~Router();
  Router(const Router&) = delete;
  Router& operator=(const Router&) = delete;

  // VIRTIO_VSOCK_F_SEQPACKET was negotiated: seqpacket packets are routed
  // (otherwise each gets an RST, and streams are unaffected).
  void set_seqpacket_enabled(bool enabled);
  // A guest driver is up (features negotiated): siblings may reach it.
  void set_guest_reachable(bool reachable);

  // Host peers still in their handshake count against the connection cap.
  void set_pending_host_peers(std::function<size_t()> pending) { pending_host_peers_ = std::move(pending); }

  // ---- guest -> host (the TX pass) ----
  // False while a guest packet might owe a reply with nowhere to queue it:
  // the pump must leave the packet in the ring; Wakeups::tx comes when the
  // RX pass made room.
  [[nodiscard]] bool ready_for_guest_packet() {
    // Each guest packet owes at most one RST: room for one is enough.
    return !orphan_rsts_.full() || wait_for_rst_room();
  }
  // One TX chain's device-readable buffers. False when the packet was not
  // taken (its sibling's channel is full): the pump gives the chain back and
  // stops; Wakeups::tx comes once the sibling made room.
  [[nodiscard]] bool route_guest_packet(std::span<const iovec> readable, size_t readable_bytes);
  void note_invalid_tx_chain();
  // The RW packets of each connection in a TX pass are written to its host
  // socket with one call (interleaved connections included): their payloads
  // stay in guest memory until this runs, so the pump calls it before it
  // returns the pass's chains.
  void flush_gathered();

  // ---- host -> guest (the RX pass) ----
  // Whether a control packet is owed (per-connection ones first, then RSTs
  // for unknown connections). May hand a pending credit update over to the
  // data round-robin when a data packet is about to carry the same credit.
  [[nodiscard]] bool has_control_packet();
  // Hands the next control packet to `put` (which writes it to the guest).
  template <typename Put>
  void send_control_packet(Put&& put);
  [[nodiscard]] bool has_data() const { return !data_list_.empty(); }
  // The next packet a sibling sent our guest (the channel's head, with how
  // much of its payload was written already), or null. The pump writes it
  // into RX chains and calls finish_sibling_packet() once all of it went out.
  [[nodiscard]] SiblingHub::Channel* next_sibling_packet();
  void finish_sibling_packet(SiblingHub::Channel& channel);
  // Runs one data turn for the next connection in the round-robin: `serve`
  // moves host bytes into RX buffers and returns false if it found none (the
  // connection then keeps its place). Returns that result; true if the
  // connection had nothing to send after all.
  template <typename Serve>
  bool serve_next_data(Serve&& serve);

  // ---- host side ----
  // A new host peer on the hybrid listener: false (counted, logged) at the cap.
  bool admit_host_peer();
  // A host peer finished its CONNECT line: open a connection and ask the guest.
  void on_host_connect(std::unique_ptr<HostEndpoint> endpoint, uint32_t guest_port,
                       std::span<const uint8_t> early_bytes);
  void on_handshake_failed(const std::string& uds_path, const char* reason);
  // The guest's driver state is gone: close every host socket, forget all.
  void reset_all_connections();

  // Read-only walk over the live connections (the metrics listing).
  template <typename Fn>
  void for_each_connection(Fn&& fn) const {
    connections_.for_each(std::forward<Fn>(fn));
  }
  template <typename Fn>
  void for_each_sibling_connection(Fn&& fn) const {
    sibling_table_.for_each(std::forward<Fn>(fn));
  }
  [[nodiscard]] const std::string& uds_path() const { return options_.uds_path; }
  [[nodiscard]] bool forwarding() const { return forward_dialer_.has_value(); }
  // Guest->host memory promised to the guest's connections (see CreditBudget).
  [[nodiscard]] const CreditBudget& credit_budget() const { return credit_budget_; }

 private:
  void route_parsed_packet(const PacketHeader& header, std::span<const iovec> payload);
  // ---- siblings (router_sibling.cpp) ----
  void attach_siblings();
  void detach_siblings();
  bool route_to_sibling(TxParseStatus status, const PacketHeader& header);
  // Why a packet for a sibling is refused before it is forwarded, or null.
  const char* sibling_refusal(const PacketHeader& header, const SiblingHub::Channel* channel);
  void refuse_sibling_packet(const PacketHeader& header, const char* why);
  void forward_to_sibling(SiblingHub::Channel& channel, const PacketHeader& header);
  void track_sibling_packet(const PacketHeader& header, bool from_our_guest);
  void open_sibling_entry(const PacketHeader& request, bool from_our_guest);
  void close_sibling_entry(const ConnectionKey& key);
  void on_sibling_wake();
  void on_sibling_request_timeout(const ConnectionKey& key, uint64_t id);
  // A sibling's guest is gone: RST our guest's connections to it.
  void reset_connections_to(uint64_t sibling_cid);
  // Our guest is gone: forget its sibling connections, drop what waits for
  // it, and tell the siblings (their routers RST their ends).
  void reset_sibling_connections();
  void discard_inbound();
  void publish_connection_count();
  [[nodiscard]] size_t live_connections() const { return connections_.size() + sibling_table_.size(); }
  [[nodiscard]] bool routable_type(uint16_t type) const {
    return type == static_cast<uint16_t>(SocketType::kStream) ||
           (seqpacket_enabled_ && type == static_cast<uint16_t>(SocketType::kSeqpacket));
  }
  void handle_guest_connect(const PacketHeader& header);
  // The host side of a guest connect: <uds>_<port>, or the forward address.
  UnixStreamDialer::Result dial_host(const PacketHeader& request);
  // A forward connect finished (kConnectingToHost left for `now`).
  void note_connect_finished(RoutedConnection& connection, ConnectionState now);
  void reply_rst(const PacketHeader& to);
  bool wait_for_rst_room();  // false: the TX pass waits for Wakeups::tx
  void wake_tx_if_waiting();
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
  // Connect-wait: a guest RST to our REQUEST arms a retry instead (true) while
  // the connection's wait lasts.
  bool retry_connect_later(RoutedConnection& connection);
  // Routes an RW the connection would write at once by deferring its write
  // into the connection's gather run; false (nothing done, and its run
  // written first) when it cannot be deferred.
  bool gather_guest_data(RoutedConnection& connection, const PacketHeader& header, std::span<const iovec> payload);
  struct GatherRun;
  GatherRun* find_gather_run(const RoutedConnection& connection);
  // Removes a run from the table (the runs in use stay first); returns its payloads.
  base::IovecList take_gather_run(GatherRun& run);
  // Writes one run's payloads and drops the run.
  void flush_gather_run(GatherRun& run);
  void count_guest_verdict(const RoutedConnection& connection, const PacketHeader& header, ConnectionState before,
                           GuestPacketVerdict verdict);
  // The cold part of count_guest_verdict (every verdict but kOk): counts and logs.
  void count_refused_guest_packet(const RoutedConnection& connection, const PacketHeader& header,
                                  ConnectionState before, GuestPacketVerdict verdict);
  void on_timer_expired(RoutedConnection& connection);
  // A stream began waiting for the guest's credit: counted, and the
  // CREDIT_REQUEST fallback armed (Connection::note_credit_starved).
  void note_credit_stall(RoutedConnection& connection);
  // For the connection's current stall (RoutedConnection::credit_stall_timed).
  void arm_credit_timer(RoutedConnection& connection);
  void ask_for_credit_if_still_stalled(RoutedConnection& connection);
  void on_host_event(const ConnectionKey& key, uint64_t id, HostEvents events);
  void watch(RoutedConnection& connection);
  // Host peers still handshaking, plus sibling connections: both count against the cap.
  [[nodiscard]] size_t pending_host_peers() const {
    return (pending_host_peers_ ? pending_host_peers_() : 0) + sibling_table_.size();
  }
  template <typename... Args>
  void warn_guest(fmt::format_string<Args...> format, Args&&... args);
  template <typename... Args>
  void log_info(fmt::format_string<Args...> format, Args&&... args);

  base::EventLoop& loop_;
  Options options_;
  MuxerStats& stats_;
  Wakeups wakeups_;
  std::function<size_t()> pending_host_peers_;
  bool seqpacket_enabled_ = false;
  UnixStreamDialer dialer_{loop_, options_.uds_path};  // guest connects to <uds-path>_<port>
  std::optional<VsockForwardDialer> forward_dialer_;   // --forward-cid: replaces dialer_

  // Before the connections: they give their holds back when destroyed.
  CreditBudget credit_budget_;
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

  TxPacket tx_packet_;  // reused for every guest packet: the data path does not allocate
  // Deferred RW payloads of this TX pass, one run per connection (see
  // flush_gathered()). A few runs cover the usual interleaving of busy
  // streams; a pass with more connections writes all runs and starts again.
  struct GatherRun {
    RoutedConnection* owner = nullptr;
    base::IovecList payload;
  };
  static constexpr size_t kMaxGatherRuns = 8;
  std::array<GatherRun, kMaxGatherRuns> gather_runs_;
  size_t gather_run_count_ = 0;  // the first ones of gather_runs_ are in use

  // Sibling VMs (null self: none configured).
  SiblingHub::Member* sibling_self_ = nullptr;
  SiblingTable sibling_table_;
  std::deque<PacketHeader> sibling_rsts_;  // RSTs owed to our guest for a sibling gone (bounded by the table)
  size_t next_inbound_ = 0;                // round-robin over the inbound channels
  bool tx_waits_for_sibling_ = false;      // the TX pass stopped at a full channel
  base::LogLimiter sibling_limiter_{"sibling refusals", 20};
  base::LogLimiter warn_limiter_{"guest warnings", 20};
  base::LogLimiter info_limiter_{"connection messages", 200};  // lifecycle, refusals, handshake failures
};

template <typename Change>
bool Router::mutate(RoutedConnection& connection, Change&& change) {
  const ConnectionState before = connection.conn.state();
  if constexpr (std::is_same_v<std::invoke_result_t<Change, Connection&>, bool>) {
    if (!change(connection.conn)) return true;
  } else {
    change(connection.conn);
  }
  return settle(connection, before);
}

template <typename Put>
void Router::send_control_packet(Put&& put) {
  if (RoutedConnection* connection = control_list_.front()) {
    mutate(*connection, [&](Connection& conn) {
      put(*conn.take_control_packet());
      if (conn.pending_control() == 0) control_list_.pop_front();
    });
    return;
  }
  if (!sibling_rsts_.empty()) {
    put(sibling_rsts_.front());
    sibling_rsts_.pop_front();
    return;
  }
  if (orphan_rsts_.empty()) return;
  put(orphan_rsts_.front());
  orphan_rsts_.pop();
  wake_tx_if_waiting();
}

template <typename Serve>
bool Router::serve_next_data(Serve&& serve) {
  RoutedConnection* connection = data_list_.pop_front();
  if (connection == nullptr || !connection->conn.wants_to_send_data()) return true;
  bool served = true;
  // Settling re-queues it behind the others if it still has data and credit.
  mutate(*connection, [&](Connection& conn) -> bool {
    served = serve(conn);
    return served;
  });
  if (!served) data_list_.push_back(connection->data_hook);  // keep its place for the next RX kick
  return served;
}

template <typename... Args>
void Router::log_info(fmt::format_string<Args...> format, Args&&... args) {
  if (info_limiter_.allow()) {
    spdlog::info("cid={} {}", options_.guest_cid, fmt::format(format, std::forward<Args>(args)...));
  }
}

template <typename... Args>
void Router::warn_guest(fmt::format_string<Args...> format, Args&&... args) {
  if (warn_limiter_.allow()) {
    spdlog::warn("cid={} guest misbehaves: {}", options_.guest_cid, fmt::format(format, std::forward<Args>(args)...));
  }
}

}  // namespace vhost_vsock::vsock
