// What the simulated guest driver needs from a virtqueue's driver side,
// whatever the ring layout: DriverVring (split, virtio 1.2 §2.7) or
// PackedDriverVring (packed, §2.8 of 1.2 / §2.7 of 1.1). The vsock driver and
// the front-end hold a GuestRing&, so every flow runs over either layout.
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <string>

namespace vhost_vsock::testing {

class DriverVring;
class PackedDriverVring;

class GuestRing {
 public:
  struct Buffer {
    uint64_t gpa;
    uint32_t len;
    bool device_writable;
  };
  // `id` is the split ring's head index or the packed ring's buffer id:
  // either way below size(), and what add_chain() returned.
  struct UsedElement {
    uint16_t id;
    uint32_t len;
  };

  GuestRing() = default;
  GuestRing(const GuestRing&) = delete;
  GuestRing& operator=(const GuestRing&) = delete;
  virtual ~GuestRing() = default;

  [[nodiscard]] virtual bool packed() const = 0;
  [[nodiscard]] virtual uint16_t size() const = 0;
  [[nodiscard]] virtual bool event_idx() const = 0;
  // SET_VRING_ADDR's three areas: split desc/avail/used, packed
  // ring/driver event/device event.
  [[nodiscard]] virtual uint64_t desc_gpa() const = 0;
  [[nodiscard]] virtual uint64_t driver_area_gpa() const = 0;
  [[nodiscard]] virtual uint64_t device_area_gpa() const = 0;
  // SET_VRING_BASE for a fresh ring, as QEMU sends it for this layout.
  [[nodiscard]] virtual uint32_t initial_vring_base() const = 0;

  // Publishes one chain; nullopt (nothing published) if `buffers` is empty
  // or too few descriptors (or buffer ids) are free.
  virtual std::optional<uint16_t> add_chain(std::span<const Buffer> buffers) = 0;
  // Same, through one INDIRECT descriptor pointing at a table in guest RAM.
  virtual std::optional<uint16_t> add_indirect_chain(std::span<const Buffer> buffers) = 0;
  // Next used element in ring order, freeing its descriptors; nullopt when
  // the device has published nothing new. Bad ids are counted and skipped.
  virtual std::optional<UsedElement> pop_used() = 0;
  [[nodiscard]] virtual bool has_used() const = 0;
  [[nodiscard]] virtual uint16_t free_descriptors() const = 0;
  [[nodiscard]] virtual uint64_t bad_used_ids() const = 0;

  // Where the next chain goes (split: avail idx; packed: position with the
  // avail wrap counter in bit 15). Take it before a batch of add_chain()s and
  // pass it to device_wants_kick() after them.
  [[nodiscard]] virtual uint16_t avail_position() const = 0;
  [[nodiscard]] virtual bool device_wants_kick(uint16_t old_avail_position) const = 0;
  // VRING_AVAIL_F_NO_INTERRUPT / RING_EVENT_FLAGS_DISABLE.
  virtual void set_no_interrupt(bool on) = 0;

  // One line of ring state for failure messages.
  [[nodiscard]] virtual std::string describe() const = 0;

  // The concrete layout, for hostile tests that write raw ring entries;
  // nullptr for the other layout.
  virtual DriverVring* as_split() { return nullptr; }
  virtual PackedDriverVring* as_packed() { return nullptr; }
};

}  // namespace vhost_vsock::testing
