#include "testing/driver_vring.h"

#include <algorithm>
#include <bit>
#include <cstring>
#include <stdexcept>
#include <string>

namespace vhost_vsock::testing {

static_assert(std::endian::native == std::endian::little, "the rings are little-endian; so is the host");

namespace {

constexpr size_t kDescSize = 16;
constexpr size_t kUsedElemSize = 8;

uint16_t load_acquire(const uint16_t* p) {
  return __atomic_load_n(p, __ATOMIC_ACQUIRE);
}
void store_release(uint16_t* p, uint16_t v) {
  __atomic_store_n(p, v, __ATOMIC_RELEASE);
}

// virtio 1.2 §2.7.10: the device/driver wants a notification if `event` lies
// in (old, new].
bool need_event(uint16_t event, uint16_t new_idx, uint16_t old_idx) {
  return static_cast<uint16_t>(new_idx - event - 1) < static_cast<uint16_t>(new_idx - old_idx);
}

}  // namespace

DriverVring::DriverVring(GuestRam& ram, uint16_t size, bool event_idx) : ram_(ram), size_(size), event_idx_(event_idx) {
  if (size == 0 || (size & (size - 1)) != 0 || size > 32768) {
    throw std::invalid_argument("DriverVring: size must be a power of two in [1, 32768]");
  }
  const size_t avail_bytes = 4 + 2 * size_t{size} + 2;
  const size_t used_bytes = 4 + kUsedElemSize * size_t{size} + 2;
  desc_gpa_ = ram.alloc(kDescSize * size, 16);
  avail_gpa_ = ram.alloc(avail_bytes, 2);
  used_gpa_ = ram.alloc(used_bytes, 4);
  desc_ = ram.host(desc_gpa_, kDescSize * size);
  avail_ = ram.host(avail_gpa_, avail_bytes);
  used_ = ram.host(used_gpa_, used_bytes);

  free_next_.resize(size);
  for (uint16_t i = 0; i < size; ++i) free_next_[i] = static_cast<uint16_t>(i + 1);
  free_head_ = 0;
  free_count_ = size;
  inflight_.resize(size);
  indirect_tables_.resize(size);
}

uint8_t* DriverVring::desc_ptr(uint16_t index) {
  return desc_ + kDescSize * index;
}
uint16_t* DriverVring::avail_flags_ptr() const {
  return reinterpret_cast<uint16_t*>(avail_);
}
uint16_t* DriverVring::avail_idx_ptr() const {
  return reinterpret_cast<uint16_t*>(avail_ + 2);
}
uint16_t* DriverVring::avail_ring_ptr(uint16_t slot) const {
  return reinterpret_cast<uint16_t*>(avail_ + 4 + 2 * size_t{slot});
}
uint16_t* DriverVring::used_event_ptr() const {
  return reinterpret_cast<uint16_t*>(avail_ + 4 + 2 * size_t{size_});
}
uint16_t* DriverVring::used_flags_ptr() const {
  return reinterpret_cast<uint16_t*>(used_);
}
uint16_t* DriverVring::used_idx_ptr() const {
  return reinterpret_cast<uint16_t*>(used_ + 2);
}
uint8_t* DriverVring::used_elem_ptr(uint16_t slot) const {
  return used_ + 4 + kUsedElemSize * size_t{slot};
}
uint16_t* DriverVring::avail_event_ptr() const {
  return reinterpret_cast<uint16_t*>(used_ + 4 + kUsedElemSize * size_t{size_});
}

void DriverVring::encode_descriptor(uint8_t* at, uint64_t addr, uint32_t len, uint16_t flags, uint16_t next) {
  std::memcpy(at, &addr, 8);
  std::memcpy(at + 8, &len, 4);
  std::memcpy(at + 12, &flags, 2);
  std::memcpy(at + 14, &next, 2);
}

std::optional<uint16_t> DriverVring::take_free_descriptors(uint16_t count, std::vector<uint16_t>& out) {
  out.clear();
  if (count == 0 || count > free_count_) return std::nullopt;
  for (uint16_t i = 0; i < count; ++i) {
    out.push_back(free_head_);
    free_head_ = free_next_[free_head_];
  }
  free_count_ = static_cast<uint16_t>(free_count_ - count);
  return out.front();
}

void DriverVring::publish(uint16_t head) {
  *avail_ring_ptr(static_cast<uint16_t>(avail_idx_ & (size_ - 1))) = head;
  ++avail_idx_;
  // The ring entry and descriptors must be visible before the new idx.
  store_release(avail_idx_ptr(), avail_idx_);
}

std::optional<uint16_t> DriverVring::add_chain(std::span<const Buffer> buffers) {
  if (buffers.empty() || buffers.size() > size_) return std::nullopt;
  const auto count = static_cast<uint16_t>(buffers.size());
  if (!take_free_descriptors(count, scratch_)) return std::nullopt;
  for (uint16_t i = 0; i < count; ++i) {
    const Buffer& b = buffers[i];
    const bool last = i + 1 == count;
    uint16_t flags = b.device_writable ? kDescFlagWrite : 0;
    if (!last) flags |= kDescFlagNext;
    encode_descriptor(desc_ptr(scratch_[i]), b.gpa, b.len, flags, last ? 0 : scratch_[i + 1]);
  }
  const uint16_t head = scratch_.front();
  // free_next_ still links the taken descriptors in chain order, which is
  // what pop_used() walks to return them.
  Inflight& entry = inflight_[head];
  entry.active = true;
  entry.descriptor_count = count;
  entry.buffers.assign(buffers.begin(), buffers.end());
  publish(head);
  return head;
}

std::optional<uint16_t> DriverVring::add_indirect_chain(std::span<const Buffer> buffers) {
  if (buffers.empty() || buffers.size() > 32768 / 2) return std::nullopt;
  if (!take_free_descriptors(1, scratch_)) return std::nullopt;
  const uint16_t head = scratch_.front();
  IndirectTable& table = indirect_tables_[head];
  if (table.capacity < buffers.size()) {
    // Grow in steps so a head that is reused with similar chains stops allocating.
    const size_t capacity = std::max<size_t>(buffers.size(), 4);
    try {
      table.gpa = ram_.alloc(kDescSize * capacity, 16);
    } catch (...) {
      free_next_[head] = free_head_;
      free_head_ = head;
      ++free_count_;
      throw;
    }
    table.capacity = capacity;
  }
  uint8_t* entries = ram_.host(table.gpa, kDescSize * buffers.size());
  const auto count = static_cast<uint16_t>(buffers.size());
  for (uint16_t i = 0; i < count; ++i) {
    const Buffer& b = buffers[i];
    const bool last = i + 1 == count;
    uint16_t flags = b.device_writable ? kDescFlagWrite : 0;
    if (!last) flags |= kDescFlagNext;
    encode_descriptor(entries + kDescSize * i, b.gpa, b.len, flags, last ? 0 : static_cast<uint16_t>(i + 1));
  }
  encode_descriptor(desc_ptr(head), table.gpa, static_cast<uint32_t>(kDescSize * count), kDescFlagIndirect, 0);
  Inflight& entry = inflight_[head];
  entry.active = true;
  entry.descriptor_count = 1;
  entry.buffers.assign(buffers.begin(), buffers.end());
  publish(head);
  return head;
}

uint16_t DriverVring::device_used_idx() const {
  return load_acquire(used_idx_ptr());
}

bool DriverVring::has_used() const {
  return device_used_idx() != last_used_idx_;
}

std::optional<DriverVring::UsedElement> DriverVring::pop_used_raw() {
  if (!has_used()) return std::nullopt;  // the acquire load orders the element read below
  const uint8_t* elem = used_elem_ptr(static_cast<uint16_t>(last_used_idx_ & (size_ - 1)));
  uint32_t id = 0;
  uint32_t len = 0;
  std::memcpy(&id, elem, 4);
  std::memcpy(&len, elem + 4, 4);
  ++last_used_idx_;
  if (event_idx_ && auto_used_event_ && (load_acquire(avail_flags_ptr()) & kAvailFlagNoInterrupt) == 0) {
    // Like Linux with callbacks enabled: interrupt us for the very next entry.
    store_release(used_event_ptr(), last_used_idx_);
    // Our next has_used() must not read used idx before the device can see
    // the new used_event, or an entry published in between is never signalled.
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
  }
  // Ids wider than 16 bits are a device bug; report the truncation as bad below.
  if (id >= size_) {
    ++bad_used_ids_;
    return UsedElement{static_cast<uint16_t>(0xFFFF), len};
  }
  return UsedElement{static_cast<uint16_t>(id), len};
}

std::optional<DriverVring::UsedElement> DriverVring::pop_used() {
  // Bounded: at most one full ring of bad entries is skipped per call.
  for (uint32_t attempts = 0; attempts <= size_; ++attempts) {
    const uint64_t bad_before = bad_used_ids_;
    auto elem = pop_used_raw();
    if (!elem) return std::nullopt;
    if (bad_used_ids_ != bad_before) continue;
    Inflight& entry = inflight_[elem->id];
    if (!entry.active) {
      ++bad_used_ids_;
      continue;
    }
    // Return the chain's descriptors to the front of the free list.
    uint16_t last = elem->id;
    for (uint16_t i = 1; i < entry.descriptor_count; ++i) last = free_next_[last];
    free_next_[last] = free_head_;
    free_head_ = elem->id;
    free_count_ = static_cast<uint16_t>(free_count_ + entry.descriptor_count);
    entry.active = false;
    entry.descriptor_count = 0;
    return elem;
  }
  return std::nullopt;
}

std::span<const DriverVring::Buffer> DriverVring::chain_buffers(uint16_t head) const {
  if (head >= size_ || !inflight_[head].active) return {};
  return inflight_[head].buffers;
}

void DriverVring::write_descriptor(uint16_t index, uint64_t addr, uint32_t len, uint16_t flags, uint16_t next) {
  if (index >= size_) throw std::out_of_range("DriverVring::write_descriptor: index >= size");
  encode_descriptor(desc_ptr(index), addr, len, flags, next);
}

void DriverVring::publish_head(uint16_t head) {
  publish(head);
}

void DriverVring::set_avail_idx(uint16_t idx) {
  avail_idx_ = idx;
  store_release(avail_idx_ptr(), idx);
}

void DriverVring::set_used_event(uint16_t idx) {
  store_release(used_event_ptr(), idx);
}

void DriverVring::set_no_interrupt(bool on) {
  const uint16_t flags = load_acquire(avail_flags_ptr());
  store_release(avail_flags_ptr(), on ? static_cast<uint16_t>(flags | kAvailFlagNoInterrupt)
                                      : static_cast<uint16_t>(flags & ~kAvailFlagNoInterrupt));
}

uint16_t DriverVring::avail_event() const {
  return load_acquire(avail_event_ptr());
}

bool DriverVring::device_wants_kick(uint16_t old_avail_idx) const {
  // The device reads avail idx, then writes its hint; we must read the hint
  // after our idx store (Linux uses a full barrier here).
  __atomic_thread_fence(__ATOMIC_SEQ_CST);
  if (event_idx_) return need_event(avail_event(), avail_idx_, old_avail_idx);
  return (load_acquire(used_flags_ptr()) & kUsedFlagNoNotify) == 0;
}

bool DriverVring::interrupt_expected(uint16_t old_used_idx, uint16_t new_used_idx) const {
  if (event_idx_) return need_event(load_acquire(used_event_ptr()), new_used_idx, old_used_idx);
  return (load_acquire(avail_flags_ptr()) & kAvailFlagNoInterrupt) == 0;
}

std::string DriverVring::describe() const {
  return "split avail_idx=" + std::to_string(avail_idx_) + " device_used_idx=" + std::to_string(device_used_idx()) +
         " last_used_idx=" + std::to_string(last_used_idx_) + " free_desc=" + std::to_string(free_count_) +
         (event_idx_ ? " avail_event=" + std::to_string(avail_event()) : std::string());
}

}  // namespace vhost_vsock::testing
