// Driver (guest) side of a packed virtqueue (VIRTIO_F_RING_PACKED, virtio 1.1
// §2.7), laid out in a GuestRam the way Linux's virtio_ring does it: one
// descriptor ring, buffer ids from a free list, the avail and used wrap
// counters (both start at 1), a driver event suppression structure we write
// and a device one we read. Like DriverVring it keeps a shadow of every
// in-flight buffer, so a device writing garbage used descriptors cannot make
// the driver free anything twice: bad ids are counted and skipped.
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "testing/guest_ram.h"
#include "testing/guest_ring.h"

namespace vhost_vsock::testing {

inline constexpr uint16_t kPackedDescFlagAvail = 1 << 7;
inline constexpr uint16_t kPackedDescFlagUsed = 1 << 15;
inline constexpr uint16_t kRingEventFlagsEnable = 0;
inline constexpr uint16_t kRingEventFlagsDisable = 1;
inline constexpr uint16_t kRingEventFlagsDesc = 2;  // EVENT_IDX: at off_wrap
// QEMU's SET_VRING_BASE for a fresh packed ring: avail and used position 0,
// each with its wrap counter (1) in bit 15 of its half.
inline constexpr uint32_t kPackedInitialVringBase = 0x80008000;

class PackedDriverVring final : public GuestRing {
 public:
  // `size` must be a power of two in [1, 32768] (the spec allows any size
  // for packed rings; the device only takes powers of two, as QEMU does).
  PackedDriverVring(GuestRam& ram, uint16_t size, bool event_idx);

  [[nodiscard]] bool packed() const override { return true; }
  [[nodiscard]] uint16_t size() const override { return size_; }
  [[nodiscard]] bool event_idx() const override { return event_idx_; }
  [[nodiscard]] uint64_t desc_gpa() const override { return ring_gpa_; }
  [[nodiscard]] uint64_t driver_area_gpa() const override { return driver_event_gpa_; }
  [[nodiscard]] uint64_t device_area_gpa() const override { return device_event_gpa_; }
  [[nodiscard]] uint32_t initial_vring_base() const override { return kPackedInitialVringBase; }
  PackedDriverVring* as_packed() override { return this; }

  std::optional<uint16_t> add_chain(std::span<const Buffer> buffers) override;
  std::optional<uint16_t> add_indirect_chain(std::span<const Buffer> buffers) override;
  std::optional<UsedElement> pop_used() override;
  [[nodiscard]] bool has_used() const override;
  [[nodiscard]] uint16_t free_descriptors() const override { return free_count_; }
  [[nodiscard]] uint64_t bad_used_ids() const override { return bad_used_ids_; }
  [[nodiscard]] uint16_t avail_position() const override { return encode(next_avail_, avail_wrap_); }
  [[nodiscard]] bool device_wants_kick(uint16_t old_avail_position) const override;
  void set_no_interrupt(bool on) override;
  [[nodiscard]] std::string describe() const override;

  // The Buffers an id was published with (valid until its used element pops).
  [[nodiscard]] std::span<const Buffer> chain_buffers(uint16_t id) const;
  // Next used position with the used wrap counter in bit 15.
  [[nodiscard]] uint16_t used_position() const { return encode(last_used_, used_wrap_); }
  // With EVENT_IDX, pop_used() moves the driver event offset to the next
  // used position (as Linux does while callbacks are on) unless turned off.
  void set_auto_used_event(bool on) { auto_used_event_ = on; }
  [[nodiscard]] uint16_t device_event_off_wrap() const;
  [[nodiscard]] uint16_t device_event_flags() const;
  [[nodiscard]] uint16_t driver_event_off_wrap() const;
  [[nodiscard]] uint16_t driver_event_flags() const;
  void set_driver_event(uint16_t off_wrap, uint16_t flags);

  // Raw access for hostile tests: makes these descriptors available as one
  // chain at the next positions, with exactly these flags and ids plus the
  // availability bits (head last), bypassing the shadow: their used
  // descriptors pop as bad ids, one ring slot each.
  struct RawDescriptor {
    uint64_t addr;
    uint32_t len;
    uint16_t id;
    uint16_t flags;
  };
  bool publish_raw(std::span<const RawDescriptor> chain);

 private:
  struct Inflight {
    bool active = false;
    uint16_t descriptor_count = 0;  // ring slots the chain takes
    std::vector<Buffer> buffers;
  };
  struct IndirectTable {
    uint64_t gpa = 0;
    size_t capacity = 0;  // entries
  };

  [[nodiscard]] static uint16_t encode(uint16_t position, bool wrap) {
    return static_cast<uint16_t>(position | (wrap ? 0x8000 : 0));
  }
  [[nodiscard]] uint8_t* slot(uint16_t position) const { return ring_ + 16 * size_t{position}; }
  // Writes descriptors at the next positions, the head's flags last (release).
  void make_available(std::span<const RawDescriptor> chain);
  void advance_used(uint16_t slots);
  void update_used_event();
  [[nodiscard]] std::optional<UsedElement> take_used();  // the next used descriptor, unvalidated

  GuestRam& ram_;
  uint16_t size_;
  bool event_idx_;
  uint64_t ring_gpa_ = 0;
  uint64_t driver_event_gpa_ = 0;
  uint64_t device_event_gpa_ = 0;
  uint8_t* ring_ = nullptr;
  uint8_t* driver_event_ = nullptr;
  uint8_t* device_event_ = nullptr;

  uint16_t next_avail_ = 0;
  bool avail_wrap_ = true;
  uint16_t last_used_ = 0;
  bool used_wrap_ = true;
  uint16_t free_count_ = 0;            // ring slots not taken by in-flight chains
  std::vector<uint16_t> free_ids_;     // stack of buffer ids; the next one is at the back
  std::vector<Inflight> inflight_;     // by buffer id
  std::vector<IndirectTable> tables_;  // by buffer id, reused
  std::vector<RawDescriptor> scratch_;
  uint64_t bad_used_ids_ = 0;
  bool auto_used_event_ = true;
  bool no_interrupt_ = false;
};

}  // namespace vhost_vsock::testing
