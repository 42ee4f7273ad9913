// What a device needs from a virtqueue, whatever the ring layout: take chains
// the driver made available, hand them back as used, and interrupt the driver
// when it wants to hear about it. SplitQueue and PackedQueue
// (VIRTIO_F_RING_PACKED) implement it, so devices (the vsock muxer) never see
// the layout.
//
// Chains are named by their buffer id: on a split ring that is the index of
// the head descriptor, on a packed ring the id the driver wrote. Anything else
// a layout needs to complete a chain (a packed ring's descriptor count, wrap
// counters) stays inside the implementation.
#pragma once

#include <sys/uio.h>

#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string_view>

#include "base/iovec_list.h"

namespace vhost_vsock::virtio {

inline constexpr uint16_t kMaxQueueSize = 32768;

// A chain taken from the queue, already translated to host memory.
// Device-readable buffers come first, then device-writable ones (the spec's
// order; a chain that breaks it is invalid). Reuse one object across pops so
// its storage is reused.
class DescriptorChain {
 public:
  DescriptorChain() {
    readable_.reserve(16);
    writable_.reserve(16);
  }
  // What add_used() takes to complete this chain.
  [[nodiscard]] uint16_t id() const { return id_; }
  // Former name of id(); the muxer still uses it until its restructuring lands.
  [[nodiscard]] uint16_t head_index() const { return id_; }
  [[nodiscard]] std::span<const iovec> readable() const { return readable_.span(); }
  [[nodiscard]] std::span<const iovec> writable() const { return writable_.span(); }
  [[nodiscard]] size_t readable_bytes() const { return readable_bytes_; }
  [[nodiscard]] size_t writable_bytes() const { return writable_bytes_; }

 private:
  friend class Queue;  // implementations fill chains through Queue's protected helpers
  uint16_t id_ = 0;
  base::IovecList readable_;
  base::IovecList writable_;
  size_t readable_bytes_ = 0;
  size_t writable_bytes_ = 0;
};

enum class PopStatus {
  kChain,         // `out` holds a valid chain
  kEmpty,         // nothing available
  kInvalidChain,  // the chain was malformed; it has been returned to the driver as used with len 0
  kBroken,        // the ring itself is corrupt (e.g. avail idx jumped > size); the queue stops
};

struct QueueStats {
  uint64_t chains_popped = 0;
  uint64_t descriptors_walked = 0;  // incl. indirect entries and invalid chains: the cost of pops
  uint64_t invalid_chains = 0;
  // Each notification decision lands in exactly one of these three.
  uint64_t notifications_sent = 0;        // the driver wanted an interrupt: to the call eventfd
  uint64_t notifications_suppressed = 0;  // the driver did not want one
  uint64_t notifications_without_fd = 0;  // the driver wanted one, but the queue has no call fd
  uint64_t call_fd_errors = 0;            // of the sent: the eventfd write failed (not just a full counter)
};

// The bookkeeping both ring layouts keep around notification decisions
// (should_notify()): where used entries had been published at the last
// decision, and whether there was one since the ring (re)started. Positions
// are the layout's own (split: used idx; packed: counter on the 2*size circle).
class NotifyTracker {
 public:
  struct Window {
    uint32_t old_position;  // published at the last decision
    uint32_t new_position;  // published now
    bool old_valid;         // false for the first decision: no event index to measure against
  };
  // Forgets earlier decisions; publication continues at `position`.
  void restart(uint32_t position) {
    last_ = position;
    decided_once_ = false;
  }
  // Forgets that there was a decision (the driver's event index may be
  // stale), keeping the position: what was published since still counts.
  void forget_decisions() { decided_once_ = false; }
  // Nullopt when nothing was published since the last decision; otherwise
  // the window, now recorded as decided. Fences first: our used stores must be
  // visible before the caller reads the driver's suppression state, or we
  // could miss the driver re-enabling interrupts.
  std::optional<Window> begin(uint32_t published);

 private:
  uint32_t last_ = 0;
  bool decided_once_ = false;
};

class Queue {
 public:
  virtual ~Queue() = default;
  Queue(const Queue&) = delete;
  Queue& operator=(const Queue&) = delete;

  [[nodiscard]] virtual bool configured() const = 0;
  [[nodiscard]] virtual bool broken() const = 0;
  [[nodiscard]] virtual uint16_t size() const = 0;
  [[nodiscard]] virtual const QueueStats& stats() const = 0;

  virtual PopStatus pop(DescriptorChain& out) = 0;
  // Gives back the last `count` popped chains (not yet used): they will be
  // popped again, e.g. RX buffers reserved for a read that came up short.
  // Only chains popped as kChain since the last kInvalidChain can be given
  // back; a larger count is clamped (and logged).
  virtual void unpop(uint16_t count) = 0;
  // True when the driver has made chains available that we have not popped.
  [[nodiscard]] virtual bool has_available() const = 0;

  // Completes chain `id`; the driver sees it only after flush_used() or notify().
  virtual void add_used(uint16_t id, uint32_t written_length) = 0;
  // Publishes all added used entries without interrupting the driver.
  virtual void flush_used() = 0;
  // The end of a pass: publishes the used entries and, if the driver wants an
  // interrupt for what it has not heard about yet (EVENT_IDX, NO_INTERRUPT,
  // NOTIFY_ON_EMPTY), signals the call eventfd. Call once per pass.
  virtual void notify() = 0;

  // Kick suppression while we are draining: disable, drain, enable, then
  // re-check has_available() to close the race with the driver.
  virtual void disable_notifications() = 0;
  virtual void enable_notifications() = 0;
  // Busy polling (--poll-us): asks the driver for no kick at all, not even
  // for its next buffer, because the device watches the ring itself. Unlike
  // disable_notifications() this also holds with EVENT_IDX. Ended by
  // enable_notifications(), after which has_available() must be re-checked.
  virtual void suppress_notifications() = 0;

 protected:
  Queue() = default;

  // For implementations filling a chain in pop(): start over for chain `id`,
  // append buffers to one side, count their bytes, or empty it on failure.
  static void begin_chain(DescriptorChain& chain, uint16_t id) {
    clear_chain(chain);
    chain.id_ = id;
  }
  // A packed ring learns a chain's id from its last descriptor, after the buffers.
  static void set_chain_id(DescriptorChain& chain, uint16_t id) { chain.id_ = id; }
  static base::IovecList& chain_buffers(DescriptorChain& chain, bool writable) {
    return writable ? chain.writable_ : chain.readable_;
  }
  static void add_chain_bytes(DescriptorChain& chain, bool writable, size_t bytes) {
    (writable ? chain.writable_bytes_ : chain.readable_bytes_) += bytes;
  }
  static void clear_chain(DescriptorChain& chain) {
    chain.readable_.clear();
    chain.writable_.clear();
    chain.readable_bytes_ = chain.writable_bytes_ = 0;
  }

  // Counts a notification decision in `stats`; true when the caller should
  // write the call eventfd (wanted, and there is one).
  static bool count_decision(bool wanted, bool has_call_fd, QueueStats& stats);
  // Interrupts the driver; a failed write is counted and logged, rate-limited.
  static void write_call_fd(int call_fd, QueueStats& stats, std::string_view log_name);
};

}  // namespace vhost_vsock::virtio
