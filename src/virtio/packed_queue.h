// Device side of a packed virtqueue (virtio 1.1 §2.7, VIRTIO_F_RING_PACKED):
// one descriptor ring the driver makes buffers available in and the device
// writes used descriptors back to, in place, plus two event suppression
// structures. The driver (guest) is hostile, as on the split ring: each
// descriptor is copied out of guest memory once and validated, every walk is
// bounded by the queue size, and used writes stay inside the ring.
//
// Ring positions are kept as one counter in [0, 2 * size): the position is
// the counter modulo size, and the wrap counter is 1 in the first half and 0
// in the second (it starts at 1), so wrap-around is plain modular arithmetic.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "base/unique_fd.h"
#include "memory/guest_memory.h"
#include "virtio/queue.h"

namespace vhost_vsock::virtio {

class PackedQueue final : public Queue {
 public:
  PackedQueue() = default;

  // Attaches the ring. Checks size (power of two, 1..32768), alignment (ring
  // 16, event structures 4, in guest and host addresses) and that the ring and
  // each event structure lie inside one region of guest memory. Keeps the
  // ring positions, publishing used entries still pending under the old map.
  bool configure(std::shared_ptr<const memory::GuestMemory> memory, uint16_t size, uint64_t desc_gpa,
                 uint64_t driver_event_gpa, uint64_t device_event_gpa, std::string* error);
  // Negotiated features that change ring behaviour.
  void set_features(uint64_t features);
  // Forgets the ring, positions, broken state and stats; keeps features,
  // name and call fd.
  void reset();
  void set_log_name(std::string name) { log_name_ = std::move(name); }
  // The eventfd notify() writes; an invalid fd means none (only counted).
  void set_call_fd(base::UniqueFd call_fd) { call_fd_ = std::move(call_fd); }
  [[nodiscard]] bool has_call_fd() const { return call_fd_.valid(); }
  // Hands the call fd over (to the other ring layout's queue); none is left here.
  base::UniqueFd take_call_fd() { return std::move(call_fd_); }

  [[nodiscard]] bool configured() const override { return memory_ != nullptr; }
  [[nodiscard]] bool broken() const override { return broken_; }
  [[nodiscard]] uint16_t size() const override { return size_; }
  [[nodiscard]] const QueueStats& stats() const override { return stats_; }

  // VHOST_USER_SET/GET_VRING_BASE as QEMU encodes a packed ring: bits 0-14
  // the next avail position, bit 15 its wrap counter, bits 16-30 the next used
  // position, bit 31 its wrap counter. Call after configure(); a position
  // outside the ring breaks the queue. Clears the broken state otherwise.
  void set_ring_state(uint32_t state);
  // Publishes pending used entries first, so the state matches the ring.
  [[nodiscard]] uint32_t ring_state();
  // The initial state of a fresh ring: both positions 0, both wrap counters 1.
  static constexpr uint32_t kInitialRingState = 0x80008000;

  PopStatus pop(DescriptorChain& out) override;
  void unpop(uint16_t count) override;
  [[nodiscard]] bool has_available() const override;
  // Writes the used descriptor (id and length); its flags, which hand it to
  // the driver, wait for flush_used() when it starts a batch.
  void add_used(uint16_t id, uint32_t written_length) override;
  // Publishes the batch: a release store of the first pending used
  // descriptor's flags (the later ones are already marked), so the driver
  // sees the whole batch at once.
  void flush_used() override;
  void notify() override;
  void disable_notifications() override;
  void enable_notifications() override;
  void suppress_notifications() override;

  // The decision notify() acts on (driver event suppression: ENABLE, DISABLE
  // or DESC with EVENT_IDX), public for tests. Call once per flush.
  bool should_notify();

 private:
  struct Walk;  // the state of one chain walk (packed_queue.cpp)

  [[nodiscard]] uint16_t position(uint32_t counter) const { return static_cast<uint16_t>(counter & (size_ - 1)); }
  [[nodiscard]] bool wrap(uint32_t counter) const { return counter < size_; }
  [[nodiscard]] uint32_t advance(uint32_t counter, uint32_t steps) const {
    return (counter + steps) % (2 * uint32_t{size_});
  }
  [[nodiscard]] uint16_t encode(uint32_t counter) const;
  [[nodiscard]] uint16_t load_flags(uint32_t counter) const;
  [[nodiscard]] bool descriptor_available(uint32_t counter) const;
  // Consumes the chain starting at next_avail_ (whose flags pop() loaded),
  // whatever its validity; false when the ring itself is corrupt.
  bool walk_chain(uint16_t head_flags, Walk& walk, DescriptorChain& out);
  void walk_indirect(uint64_t table_gpa, uint32_t table_bytes, Walk& walk, DescriptorChain& out);
  void add_buffer(uint64_t addr, uint32_t len, bool writable, Walk& walk, DescriptorChain& out);
  void write_used(uint16_t id, uint32_t written_length, uint16_t descriptors);
  void write_device_event(uint16_t flags);
  void mark_broken(const char* why);
  // Hands an invalid chain straight back as used with length 0.
  PopStatus return_invalid_chain(const Walk& walk, DescriptorChain& out);

  std::shared_ptr<const memory::GuestMemory> memory_;
  uint16_t size_ = 0;
  uint8_t* ring_ = nullptr;
  uint8_t* driver_event_ = nullptr;  // the driver's wishes about interrupts (we read)
  uint8_t* device_event_ = nullptr;  // our wishes about kicks (we write)
  bool event_idx_ = false;
  bool notify_on_empty_ = false;
  bool indirect_ = false;
  bool broken_ = false;
  uint32_t next_avail_ = 0;          // counter of the next descriptor to pop
  uint32_t next_used_ = 0;           // counter of the next used descriptor to write
  uint32_t batch_start_ = 0;         // counter of the first unpublished used descriptor
  uint16_t batch_flags_ = 0;         // the flags it gets when published
  uint32_t batch_size_ = 0;          // used descriptors written but not yet published
  uint32_t published_used_ = 0;      // next_used_ at the last flush
  NotifyTracker notify_tracker_;     // published_used_ at the last should_notify()
  std::vector<uint16_t> in_flight_;  // ring descriptors of each popped chain, by buffer id (0: none)
  struct Popped {
    uint32_t start;  // next_avail_ before the pop
    uint16_t id;
  };
  std::vector<Popped> popped_;  // the last `size` pops, for unpop(), indexed by pops_ modulo size
  uint32_t pops_ = 0;
  uint16_t returnable_ = 0;
  std::string log_name_ = "virtqueue";
  base::UniqueFd call_fd_;
  QueueStats stats_;
};

}  // namespace vhost_vsock::virtio
