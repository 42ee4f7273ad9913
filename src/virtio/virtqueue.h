// Device side of a split virtqueue (virtio 1.2 §2.7). The driver (guest) is
// hostile: every ring field and descriptor is copied out of guest memory once
// and validated before use, and every walk is bounded by the queue size.
#pragma once

#include <sys/uio.h>

#include <cstdint>
#include <memory>
#include <string>

#include "base/iovec_list.h"
#include "memory/guest_memory.h"

namespace vhost_vsock::virtio {

inline constexpr uint16_t kMaxQueueSize = 32768;

// Virtio feature bits this layer understands.
inline constexpr uint64_t kFeatureNotifyOnEmpty = 1ULL << 24;
inline constexpr uint64_t kFeatureIndirectDesc = 1ULL << 28;
inline constexpr uint64_t kFeatureEventIdx = 1ULL << 29;
inline constexpr uint64_t kFeatureVersion1 = 1ULL << 32;

// A chain popped from the avail ring, already translated to host memory.
// Device-readable buffers come first, then device-writable ones (the spec's
// order; a chain that breaks it is invalid). Reuse one object across pops so
// its storage is reused.
class DescriptorChain {
 public:
  DescriptorChain() {
    readable_.reserve(16);
    writable_.reserve(16);
  }
  [[nodiscard]] uint16_t head_index() const { return head_; }
  [[nodiscard]] std::span<const iovec> readable() const { return readable_.span(); }
  [[nodiscard]] std::span<const iovec> writable() const { return writable_.span(); }
  [[nodiscard]] size_t readable_bytes() const { return readable_bytes_; }
  [[nodiscard]] size_t writable_bytes() const { return writable_bytes_; }

 private:
  friend class SplitVirtqueue;
  void clear() {
    readable_.clear();
    writable_.clear();
    readable_bytes_ = writable_bytes_ = 0;
  }
  uint16_t head_ = 0;
  base::IovecList readable_;
  base::IovecList writable_;
  size_t readable_bytes_ = 0;
  size_t writable_bytes_ = 0;
};

enum class PopStatus {
  kChain,         // `out` holds a valid chain
  kEmpty,         // nothing available
  kInvalidChain,  // the head was malformed; it has been returned to the used ring with len 0
  kBroken,        // the ring itself is corrupt (e.g. avail idx jumped > size); the queue stops
};

struct QueueStats {
  uint64_t chains_popped = 0;
  uint64_t descriptors_walked = 0;  // incl. indirect entries and invalid chains: the cost of pops
  uint64_t invalid_chains = 0;
  uint64_t notifications_sent = 0;
  uint64_t notifications_suppressed = 0;
};

class SplitVirtqueue {
 public:
  SplitVirtqueue() = default;

  // Attaches the rings. Checks size (power of two, 1..32768), alignment
  // (desc 16, avail 2, used 4, in guest and host addresses) and that each ring,
  // event fields included, lies inside one region of guest memory.
  // Keeps next_avail; takes the used index from the ring's used->idx (what the
  // driver has seen so far), after publishing any entries still pending.
  bool configure(std::shared_ptr<const memory::GuestMemory> memory, uint16_t size, uint64_t desc_gpa,
                 uint64_t avail_gpa, uint64_t used_gpa, std::string* error);
  // Negotiated features that change ring behaviour.
  void set_features(uint64_t features);
  // Forgets rings, indices, broken state and stats; keeps features and name.
  void reset();
  // Label for log messages, e.g. "cid 3 tx".
  void set_log_name(std::string name) { log_name_ = std::move(name); }
  [[nodiscard]] bool configured() const { return memory_ != nullptr; }
  [[nodiscard]] bool broken() const { return broken_; }
  [[nodiscard]] uint16_t size() const { return size_; }

  // VHOST_USER_SET/GET_VRING_BASE: the next avail index we will consume.
  // The used index follows the ring's used->idx when configured, else `index`
  // (configure() then reads it from the ring). Clears the broken state.
  void set_next_avail(uint16_t index);
  [[nodiscard]] uint16_t next_avail() const { return next_avail_; }

  PopStatus pop(DescriptorChain& out);
  // Gives back the last `count` popped chains (not yet used): they will be
  // popped again, e.g. RX buffers reserved for a read that came up short.
  // Only chains popped as kChain since the last kInvalidChain can be given
  // back; a larger count is clamped (and logged).
  void unpop(uint16_t count);
  // True when the driver has made chains available that we have not popped.
  [[nodiscard]] bool has_available() const;

  // Writes a used ring entry; the driver sees it only after flush_used().
  void add_used(uint16_t head_index, uint32_t written_length);
  // Publishes all added used entries (release store of used->idx).
  void flush_used();
  // After flush_used(): whether the driver wants an interrupt for what was
  // published since the last notification (EVENT_IDX, NO_INTERRUPT,
  // NOTIFY_ON_EMPTY). Records the decision, so call once per flush.
  bool should_notify();

  // Kick suppression while we are draining: disable, drain, enable, then
  // re-check has_available() to close the race with the driver.
  void disable_notifications();
  void enable_notifications();

  [[nodiscard]] const QueueStats& stats() const { return stats_; }

 private:
  // Implementation details belong to the owner of virtio/ (see virtqueue.cpp).
  // nullptr when `out` holds a valid chain, else why it is invalid.
  const char* walk_chain(uint16_t head, DescriptorChain& out);
  [[nodiscard]] uint16_t read_avail_idx() const;
  [[nodiscard]] uint16_t read_used_idx_from_ring() const;
  void write_used_flags(uint16_t flags);
  void mark_broken(const char* why);

  std::shared_ptr<const memory::GuestMemory> memory_;
  uint16_t size_ = 0;
  uint64_t desc_gpa_ = 0;
  uint8_t* desc_ = nullptr;
  uint8_t* avail_ = nullptr;
  uint8_t* used_ = nullptr;
  bool event_idx_ = false;
  bool notify_on_empty_ = false;
  bool indirect_ = false;
  bool broken_ = false;
  uint16_t next_avail_ = 0;
  uint16_t next_used_ = 0;           // shadow of used->idx including unflushed entries
  uint16_t published_used_ = 0;      // used->idx as last stored to the ring
  uint16_t last_notified_used_ = 0;  // used idx at the last should_notify()
  bool notified_once_ = false;
  uint16_t used_flags_ = 0;  // our copy of used->flags (never read back from the guest)
  uint16_t returnable_ = 0;  // chains unpop() may give back
  std::string log_name_ = "virtqueue";
  QueueStats stats_;
};

}  // namespace vhost_vsock::virtio
