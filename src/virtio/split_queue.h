// Device side of a split virtqueue (virtio 1.2 §2.7). The driver (guest) is
// hostile: every ring field and descriptor is copied out of guest memory once
// and validated before use, and every walk is bounded by the queue size.
// Devices see it only as a virtio::Queue; the vhost-user session, which sets
// up rings, uses the configuration calls below.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <utility>

#include "base/unique_fd.h"
#include "memory/guest_memory.h"
#include "virtio/queue.h"

namespace vhost_vsock::virtio {

class SplitQueue final : public Queue {
 public:
  SplitQueue() = default;

  // Attaches the rings. Checks size (power of two, 1..32768), alignment
  // (desc 16, avail 2, used 4, in guest and host addresses) and that each ring,
  // event fields included, lies inside one region of guest memory.
  // Keeps next_avail; takes the used index from the ring's used->idx (what the
  // driver has seen so far), after publishing any entries still pending.
  bool configure(std::shared_ptr<const memory::GuestMemory> memory, uint16_t size, uint64_t desc_gpa,
                 uint64_t avail_gpa, uint64_t used_gpa, std::string* error);
  // Negotiated features that change ring behaviour.
  void set_features(uint64_t features);
  // Forgets rings, indices, broken state and stats; keeps features, name and
  // call fd.
  void reset();
  // Label for log messages, e.g. "cid 3 tx".
  void set_log_name(std::string name) { log_name_ = std::move(name); }
  // The eventfd notify() writes (VHOST_USER_SET_VRING_CALL); an invalid fd
  // means none: notifications are then only counted. Replaces (closes) the
  // previous one.
  void set_call_fd(base::UniqueFd call_fd) { call_fd_ = std::move(call_fd); }
  [[nodiscard]] bool has_call_fd() const { return call_fd_.valid(); }
  // Hands the call fd over (to the other ring layout's queue); none is left here.
  base::UniqueFd take_call_fd() { return std::move(call_fd_); }

  [[nodiscard]] bool configured() const override { return memory_ != nullptr; }
  [[nodiscard]] bool broken() const override { return broken_; }
  [[nodiscard]] uint16_t size() const override { return size_; }
  [[nodiscard]] const QueueStats& stats() const override { return stats_; }

  // VHOST_USER_SET/GET_VRING_BASE: the next avail index we will consume.
  // The used index follows the ring's used->idx when configured, else `index`
  // (configure() then reads it from the ring). Clears the broken state.
  void set_next_avail(uint16_t index);
  [[nodiscard]] uint16_t next_avail() const { return next_avail_; }

  PopStatus pop(DescriptorChain& out) override;
  void unpop(uint16_t count) override;
  [[nodiscard]] bool has_available() const override;
  void add_used(uint16_t id, uint32_t written_length) override;
  // Release store of used->idx.
  void flush_used() override;
  void notify() override;
  void disable_notifications() override;
  void enable_notifications() override;
  void suppress_notifications() override;

  // The decision notify() acts on, public for tests: after flush_used(),
  // whether the call fd is to be written, i.e. the driver wants an interrupt
  // for what was published since the last decision and there is a call fd.
  // Records and counts the decision, so call once per flush.
  bool should_notify();

 private:
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
  uint16_t next_used_ = 0;        // shadow of used->idx including unflushed entries
  uint16_t published_used_ = 0;   // used->idx as last stored to the ring
  NotifyTracker notify_tracker_;  // published_used_ at the last should_notify()
  uint16_t used_flags_ = 0;       // our copy of used->flags (never read back from the guest)
  uint16_t returnable_ = 0;       // chains unpop() may give back
  std::string log_name_ = "virtqueue";
  base::UniqueFd call_fd_;
  QueueStats stats_;
};

}  // namespace vhost_vsock::virtio
