#include "testing/packed_driver_vring.h"

#include <algorithm>
#include <bit>
#include <cstring>
#include <stdexcept>

namespace vhost_vsock::testing {

static_assert(std::endian::native == std::endian::little, "the rings are little-endian; so is the host");

namespace {

constexpr size_t kDescSize = 16;
constexpr size_t kEventSize = 4;  // le16 off_wrap, le16 flags
constexpr uint16_t kNext = 1;
constexpr uint16_t kWrite = 2;
constexpr uint16_t kIndirect = 4;
constexpr uint16_t kWrapBit = 0x8000;

uint16_t load_acquire(const uint8_t* p) {
  return __atomic_load_n(reinterpret_cast<const uint16_t*>(p), __ATOMIC_ACQUIRE);
}
void store_release(uint8_t* p, uint16_t v) {
  __atomic_store_n(reinterpret_cast<uint16_t*>(p), v, __ATOMIC_RELEASE);
}

// The availability bits of a descriptor made available in a lap with this
// avail wrap counter (§2.7.1: AVAIL equal to it, USED the opposite).
uint16_t avail_bits(bool wrap) {
  return wrap ? kPackedDescFlagAvail : kPackedDescFlagUsed;
}

void encode_descriptor(uint8_t* at, uint64_t addr, uint32_t len, uint16_t id, uint16_t flags) {
  std::memcpy(at, &addr, 8);
  std::memcpy(at + 8, &len, 4);
  std::memcpy(at + 12, &id, 2);
  std::memcpy(at + 14, &flags, 2);
}

// virtio 1.2 §2.7.10: the peer wants a notification if `event` lies in (old, new].
bool need_event(uint16_t event, uint16_t new_idx, uint16_t old_idx) {
  return static_cast<uint16_t>(new_idx - event - 1) < static_cast<uint16_t>(new_idx - old_idx);
}

}  // namespace

PackedDriverVring::PackedDriverVring(GuestRam& ram, uint16_t size, bool event_idx)
    : ram_(ram), size_(size), event_idx_(event_idx) {
  if (size == 0 || (size & (size - 1)) != 0 || size > 32768) {
    throw std::invalid_argument("PackedDriverVring: size must be a power of two in [1, 32768]");
  }
  ring_gpa_ = ram.alloc(kDescSize * size, 16);
  driver_event_gpa_ = ram.alloc(kEventSize, 4);
  device_event_gpa_ = ram.alloc(kEventSize, 4);
  ring_ = ram.host(ring_gpa_, kDescSize * size);
  driver_event_ = ram.host(driver_event_gpa_, kEventSize);
  device_event_ = ram.host(device_event_gpa_, kEventSize);
  free_count_ = size;
  free_ids_.reserve(size);
  for (uint16_t id = size; id-- > 0;) free_ids_.push_back(id);  // id 0 first
  inflight_.resize(size);
  tables_.resize(size);
  // Callbacks on from the start: with EVENT_IDX at the first used position.
  set_driver_event(encode(0, true), event_idx_ ? kRingEventFlagsDesc : kRingEventFlagsEnable);
}

void PackedDriverVring::make_available(std::span<const RawDescriptor> chain) {
  uint8_t* head = slot(next_avail_);
  uint16_t head_flags = 0;
  for (size_t i = 0; i < chain.size(); ++i) {
    const RawDescriptor& d = chain[i];
    const auto flags = static_cast<uint16_t>(d.flags | avail_bits(avail_wrap_));
    if (i == 0) {
      head_flags = flags;
      // Not available in any lap until the release store below.
      encode_descriptor(head, d.addr, d.len, d.id, avail_bits(!avail_wrap_));
    } else {
      encode_descriptor(slot(next_avail_), d.addr, d.len, d.id, flags);
    }
    if (++next_avail_ == size_) {
      next_avail_ = 0;
      avail_wrap_ = !avail_wrap_;
    }
  }
  // Everything else of the chain must be visible before its head's flags.
  store_release(head + 14, head_flags);
}

std::optional<uint16_t> PackedDriverVring::add_chain(std::span<const Buffer> buffers) {
  if (buffers.empty() || buffers.size() > free_count_ || free_ids_.empty()) return std::nullopt;
  const uint16_t id = free_ids_.back();
  free_ids_.pop_back();
  scratch_.clear();
  for (size_t i = 0; i < buffers.size(); ++i) {
    uint16_t flags = buffers[i].device_writable ? kWrite : 0;
    if (i + 1 < buffers.size()) flags |= kNext;
    scratch_.push_back({buffers[i].gpa, buffers[i].len, id, flags});
  }
  Inflight& entry = inflight_[id];
  entry.active = true;
  entry.descriptor_count = static_cast<uint16_t>(buffers.size());
  entry.buffers.assign(buffers.begin(), buffers.end());
  free_count_ = static_cast<uint16_t>(free_count_ - buffers.size());
  make_available(scratch_);
  return id;
}

std::optional<uint16_t> PackedDriverVring::add_indirect_chain(std::span<const Buffer> buffers) {
  if (buffers.empty() || buffers.size() > size_ || free_count_ == 0 || free_ids_.empty()) return std::nullopt;
  const uint16_t id = free_ids_.back();
  IndirectTable& table = tables_[id];
  if (table.capacity < buffers.size()) {
    // Grow in steps so an id that is reused with similar chains stops allocating.
    const size_t capacity = std::max<size_t>(buffers.size(), 4);
    table.gpa = ram_.alloc(kDescSize * capacity, 16);
    table.capacity = capacity;
  }
  free_ids_.pop_back();
  // Packed indirect tables are sequential: no NEXT, the length gives the count.
  uint8_t* entries = ram_.host(table.gpa, kDescSize * buffers.size());
  for (size_t i = 0; i < buffers.size(); ++i) {
    encode_descriptor(entries + kDescSize * i, buffers[i].gpa, buffers[i].len, 0,
                      buffers[i].device_writable ? kWrite : 0);
  }
  Inflight& entry = inflight_[id];
  entry.active = true;
  entry.descriptor_count = 1;
  entry.buffers.assign(buffers.begin(), buffers.end());
  --free_count_;
  const RawDescriptor head{table.gpa, static_cast<uint32_t>(kDescSize * buffers.size()), id, kIndirect};
  make_available(std::span(&head, 1));
  return id;
}

bool PackedDriverVring::publish_raw(std::span<const RawDescriptor> chain) {
  if (chain.empty() || chain.size() > free_count_) return false;
  free_count_ = static_cast<uint16_t>(free_count_ - chain.size());
  make_available(chain);
  return true;
}

bool PackedDriverVring::has_used() const {
  const uint16_t flags = load_acquire(slot(last_used_) + 14);
  // §2.7.1: used when AVAIL and USED both equal the used wrap counter.
  return ((flags & kPackedDescFlagAvail) != 0) == used_wrap_ && ((flags & kPackedDescFlagUsed) != 0) == used_wrap_;
}

std::optional<GuestRing::UsedElement> PackedDriverVring::take_used() {
  if (!has_used()) return std::nullopt;  // the acquire load orders the reads below
  const uint8_t* d = slot(last_used_);
  UsedElement used{};
  std::memcpy(&used.len, d + 8, 4);
  std::memcpy(&used.id, d + 12, 2);
  return used;
}

void PackedDriverVring::advance_used(uint16_t slots) {
  const uint32_t next = uint32_t{last_used_} + slots;
  if (next >= size_) used_wrap_ = !used_wrap_;
  last_used_ = static_cast<uint16_t>(next % size_);
  free_count_ = static_cast<uint16_t>(std::min<uint32_t>(size_, uint32_t{free_count_} + slots));
  update_used_event();
}

void PackedDriverVring::update_used_event() {
  if (!event_idx_ || !auto_used_event_ || no_interrupt_) return;
  // Like Linux with callbacks enabled: interrupt us for the very next entry.
  set_driver_event(used_position(), kRingEventFlagsDesc);
  // Our next has_used() must not read the ring before the device can see the
  // new offset, or a descriptor used in between is never signalled.
  __atomic_thread_fence(__ATOMIC_SEQ_CST);
}

std::optional<GuestRing::UsedElement> PackedDriverVring::pop_used() {
  // Bounded: at most one full ring of bad entries is skipped per call.
  for (uint32_t attempts = 0; attempts <= size_; ++attempts) {
    auto used = take_used();
    if (!used) return std::nullopt;
    if (used->id >= size_ || !inflight_[used->id].active) {
      // We cannot know how many slots the device meant to skip: one.
      ++bad_used_ids_;
      advance_used(1);
      continue;
    }
    Inflight& entry = inflight_[used->id];
    entry.active = false;
    free_ids_.push_back(used->id);
    advance_used(entry.descriptor_count);
    entry.descriptor_count = 0;
    return used;
  }
  return std::nullopt;
}

std::span<const GuestRing::Buffer> PackedDriverVring::chain_buffers(uint16_t id) const {
  if (id >= size_ || !inflight_[id].active) return {};
  return inflight_[id].buffers;
}

bool PackedDriverVring::device_wants_kick(uint16_t old_avail_position) const {
  // The device reads the ring, then writes its wishes; we must read them
  // after our flags store (Linux uses a full barrier here).
  __atomic_thread_fence(__ATOMIC_SEQ_CST);
  const uint16_t flags = device_event_flags();
  if (!event_idx_ || flags != kRingEventFlagsDesc) return flags != kRingEventFlagsDisable;
  const auto old_position = static_cast<uint16_t>(old_avail_position & ~kWrapBit);
  const bool old_wrap = (old_avail_position & kWrapBit) != 0;
  const auto added =
      static_cast<uint16_t>(old_wrap == avail_wrap_ ? next_avail_ - old_position : next_avail_ + size_ - old_position);
  // As Linux's virtqueue_kick_prepare_packed: an event offset in the other
  // lap counts one ring size back.
  const uint16_t off_wrap = device_event_off_wrap();
  auto event = static_cast<uint16_t>(off_wrap & ~kWrapBit);
  if (((off_wrap & kWrapBit) != 0) != avail_wrap_) event = static_cast<uint16_t>(event - size_);
  return need_event(event, next_avail_, static_cast<uint16_t>(next_avail_ - added));
}

void PackedDriverVring::set_no_interrupt(bool on) {
  no_interrupt_ = on;
  if (on) {
    set_driver_event(driver_event_off_wrap(), kRingEventFlagsDisable);
  } else {
    set_driver_event(used_position(), event_idx_ ? kRingEventFlagsDesc : kRingEventFlagsEnable);
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
  }
}

uint16_t PackedDriverVring::device_event_off_wrap() const {
  return load_acquire(device_event_);
}
uint16_t PackedDriverVring::device_event_flags() const {
  return load_acquire(device_event_ + 2);
}
uint16_t PackedDriverVring::driver_event_off_wrap() const {
  return load_acquire(driver_event_);
}
uint16_t PackedDriverVring::driver_event_flags() const {
  return load_acquire(driver_event_ + 2);
}
void PackedDriverVring::set_driver_event(uint16_t off_wrap, uint16_t flags) {
  store_release(driver_event_, off_wrap);
  store_release(driver_event_ + 2, flags);
}

std::string PackedDriverVring::describe() const {
  return "packed avail=" + std::to_string(next_avail_) + "/wrap" + std::to_string(avail_wrap_) +
         " used=" + std::to_string(last_used_) + "/wrap" + std::to_string(used_wrap_) +
         " free_desc=" + std::to_string(free_count_) + " free_ids=" + std::to_string(free_ids_.size()) +
         " device_event=" + std::to_string(device_event_off_wrap()) + "/" + std::to_string(device_event_flags()) +
         " driver_event=" + std::to_string(driver_event_off_wrap()) + "/" + std::to_string(driver_event_flags());
}

}  // namespace vhost_vsock::testing
