#include "virtio/packed_queue.h"

#include <endian.h>
#include <spdlog/spdlog.h>

#include <atomic>
#include <bit>
#include <cstring>

#include "base/bits.h"
#include "virtio/features.h"

namespace vhost_vsock::virtio {
namespace {

// Packed ring layout (virtio 1.1 §2.7.13): le64 addr, le32 len, le16 id, le16 flags.
constexpr size_t kDescSize = 16;
constexpr size_t kLenOffset = 8;
constexpr size_t kIdOffset = 12;
constexpr size_t kFlagsOffset = 14;
constexpr size_t kEventSize = 4;  // le16 off_wrap, le16 flags

constexpr uint16_t kDescFlagNext = 1;
constexpr uint16_t kDescFlagWrite = 2;
constexpr uint16_t kDescFlagIndirect = 4;
constexpr uint16_t kDescFlagAvail = 1 << 7;
constexpr uint16_t kDescFlagUsed = 1 << 15;

constexpr uint16_t kEventFlagEnable = 0;
constexpr uint16_t kEventFlagDisable = 1;
constexpr uint16_t kEventFlagDesc = 2;  // only with EVENT_IDX: at the offset and wrap in off_wrap
constexpr uint16_t kWrapBit = 1 << 15;

// As on the split ring: generous for any real driver, a bound on the work per chain.
constexpr size_t kMaxChainIovecs = 1024;

uint16_t load_le16(const uint8_t* p, int order) {
  return le16toh(__atomic_load_n(reinterpret_cast<const uint16_t*>(p), order));
}
void store_le16(uint8_t* p, uint16_t value, int order) {
  __atomic_store_n(reinterpret_cast<uint16_t*>(p), htole16(value), order);
}

struct Descriptor {
  uint64_t addr;
  uint32_t len;
  uint16_t id;
  uint16_t flags;
};
static_assert(sizeof(Descriptor) == kDescSize);

// One copy out of guest memory. For a ring descriptor the flags were already
// loaded (with acquire, they are what the driver writes last) and are kept.
Descriptor read_descriptor(const uint8_t* p) {
  Descriptor d;
  std::memcpy(&d, p, kDescSize);
  d.addr = le64toh(d.addr);
  d.len = le32toh(d.len);
  d.id = le16toh(d.id);
  d.flags = le16toh(d.flags);
  return d;
}

// §2.7.1: available when AVAIL matches the driver's wrap counter and USED does not.
bool is_available(uint16_t flags, bool wrap) {
  return ((flags & kDescFlagAvail) != 0) == wrap && ((flags & kDescFlagUsed) != 0) != wrap;
}

bool host_aligned(const uint8_t* p, size_t alignment) {
  return reinterpret_cast<uintptr_t>(p) % alignment == 0;
}

}  // namespace

struct PackedQueue::Walk {
  uint16_t id = 0;
  uint16_t ring_descriptors = 0;  // what the used descriptor skips
  const char* invalid = nullptr;  // the first reason the chain is invalid
  bool seen_writable = false;
  size_t iovecs_left = kMaxChainIovecs;
};

bool PackedQueue::configure(std::shared_ptr<const memory::GuestMemory> memory, uint16_t size, uint64_t desc_gpa,
                            uint64_t driver_event_gpa, uint64_t device_event_gpa, std::string* error) {
  auto fail = [&](const std::string& message) {
    if (error) *error = log_name_ + ": " + message;
    return false;
  };
  if (!memory) return fail("no guest memory table");
  if (size > kMaxQueueSize || !base::is_power_of_two(size)) {
    return fail("queue size " + std::to_string(size) + " is not a power of two in 1..32768");
  }
  if (desc_gpa % 16 != 0) return fail("descriptor ring address is not 16-byte aligned");
  if (driver_event_gpa % 4 != 0 || device_event_gpa % 4 != 0) {
    return fail("event suppression structure address is not 4-byte aligned");
  }
  uint8_t* ring = memory->translate(desc_gpa, kDescSize * size);
  if (ring == nullptr) return fail("descriptor ring is not inside guest memory");
  uint8_t* driver_event = memory->translate(driver_event_gpa, kEventSize);
  uint8_t* device_event = memory->translate(device_event_gpa, kEventSize);
  if (driver_event == nullptr || device_event == nullptr) {
    return fail("event suppression structure is not inside guest memory");
  }
  if (!host_aligned(ring, 2) || !host_aligned(driver_event, 4) || !host_aligned(device_event, 4)) {
    return fail("ring is misaligned in host memory");
  }

  if (configured() && !broken_) flush_used();  // entries added under the old map must not be lost
  if (size != size_) {
    // New positions come with set_ring_state(); until then start as a fresh ring.
    next_avail_ = next_used_ = published_used_ = 0;
    notify_tracker_.restart(0);
    batch_size_ = 0;
    in_flight_.assign(size, 0);
    popped_.assign(size, Popped{});
  }
  memory_ = std::move(memory);
  size_ = size;
  ring_ = ring;
  driver_event_ = driver_event;
  device_event_ = device_event;
  notify_tracker_.forget_decisions();
  returnable_ = 0;
  write_device_event(event_idx_ ? kEventFlagDesc : kEventFlagEnable);
  return true;
}

void PackedQueue::set_features(uint64_t features) {
  event_idx_ = (features & kFeatureEventIdx) != 0;
  notify_on_empty_ = (features & kFeatureNotifyOnEmpty) != 0;
  indirect_ = (features & kFeatureIndirectDesc) != 0;
}

void PackedQueue::reset() {
  memory_.reset();
  size_ = 0;
  ring_ = driver_event_ = device_event_ = nullptr;
  broken_ = false;
  next_avail_ = next_used_ = published_used_ = 0;
  batch_size_ = 0;
  notify_tracker_.restart(0);
  in_flight_.clear();
  popped_.clear();
  pops_ = 0;
  returnable_ = 0;
  stats_ = QueueStats{};
}

uint16_t PackedQueue::encode(uint32_t counter) const {
  return static_cast<uint16_t>(position(counter) | (wrap(counter) ? kWrapBit : 0));
}

void PackedQueue::set_ring_state(uint32_t state) {
  if (!configured()) return;
  broken_ = false;
  auto decode = [this](uint16_t half, uint32_t& counter) {
    const uint32_t at = half & ~kWrapBit;
    if (at >= size_) return false;
    counter = at + ((half & kWrapBit) != 0 ? 0 : size_);
    return true;
  };
  uint32_t avail = 0;
  uint32_t used = 0;
  if (!decode(static_cast<uint16_t>(state), avail) || !decode(static_cast<uint16_t>(state >> 16), used)) {
    spdlog::error("{}: ring state {:#x} names a position outside the ring of size {}", log_name_, state, size_);
    mark_broken("the front-end's ring state is outside the ring");
    return;
  }
  next_avail_ = avail;
  next_used_ = published_used_ = used;
  batch_size_ = 0;
  notify_tracker_.restart(used);
  returnable_ = 0;
  std::fill(in_flight_.begin(), in_flight_.end(), uint16_t{0});
  write_device_event(event_idx_ ? kEventFlagDesc : kEventFlagEnable);
}

uint32_t PackedQueue::ring_state() {
  if (!configured()) return kInitialRingState;
  flush_used();
  return uint32_t{encode(next_avail_)} | uint32_t{encode(next_used_)} << 16;
}

void PackedQueue::mark_broken(const char* why) {
  if (broken_) return;
  broken_ = true;
  spdlog::error("{}: {}; the queue is stopped until the driver resets it", log_name_, why);
}

uint16_t PackedQueue::load_flags(uint32_t counter) const {
  // Acquire: the driver writes a descriptor's flags last.
  return load_le16(ring_ + kDescSize * position(counter) + kFlagsOffset, __ATOMIC_ACQUIRE);
}

bool PackedQueue::descriptor_available(uint32_t counter) const {
  return is_available(load_flags(counter), wrap(counter));
}

PopStatus PackedQueue::pop(DescriptorChain& out) {
  if (broken_) return PopStatus::kBroken;
  if (!configured()) return PopStatus::kEmpty;
  const uint16_t head_flags = load_flags(next_avail_);  // the walk uses this copy, never a re-read
  if (!is_available(head_flags, wrap(next_avail_))) return PopStatus::kEmpty;

  begin_chain(out, 0);
  Walk walk;
  if (!walk_chain(head_flags, walk, out)) return PopStatus::kBroken;
  if (walk.invalid == nullptr && walk.id >= size_) walk.invalid = "buffer id is not below the queue size";
  if (walk.invalid == nullptr && in_flight_[walk.id] != 0) walk.invalid = "buffer id is already in flight";
  const uint32_t start = next_avail_;
  next_avail_ = advance(next_avail_, walk.ring_descriptors);
  if (walk.invalid != nullptr) return return_invalid_chain(walk, out);

  set_chain_id(out, walk.id);
  in_flight_[walk.id] = walk.ring_descriptors;
  popped_[pops_ & (size_ - 1)] = Popped{start, walk.id};
  ++pops_;
  if (returnable_ < size_) ++returnable_;
  ++stats_.chains_popped;
  return PopStatus::kChain;
}

PopStatus PackedQueue::return_invalid_chain(const Walk& walk, DescriptorChain& out) {
  clear_chain(out);
  ++stats_.invalid_chains;
  returnable_ = 0;
  // Rate-limited (1st, 2nd, 4th, 8th, ...): a hostile guest can repeat this at will.
  if (std::has_single_bit(stats_.invalid_chains)) {
    spdlog::warn("{}: invalid descriptor chain with buffer id {}: {} ({} so far)", log_name_, walk.id, walk.invalid,
                 stats_.invalid_chains);
  }
  // Give the buffer back so the driver does not wait on it forever.
  write_used(walk.id, 0, walk.ring_descriptors);
  flush_used();
  return PopStatus::kInvalidChain;
}

bool PackedQueue::walk_chain(uint16_t head_flags, Walk& walk, DescriptorChain& out) {
  uint32_t counter = next_avail_;
  for (;;) {
    // The driver makes the head available last (§2.7.6), so a chain that runs
    // into an unavailable descriptor, or round the whole ring, is a corrupt ring.
    if (walk.ring_descriptors == size_) {
      mark_broken("a descriptor chain is longer than the ring");
      return false;
    }
    const uint8_t* slot = ring_ + kDescSize * position(counter);
    const uint16_t flags = walk.ring_descriptors == 0 ? head_flags : load_flags(counter);
    if (!is_available(flags, wrap(counter))) {
      mark_broken("a descriptor chain continues into descriptors the driver has not made available");
      return false;
    }
    Descriptor d = read_descriptor(slot);
    d.flags = flags;
    ++walk.ring_descriptors;
    ++stats_.descriptors_walked;
    counter = advance(counter, 1);
    walk.id = d.id;  // the chain's id is the one in its last descriptor
    // An invalid chain is still walked to its end: its descriptors are consumed either way.
    if (walk.invalid == nullptr) {
      if ((d.flags & kDescFlagIndirect) == 0) {
        add_buffer(d.addr, d.len, (d.flags & kDescFlagWrite) != 0, walk, out);
      } else if ((d.flags & kDescFlagNext) != 0) {
        walk.invalid = "indirect descriptor with NEXT set";
      } else {
        walk_indirect(d.addr, d.len, walk, out);
      }
    }
    if ((d.flags & kDescFlagNext) == 0) return true;
  }
}

void PackedQueue::walk_indirect(uint64_t table_gpa, uint32_t table_bytes, Walk& walk, DescriptorChain& out) {
  if (!indirect_) {
    walk.invalid = "indirect descriptor without VIRTIO_F_INDIRECT_DESC";
    return;
  }
  if (table_bytes == 0 || table_bytes % kDescSize != 0) {
    walk.invalid = "indirect table length is not a multiple of 16";
    return;
  }
  const uint32_t entries = table_bytes / kDescSize;
  if (entries > size_) {
    walk.invalid = "indirect table has more entries than the queue size";
    return;
  }
  const uint8_t* table = memory_->translate(table_gpa, table_bytes);
  if (table == nullptr) {
    walk.invalid = "indirect table is outside guest memory";
    return;
  }
  // The table is walked in order; its NEXT flags and ids mean nothing (§2.7.7).
  for (uint32_t i = 0; i < entries && walk.invalid == nullptr; ++i) {
    ++stats_.descriptors_walked;
    const Descriptor d = read_descriptor(table + size_t{i} * kDescSize);
    if ((d.flags & kDescFlagIndirect) != 0) {
      walk.invalid = "nested indirect descriptor";
      return;
    }
    add_buffer(d.addr, d.len, (d.flags & kDescFlagWrite) != 0, walk, out);
  }
}

void PackedQueue::add_buffer(uint64_t addr, uint32_t len, bool writable, Walk& walk, DescriptorChain& out) {
  if (writable) {
    walk.seen_writable = true;
  } else if (walk.seen_writable) {
    walk.invalid = "device-readable descriptor after a device-writable one";
    return;
  }
  if (len == 0) return;  // zero-length descriptors contribute nothing
  base::IovecList& list = chain_buffers(out, writable);
  const size_t before = list.size();
  if (!memory_->translate_to_iovecs(addr, len, list, walk.iovecs_left)) {
    walk.invalid = "buffer is outside guest memory, wraps, or needs too many iovecs";
    return;
  }
  walk.iovecs_left -= list.size() - before;
  add_chain_bytes(out, writable, len);
}

void PackedQueue::unpop(uint16_t count) {
  if (count > returnable_) {
    spdlog::error("{}: unpop({}) but only {} chains can be given back", log_name_, count, returnable_);
    count = returnable_;
  }
  for (uint16_t i = 0; i < count; ++i) {
    --pops_;
    const Popped& chain = popped_[pops_ & (size_ - 1)];
    in_flight_[chain.id] = 0;
    next_avail_ = chain.start;
  }
  returnable_ = static_cast<uint16_t>(returnable_ - count);
}

bool PackedQueue::has_available() const {
  if (!configured() || broken_) return false;
  return descriptor_available(next_avail_);
}

void PackedQueue::add_used(uint16_t id, uint32_t written_length) {
  if (!configured() || broken_) return;
  if (id >= size_ || in_flight_[id] == 0) {
    spdlog::error("{}: add_used with buffer id {}, which is not in flight", log_name_, id);
    return;
  }
  const uint16_t descriptors = in_flight_[id];
  in_flight_[id] = 0;
  write_used(id, written_length, descriptors);
}

void PackedQueue::write_used(uint16_t id, uint32_t written_length, uint16_t descriptors) {
  // One used descriptor per buffer (batching them into one needs IN_ORDER,
  // which we do not offer); it skips the chain's ring descriptors (§2.7.10).
  uint8_t* slot = ring_ + kDescSize * position(next_used_);
  const uint32_t len_le = htole32(written_length);
  const uint16_t id_le = htole16(id);
  std::memcpy(slot + kLenOffset, &len_le, sizeof(len_le));
  std::memcpy(slot + kIdOffset, &id_le, sizeof(id_le));
  const uint16_t flags = wrap(next_used_) ? (kDescFlagAvail | kDescFlagUsed) : 0;
  if (batch_size_ == 0) {
    // The driver reads used descriptors in order, so holding back the first
    // one's flags hides the whole batch until flush_used().
    batch_start_ = next_used_;
    batch_flags_ = flags;
  } else {
    store_le16(slot + kFlagsOffset, flags, __ATOMIC_RELEASE);
  }
  ++batch_size_;
  next_used_ = advance(next_used_, descriptors);
}

void PackedQueue::flush_used() {
  if (!configured() || broken_ || batch_size_ == 0) return;
  // Release: the batch's ids and lengths become visible before its first flags.
  store_le16(ring_ + kDescSize * position(batch_start_) + kFlagsOffset, batch_flags_, __ATOMIC_RELEASE);
  batch_size_ = 0;
  published_used_ = next_used_;
}

bool PackedQueue::should_notify() {
  if (!configured() || broken_) return false;
  const auto window = notify_tracker_.begin(published_used_);
  if (!window) return false;  // nothing published since the last decision
  const uint32_t new_used = window->new_position;
  const uint32_t old_used = window->old_position;

  const uint16_t flags = load_le16(driver_event_ + 2, __ATOMIC_RELAXED);
  bool notify = flags != kEventFlagDisable;  // ENABLE, or a reserved value: rather one interrupt too many
  if (flags == kEventFlagDesc && event_idx_ && window->old_valid) {
    // §2.7.10: interrupt when the used descriptor at off_wrap was written in
    // (old, new], counted on the 2 * size circle our counters live on.
    const uint16_t off_wrap = load_le16(driver_event_, __ATOMIC_RELAXED);
    const uint32_t offset = off_wrap & ~kWrapBit;
    if (offset < size_) {
      const uint32_t circle = 2 * uint32_t{size_};
      const uint32_t event = offset + ((off_wrap & kWrapBit) != 0 ? 0 : size_);
      notify = (new_used + 2 * circle - event - 1) % circle < (new_used + circle - old_used) % circle;
    }
  }
  // NOTIFY_ON_EMPTY: running out of buffers overrides any suppression.
  if (!notify && notify_on_empty_ && !descriptor_available(next_avail_)) notify = true;
  return count_decision(notify, call_fd_.valid(), stats_);
}

void PackedQueue::notify() {
  flush_used();
  if (should_notify()) write_call_fd(call_fd_.get(), stats_, log_name_);
}

void PackedQueue::write_device_event(uint16_t flags) {
  // One 32-bit store, so the driver never sees new flags with an old offset.
  const uint32_t value = uint32_t{encode(next_avail_)} | uint32_t{flags} << 16;
  __atomic_store_n(reinterpret_cast<uint32_t*>(device_event_), htole32(value), __ATOMIC_RELAXED);
}

void PackedQueue::disable_notifications() {
  if (!configured() || broken_) return;
  // With EVENT_IDX the driver kicks only when it passes the offset, which we
  // leave where it is while draining.
  if (!event_idx_) write_device_event(kEventFlagDisable);
}

void PackedQueue::suppress_notifications() {
  // DISABLE holds whatever EVENT_IDX says: the driver reads the flags first.
  if (configured() && !broken_) write_device_event(kEventFlagDisable);
}

void PackedQueue::enable_notifications() {
  if (!configured() || broken_) return;
  write_device_event(event_idx_ ? kEventFlagDesc : kEventFlagEnable);
  // The store must be visible before the caller re-checks the ring.
  std::atomic_thread_fence(std::memory_order_seq_cst);
}

}  // namespace vhost_vsock::virtio
