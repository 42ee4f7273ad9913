#include "vhost_user/ring_queues.h"

#include <utility>

#include "virtio/features.h"

namespace vhost_vsock::vhost_user {
namespace {

constexpr uint32_t kPositionMask = 0x7fff;  // of each 16-bit half of a packed ring state

}  // namespace

void RingQueues::set_features(uint64_t features) {
  const bool packed = (features & virtio::kFeatureRingPacked) != 0;
  if (packed != packed_) {
    if (packed) {
      packed_queue_.set_call_fd(split_.take_call_fd());
    } else {
      split_.set_call_fd(packed_queue_.take_call_fd());
    }
    packed_ = packed;
  }
  split_.set_features(features);
  packed_queue_.set_features(features);
}

virtio::Queue& RingQueues::queue() {
  if (packed_) return packed_queue_;
  return split_;
}

const virtio::Queue& RingQueues::queue() const {
  if (packed_) return packed_queue_;
  return split_;
}

void RingQueues::set_call_fd(base::UniqueFd call_fd) {
  if (packed_) {
    packed_queue_.set_call_fd(std::move(call_fd));
  } else {
    split_.set_call_fd(std::move(call_fd));
  }
}

void RingQueues::set_log_name(const std::string& name) {
  split_.set_log_name(name);
  packed_queue_.set_log_name(name);
}

void RingQueues::reset() {
  split_.reset();
  packed_queue_.reset();
}

RingQueues::Spans RingQueues::spans(uint16_t size, uint64_t features) {
  if ((features & virtio::kFeatureRingPacked) != 0) return Spans{16ULL * size, 4, 4};
  // Split (virtio 1.2 §2.7): the avail and used rings end in an event field with EVENT_IDX.
  const uint64_t event_field = (features & virtio::kFeatureEventIdx) != 0 ? 2 : 0;
  return Spans{16ULL * size, 4 + 2ULL * size + event_field, 4 + 8ULL * size + event_field};
}

bool RingQueues::configure(std::shared_ptr<const memory::GuestMemory> memory, uint16_t size, uint64_t desc,
                           uint64_t avail, uint64_t used, std::string* error) {
  if (packed_) return packed_queue_.configure(std::move(memory), size, desc, avail, used, error);
  return split_.configure(std::move(memory), size, desc, avail, used, error);
}

const char* RingQueues::check_base(uint32_t base, uint16_t size, uint64_t features) {
  if ((features & virtio::kFeatureRingPacked) == 0) {
    return base > 0xffff ? "does not fit a split ring index (a packed ring's state, without VIRTIO_F_RING_PACKED?)"
                         : nullptr;
  }
  if (size != 0 && ((base & kPositionMask) >= size || ((base >> 16) & kPositionMask) >= size)) {
    return "names a packed ring position outside the ring";
  }
  return nullptr;
}

uint32_t RingQueues::initial_base(uint64_t features) {
  return (features & virtio::kFeatureRingPacked) != 0 ? virtio::PackedQueue::kInitialRingState : 0;
}

void RingQueues::set_base(uint32_t base) {
  if (packed_) {
    packed_queue_.set_ring_state(base);
  } else {
    split_.set_next_avail(static_cast<uint16_t>(base));
  }
}

uint32_t RingQueues::base() {
  if (packed_) return packed_queue_.ring_state();
  return split_.next_avail();
}

}  // namespace vhost_vsock::vhost_user
