// The queue pump: the only code that touches the guest's virtqueues. A TX
// pass drains guest packets into the router (stopping, with the chains left
// in the ring, while the router cannot take more: backpressure); an RX pass
// fills RX chains with what the router has pending: control packets first,
// then host data round-robin, many chains per readv. Each pass is bounded by
// a descriptor-walk budget and publishes used entries and notifies once.
#pragma once

#include <algorithm>
#include <array>
#include <chrono>
#include <cstdint>
#include <vector>

#include "base/event_loop.h"
#include "base/iovec_list.h"
#include "base/log_limiter.h"
#include "virtio/queue.h"
#include "vsock/router/limits_and_stats.h"
#include "vsock/router/router.h"

namespace vhost_vsock::vsock {

class QueuePump {
 public:
  static constexpr uint16_t kRxQueue = 0;
  static constexpr uint16_t kTxQueue = 1;

  QueuePump(base::EventLoop& loop, Router& router, MuxerStats& stats);
  ~QueuePump();
  QueuePump(const QueuePump&) = delete;
  QueuePump& operator=(const QueuePump&) = delete;

  // Busy polling (--poll-us; queue_pump_poll.cpp). After a pass that moved
  // chains, the loop does not sleep for up to `window`: between non-blocking
  // epoll_waits (host sockets are still served) it looks at the avail rings
  // itself, with the guest's kicks suppressed, and runs a pass when buffers
  // appear. Each pass that moves chains restarts the window; when it runs
  // out, kicks are enabled again and the rings re-checked before the loop
  // sleeps. Nothing is polled without running rings or after an idle pass,
  // so an idle VM costs no CPU. Installs the loop's idle hook; call once.
  void enable_busy_poll(std::chrono::microseconds window);

  void attach(uint16_t index, virtio::Queue& queue);
  void detach(uint16_t index);
  void on_kick(uint16_t index);
  // Coalesced per event batch; scheduling does not allocate.
  void schedule_rx() { rx_task_.schedule(); }
  void schedule_tx() { tx_task_.schedule(); }

  // Descriptors one pass may walk before it yields to the event loop. Every
  // chain walk is bounded by the queue size, but a guest can list suffixes of
  // one long chain in every avail slot: without a budget a pass would cost
  // O(queue size^2). Legitimate chains (2-3 descriptors) never reach it.
  [[nodiscard]] static uint64_t walk_budget(const virtio::Queue& queue) {
    return std::max<uint64_t>(uint64_t{1} << 16, 4 * uint64_t{queue.size()});
  }

 private:
  // ---- TX ----
  enum class TxRound { kDrained, kOutOfBudget, kBackpressure, kDetached };
  void process_tx();
  TxRound drain_tx_round(virtio::Queue& queue, uint64_t walk_limit, bool& used_any);
  TxRound route_tx_chains(virtio::Queue& queue, uint64_t walk_limit, bool& used_any);
  // A TX pass publishes its used entries at once but calls the guest with the
  // RX pass it schedules: one batch, both rings visible before either call.
  void call_tx_if_owed();

  // ---- RX ----
  struct RxPass {
    virtio::Queue& queue;
    uint64_t walk_limit;
    bool rx_empty = false;  // no usable RX chain left
    bool yielded = false;   // budget spent: another pass comes after other events
    size_t turns = 0;
    [[nodiscard]] bool out_of_budget() const { return queue.stats().descriptors_walked >= walk_limit; }
  };
  enum class DataTurn { kRxEmpty, kMore, kDone };
  struct RxBatch {
    size_t popped = 0;
    size_t capacity = 0;    // payload bytes mapped in rx_iovecs_
    bool can_unpop = true;  // false once the queue itself consumed an invalid chain after ours
  };
  void process_rx();
  void send_control_packets(RxPass& pass);
  bool take_control_chain(RxPass& pass);
  void finish_rx_pass(RxPass& pass);
  bool acquire_rx_chain(virtio::Queue& queue, virtio::DescriptorChain& chain);
  void put_control(virtio::Queue& queue, const PacketHeader& header);
  // Packets siblings sent our guest (queue_pump_sibling.cpp): up to a batch;
  // true if the batch ended with more waiting.
  bool deliver_sibling_packets(RxPass& pass);
  bool write_sibling_packet(RxPass& pass, SiblingHub::Channel& channel);
  DataTurn serve_data(virtio::Queue& queue, Connection& conn);
  // kSeqpacket: one whole message per turn, or none (queue_pump_message.cpp).
  DataTurn serve_message(virtio::Queue& queue, Connection& conn);
  RxBatch reserve_message_chains(virtio::Queue& queue, uint32_t message_bytes);
  void refuse_message(Connection& conn, uint32_t message_bytes, const char* why);
  RxBatch reserve_rx_chains(virtio::Queue& queue, size_t limit, size_t target);
  size_t map_rx_payload(const virtio::DescriptorChain& chain, size_t limit);
  // `message`: the bytes are one whole message (at least one packet, EOM|EOR on the last).
  size_t complete_rx_chains(virtio::Queue& queue, Connection& conn, size_t got, size_t popped, bool message = false);
  void return_unused_rx_chains(virtio::Queue& queue, const RxBatch& batch, size_t used_chains);

  // ---- Busy polling ----
  // The loop's idle hook: true while the loop must not sleep.
  bool poll_when_idle();
  // Schedules a pass for each ring with buffers to take; true if any.
  bool schedule_available(virtio::Queue& tx, virtio::Queue* rx);
  // An attached queue whose ring runs (configured, not broken), else nullptr.
  [[nodiscard]] virtio::Queue* running_queue(uint16_t index) const;
  // Every pass reports whether it moved chains. (While polling, passes
  // leave kicks suppressed: the poller enables them before the loop sleeps.)
  void note_pass(bool moved_chains) { poll_.worked = poll_.worked || moved_chains; }
  struct BusyPoll {
    std::chrono::microseconds window{0};  // 0: off
    std::chrono::steady_clock::time_point deadline;
    bool polling = false;  // inside a window: the loop does not sleep
    bool worked = false;   // a pass moved chains since the hook last looked
    // By the poller in this window (attach() enables them again).
    bool tx_kicks_suppressed = false;
    bool rx_kicks_suppressed = false;
  };

  base::EventLoop& loop_;
  BusyPoll poll_;
  bool rx_starved_ = false;  // the last RX pass ran out of RX chains with packets still owed
  Router& router_;
  MuxerStats& stats_;
  std::array<virtio::Queue*, 2> queues_{};
  bool rx_used_any_ = false;   // this RX pass added used entries
  bool tx_call_owed_ = false;  // a TX pass published used entries it has not called the guest for
  base::DeferredTask rx_task_;
  base::DeferredTask tx_task_;

  // Reused on every pass so the data path does not allocate.
  virtio::DescriptorChain tx_chain_;
  std::vector<uint16_t> routed_chains_;  // this round's, returned once their payloads are written
  static constexpr size_t kMaxRxBatch = 64;
  std::vector<virtio::DescriptorChain> rx_chains_;
  std::array<size_t, kMaxRxBatch> rx_chain_capacity_{};
  base::IovecList rx_iovecs_;
  base::LogLimiter message_log_limiter_{"seqpacket message refusals", 20};
};

}  // namespace vhost_vsock::vsock
