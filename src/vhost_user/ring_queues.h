// The virtqueue behind one vring: split or packed, chosen by the negotiated
// features (VIRTIO_F_RING_PACKED). The session sets a vring up the same way
// whatever the layout; the differences live here: which guest areas
// SET_VRING_ADDR's three addresses name (split: descriptor table, avail ring,
// used ring; packed: descriptor ring, driver and device event suppression),
// and what SET/GET_VRING_BASE carry (split: the next avail index; packed:
// QEMU's ring state, the avail and used positions each with its wrap counter
// in bit 15).
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "base/unique_fd.h"
#include "memory/guest_memory.h"
#include "virtio/packed_queue.h"
#include "virtio/queue.h"
#include "virtio/split_queue.h"

namespace vhost_vsock::vhost_user {

class RingQueues {
 public:
  // Picks the layout (and passes the ring features on); the call fd follows
  // to the picked queue. Switch layouts only while the ring is stopped.
  void set_features(uint64_t features);
  [[nodiscard]] bool packed() const { return packed_; }
  [[nodiscard]] virtio::Queue& queue();
  [[nodiscard]] const virtio::Queue& queue() const;

  // Kept by the queue whether or not the ring runs (VHOST_USER_SET_VRING_CALL).
  void set_call_fd(base::UniqueFd call_fd);
  void set_log_name(const std::string& name);
  // Forgets rings, positions and stats; keeps features and call fd.
  void reset();

  // Bytes each of SET_VRING_ADDR's areas spans, so each can be required to
  // lie inside one memory region.
  struct Spans {
    uint64_t desc;
    uint64_t avail;  // packed: the driver event suppression structure
    uint64_t used;   // packed: the device event suppression structure
  };
  [[nodiscard]] static Spans spans(uint16_t size, uint64_t features);
  // Attaches the picked queue to guest memory (gpa of each area).
  bool configure(std::shared_ptr<const memory::GuestMemory> memory, uint16_t size, uint64_t desc, uint64_t avail,
                 uint64_t used, std::string* error);

  // Why a SET_VRING_BASE value does not fit the layout (positions are checked
  // against `size` when it is known, i.e. not 0); nullptr when it fits.
  [[nodiscard]] static const char* check_base(uint32_t base, uint16_t size, uint64_t features);
  // The base of a ring the front-end never set one for.
  [[nodiscard]] static uint32_t initial_base(uint64_t features);
  // Resumes the configured queue from a base (see above).
  void set_base(uint32_t base);
  // What GET_VRING_BASE reports; publishes pending used entries of a packed ring first.
  [[nodiscard]] uint32_t base();

 private:
  bool packed_ = false;
  virtio::SplitQueue split_;
  virtio::PackedQueue packed_queue_;
};

}  // namespace vhost_vsock::vhost_user
