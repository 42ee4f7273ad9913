// Driver (guest) side of a split virtqueue (virtio 1.2 §2.7) laid out in a
// GuestRam. It keeps its own shadow of the free list and of each in-flight
// chain, so a buggy device writing garbage into the used ring cannot make the
// driver free descriptors twice: bad used ids are counted and skipped.
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <vector>

#include "testing/guest_ram.h"
#include "testing/guest_ring.h"

namespace vhost_vsock::testing {

inline constexpr uint16_t kDescFlagNext = 1;
inline constexpr uint16_t kDescFlagWrite = 2;
inline constexpr uint16_t kDescFlagIndirect = 4;
inline constexpr uint16_t kAvailFlagNoInterrupt = 1;
inline constexpr uint16_t kUsedFlagNoNotify = 1;

class DriverVring final : public GuestRing {
 public:
  // `size` must be a power of two in [1, 32768]. Rings are allocated in `ram`
  // (desc 16-byte, avail 2-byte, used 4-byte aligned) and start zeroed.
  DriverVring(GuestRam& ram, uint16_t size, bool event_idx);

  [[nodiscard]] bool packed() const override { return false; }
  [[nodiscard]] uint64_t desc_gpa() const override { return desc_gpa_; }
  [[nodiscard]] uint64_t avail_gpa() const { return avail_gpa_; }
  [[nodiscard]] uint64_t used_gpa() const { return used_gpa_; }
  [[nodiscard]] uint64_t driver_area_gpa() const override { return avail_gpa_; }
  [[nodiscard]] uint64_t device_area_gpa() const override { return used_gpa_; }
  [[nodiscard]] uint32_t initial_vring_base() const override { return 0; }
  [[nodiscard]] uint16_t size() const override { return size_; }
  [[nodiscard]] bool event_idx() const override { return event_idx_; }
  DriverVring* as_split() override { return this; }

  // Writes the chain into free descriptors and publishes its head; nullopt
  // (nothing published) if `buffers` is empty or too few descriptors are free.
  std::optional<uint16_t> add_chain(std::span<const Buffer> buffers) override;
  // Same, but through one INDIRECT descriptor pointing at a table in guest RAM.
  std::optional<uint16_t> add_indirect_chain(std::span<const Buffer> buffers) override;
  // Next used element in ring order, freeing its chain's descriptors; nullopt
  // when the device has published nothing new.
  std::optional<UsedElement> pop_used() override;
  [[nodiscard]] bool has_used() const override;
  [[nodiscard]] uint16_t free_descriptors() const override { return free_count_; }
  [[nodiscard]] uint16_t in_flight() const { return static_cast<uint16_t>(size_ - free_count_); }
  // The Buffers a head was published with (valid until its used element pops).
  [[nodiscard]] std::span<const Buffer> chain_buffers(uint16_t head) const;
  // Used elements whose id was not an in-flight head (device bug), skipped.
  [[nodiscard]] uint64_t bad_used_ids() const override { return bad_used_ids_; }

  // Driver's avail idx (next slot to publish) and the device's used idx.
  [[nodiscard]] uint16_t avail_idx() const { return avail_idx_; }
  [[nodiscard]] uint16_t avail_position() const override { return avail_idx_; }
  [[nodiscard]] uint16_t device_used_idx() const;
  [[nodiscard]] uint16_t last_used_idx() const { return last_used_idx_; }

  // Raw access for hostile tests. These bypass the shadow bookkeeping: a
  // descriptor written here is not marked in flight, so pop_used() will count
  // its used element as a bad id unless the test pops with pop_used_raw().
  void write_descriptor(uint16_t index, uint64_t addr, uint32_t len, uint16_t flags, uint16_t next);
  void publish_head(uint16_t head);  // puts head in the avail ring and bumps avail idx
  void set_avail_idx(uint16_t idx);
  std::optional<UsedElement> pop_used_raw();  // advances without freeing anything
  void set_used_event(uint16_t idx);          // EVENT_IDX: interrupt threshold
  // With EVENT_IDX, pop_used() moves used_event to the next entry (as Linux
  // does while callbacks are on) unless this is turned off or NO_INTERRUPT is set.
  void set_auto_used_event(bool on) { auto_used_event_ = on; }
  void set_no_interrupt(bool on) override;  // VRING_AVAIL_F_NO_INTERRUPT
  // Whether the device asked to be kicked for avail entries published since
  // `old_avail_idx` (used->flags NO_NOTIFY, or avail_event with EVENT_IDX).
  [[nodiscard]] bool device_wants_kick(uint16_t old_avail_idx) const override;
  // Whether the device should have interrupted us for used entries it
  // published from `old_used_idx` up to now (for checking the device's
  // notification suppression against our used_event / NO_INTERRUPT).
  [[nodiscard]] bool interrupt_expected(uint16_t old_used_idx, uint16_t new_used_idx) const;
  [[nodiscard]] uint16_t avail_event() const;  // device-written, EVENT_IDX only
  [[nodiscard]] std::string describe() const override;

 private:
  struct Inflight {
    bool active = false;
    uint16_t descriptor_count = 0;  // in the main table
    std::vector<Buffer> buffers;
  };
  struct IndirectTable {
    uint64_t gpa = 0;
    size_t capacity = 0;  // entries
  };

  uint8_t* desc_ptr(uint16_t index);
  uint16_t* avail_flags_ptr() const;
  uint16_t* avail_idx_ptr() const;
  uint16_t* avail_ring_ptr(uint16_t slot) const;
  uint16_t* used_event_ptr() const;
  uint16_t* used_flags_ptr() const;
  uint16_t* used_idx_ptr() const;
  uint8_t* used_elem_ptr(uint16_t slot) const;
  uint16_t* avail_event_ptr() const;

  std::optional<uint16_t> take_free_descriptors(uint16_t count, std::vector<uint16_t>& out);
  void publish(uint16_t head);
  static void encode_descriptor(uint8_t* at, uint64_t addr, uint32_t len, uint16_t flags, uint16_t next);

  GuestRam& ram_;
  uint16_t size_;
  bool event_idx_;
  uint64_t desc_gpa_ = 0;
  uint64_t avail_gpa_ = 0;
  uint64_t used_gpa_ = 0;
  uint8_t* desc_ = nullptr;
  uint8_t* avail_ = nullptr;
  uint8_t* used_ = nullptr;

  std::vector<uint16_t> free_next_;  // shadow "next" links of the free list
  uint16_t free_head_ = 0;
  uint16_t free_count_ = 0;
  std::vector<Inflight> inflight_;
  std::vector<IndirectTable> indirect_tables_;  // per head, reused
  std::vector<uint16_t> scratch_;
  uint16_t avail_idx_ = 0;
  uint16_t last_used_idx_ = 0;
  uint64_t bad_used_ids_ = 0;
  bool auto_used_event_ = true;
};

}  // namespace vhost_vsock::testing
