#include "virtio/split_queue.h"

#include <endian.h>
#include <spdlog/spdlog.h>

#include <atomic>
#include <bit>
#include <cstring>

#include "base/bits.h"
#include "virtio/features.h"

namespace vhost_vsock::virtio {
namespace {

// Split ring layout (virtio 1.2 §2.7): byte offsets within each area.
constexpr size_t kDescSize = 16;
constexpr size_t kAvailIdxOffset = 2;
constexpr size_t kAvailRingOffset = 4;
constexpr size_t kUsedIdxOffset = 2;
constexpr size_t kUsedRingOffset = 4;
constexpr size_t kUsedElemSize = 8;

constexpr uint16_t kDescFlagNext = 1;
constexpr uint16_t kDescFlagWrite = 2;
constexpr uint16_t kDescFlagIndirect = 4;
constexpr uint16_t kUsedFlagNoNotify = 1;
constexpr uint16_t kAvailFlagNoInterrupt = 1;

// Generous for any real driver (Linux caps a chain at the queue size, and
// vsock uses two descriptors), small enough to bound the work per chain.
constexpr size_t kMaxChainIovecs = 1024;

size_t avail_ring_bytes(uint16_t size) {
  return kAvailRingOffset + 2 * size_t{size} + 2;
}
size_t used_ring_bytes(uint16_t size) {
  return kUsedRingOffset + kUsedElemSize * size_t{size} + 2;
}

// Shared 16-bit ring fields are accessed atomically: the driver writes them
// concurrently, and the compiler must not re-read or tear them.
uint16_t load_le16(const uint8_t* p, int order) {
  return le16toh(__atomic_load_n(reinterpret_cast<const uint16_t*>(p), order));
}
void store_le16(uint8_t* p, uint16_t value, int order) {
  __atomic_store_n(reinterpret_cast<uint16_t*>(p), htole16(value), order);
}

struct Descriptor {
  uint64_t addr;
  uint32_t len;
  uint16_t flags;
  uint16_t next;
};
static_assert(sizeof(Descriptor) == kDescSize);

// One copy out of guest memory; everything after works on the copy.
Descriptor read_descriptor(const uint8_t* table, uint32_t index) {
  Descriptor d;
  std::memcpy(&d, table + size_t{index} * kDescSize, kDescSize);
  d.addr = le64toh(d.addr);
  d.len = le32toh(d.len);
  d.flags = le16toh(d.flags);
  d.next = le16toh(d.next);
  return d;
}

// virtio 1.2 §2.7.10: has the used index passed the driver's event index
// in the window (old_idx, new_idx]?
bool vring_need_event(uint16_t event_idx, uint16_t new_idx, uint16_t old_idx) {
  return static_cast<uint16_t>(new_idx - event_idx - 1) < static_cast<uint16_t>(new_idx - old_idx);
}

bool host_aligned(const uint8_t* p, size_t alignment) {
  return reinterpret_cast<uintptr_t>(p) % alignment == 0;
}

}  // namespace

bool SplitQueue::configure(std::shared_ptr<const memory::GuestMemory> memory, uint16_t size, uint64_t desc_gpa,
                           uint64_t avail_gpa, uint64_t used_gpa, std::string* error) {
  auto fail = [&](const std::string& message) {
    if (error) *error = log_name_ + ": " + message;
    return false;
  };
  if (!memory) return fail("no guest memory table");
  if (size > kMaxQueueSize || !base::is_power_of_two(size)) {
    return fail("queue size " + std::to_string(size) + " is not a power of two in 1..32768");
  }
  if (desc_gpa % 16 != 0) return fail("descriptor table address is not 16-byte aligned");
  if (avail_gpa % 2 != 0) return fail("avail ring address is not 2-byte aligned");
  if (used_gpa % 4 != 0) return fail("used ring address is not 4-byte aligned");

  // Rings must be contiguous in host memory, so each lies inside one region.
  uint8_t* desc = memory->translate(desc_gpa, kDescSize * size);
  if (desc == nullptr) return fail("descriptor table is not inside guest memory");
  uint8_t* avail = memory->translate(avail_gpa, avail_ring_bytes(size));
  if (avail == nullptr) return fail("avail ring is not inside guest memory");
  uint8_t* used = memory->translate(used_gpa, used_ring_bytes(size));
  if (used == nullptr) return fail("used ring is not inside guest memory");
  // Atomic ring accesses need natural alignment in our address space too,
  // which an odd mmap offset could break.
  if (!host_aligned(avail, 2) || !host_aligned(used, 4)) return fail("rings are misaligned in host memory");

  // Entries added under the old map must not be lost.
  if (configured() && !broken_) flush_used();

  memory_ = std::move(memory);
  size_ = size;
  desc_gpa_ = desc_gpa;
  desc_ = desc;
  avail_ = avail;
  used_ = used;
  // The driver has seen exactly used->idx entries; continue from there.
  next_used_ = published_used_ = read_used_idx_from_ring();
  notify_tracker_.restart(published_used_);
  returnable_ = 0;
  write_used_flags(used_flags_);
  if (event_idx_) store_le16(used_ + kUsedRingOffset + kUsedElemSize * size_, next_avail_, __ATOMIC_RELAXED);
  return true;
}

void SplitQueue::set_features(uint64_t features) {
  event_idx_ = (features & kFeatureEventIdx) != 0;
  notify_on_empty_ = (features & kFeatureNotifyOnEmpty) != 0;
  indirect_ = (features & kFeatureIndirectDesc) != 0;
}

void SplitQueue::reset() {
  memory_.reset();
  size_ = 0;
  desc_gpa_ = 0;
  desc_ = avail_ = used_ = nullptr;
  broken_ = false;
  next_avail_ = next_used_ = published_used_ = 0;
  notify_tracker_.restart(0);
  used_flags_ = 0;
  returnable_ = 0;
  stats_ = QueueStats{};
}

void SplitQueue::set_next_avail(uint16_t index) {
  next_avail_ = index;
  broken_ = false;
  returnable_ = 0;
  next_used_ = published_used_ = configured() ? read_used_idx_from_ring() : index;
  notify_tracker_.restart(published_used_);
}

uint16_t SplitQueue::read_avail_idx() const {
  return load_le16(avail_ + kAvailIdxOffset, __ATOMIC_ACQUIRE);
}

uint16_t SplitQueue::read_used_idx_from_ring() const {
  return load_le16(used_ + kUsedIdxOffset, __ATOMIC_RELAXED);
}

void SplitQueue::write_used_flags(uint16_t flags) {
  used_flags_ = flags;
  store_le16(used_, flags, __ATOMIC_RELAXED);
}

void SplitQueue::mark_broken(const char* why) {
  if (broken_) return;
  broken_ = true;
  spdlog::error("{}: {}; the queue is stopped until the driver resets it", log_name_, why);
}

PopStatus SplitQueue::pop(DescriptorChain& out) {
  if (broken_) return PopStatus::kBroken;
  if (!configured()) return PopStatus::kEmpty;

  const uint16_t avail_idx = read_avail_idx();
  const uint16_t pending = static_cast<uint16_t>(avail_idx - next_avail_);
  if (pending == 0) return PopStatus::kEmpty;
  if (pending > size_) {
    mark_broken("avail index moved further than the queue size");
    return PopStatus::kBroken;
  }

  // Ordered after the acquire load of avail->idx.
  const uint16_t slot = next_avail_ & (size_ - 1);
  const uint16_t head = load_le16(avail_ + kAvailRingOffset + 2 * size_t{slot}, __ATOMIC_RELAXED);
  if (head >= size_) {
    // Not a descriptor we could hand back through the used ring.
    mark_broken("avail ring names a head descriptor outside the table");
    return PopStatus::kBroken;
  }
  ++next_avail_;

  begin_chain(out, head);
  if (const char* why = walk_chain(head, out)) {
    clear_chain(out);
    ++stats_.invalid_chains;
    returnable_ = 0;
    // Rate-limited (1st, 2nd, 4th, 8th, ...): a hostile guest can repeat this at will.
    if (std::has_single_bit(stats_.invalid_chains)) {
      spdlog::warn("{}: invalid descriptor chain at head {}: {} ({} so far)", log_name_, head, why,
                   stats_.invalid_chains);
    }
    // Give the buffer back so the driver does not wait on it forever.
    add_used(head, 0);
    flush_used();
    return PopStatus::kInvalidChain;
  }
  ++stats_.chains_popped;
  if (returnable_ < size_) ++returnable_;
  return PopStatus::kChain;
}

const char* SplitQueue::walk_chain(uint16_t head, DescriptorChain& out) {
  const uint8_t* table = desc_;
  uint32_t table_entries = size_;
  uint32_t index = head;
  uint32_t visited = 0;
  bool in_indirect = false;
  bool seen_writable = false;
  size_t iovecs_left = kMaxChainIovecs;

  for (;;) {
    // Each table is walked at most once per entry, which also ends loops.
    if (++visited > table_entries) return "chain is longer than its descriptor table (loop?)";
    ++stats_.descriptors_walked;
    const Descriptor d = read_descriptor(table, index);

    if (d.flags & kDescFlagIndirect) {
      if (!indirect_) return "indirect descriptor without VIRTIO_F_INDIRECT_DESC";
      if (in_indirect) return "nested indirect descriptor";
      if (d.flags & kDescFlagNext) return "indirect descriptor with NEXT set";
      if (d.len == 0 || d.len % kDescSize != 0) return "indirect table length is not a multiple of 16";
      if (d.len / kDescSize > size_) return "indirect table has more entries than the queue size";
      const uint8_t* indirect_table = memory_->translate(d.addr, d.len);
      if (indirect_table == nullptr) return "indirect table is outside guest memory";
      table = indirect_table;
      table_entries = d.len / kDescSize;
      in_indirect = true;
      index = 0;
      visited = 0;
      continue;
    }

    const bool writable = (d.flags & kDescFlagWrite) != 0;
    if (writable) {
      seen_writable = true;
    } else if (seen_writable) {
      return "device-readable descriptor after a device-writable one";
    }

    if (d.len > 0) {  // zero-length descriptors contribute nothing
      base::IovecList& list = chain_buffers(out, writable);
      const size_t before = list.size();
      if (!memory_->translate_to_iovecs(d.addr, d.len, list, iovecs_left)) {
        return "buffer is outside guest memory, wraps, or needs too many iovecs";
      }
      iovecs_left -= list.size() - before;
      add_chain_bytes(out, writable, d.len);
    }

    if (!(d.flags & kDescFlagNext)) return nullptr;
    if (d.next >= table_entries) return "next descriptor index is outside the table";
    index = d.next;
  }
}

void SplitQueue::unpop(uint16_t count) {
  if (count > returnable_) {
    spdlog::error("{}: unpop({}) but only {} chains can be given back", log_name_, count, returnable_);
    count = returnable_;
  }
  next_avail_ = static_cast<uint16_t>(next_avail_ - count);
  returnable_ = static_cast<uint16_t>(returnable_ - count);
}

bool SplitQueue::has_available() const {
  if (!configured() || broken_) return false;
  return read_avail_idx() != next_avail_;
}

void SplitQueue::add_used(uint16_t id, uint32_t written_length) {
  if (!configured() || broken_) return;
  // On a split ring the id is the head descriptor's index.
  if (id >= size_) {
    spdlog::error("{}: add_used with head {} outside queue of size {}", log_name_, id, size_);
    return;
  }
  const uint16_t slot = next_used_ & (size_ - 1);
  uint8_t* entry = used_ + kUsedRingOffset + kUsedElemSize * slot;
  const uint32_t id_le = htole32(id);
  const uint32_t len_le = htole32(written_length);
  std::memcpy(entry, &id_le, sizeof(id_le));
  std::memcpy(entry + sizeof(id_le), &len_le, sizeof(len_le));
  ++next_used_;
}

void SplitQueue::flush_used() {
  if (!configured() || broken_ || published_used_ == next_used_) return;
  // Release: the entries written above become visible before the index.
  store_le16(used_ + kUsedIdxOffset, next_used_, __ATOMIC_RELEASE);
  published_used_ = next_used_;
}

bool SplitQueue::should_notify() {
  if (!configured() || broken_) return false;
  const auto window = notify_tracker_.begin(published_used_);
  if (!window) return false;  // nothing published since the last decision

  bool notify;
  if (!event_idx_) {
    notify = (load_le16(avail_, __ATOMIC_RELAXED) & kAvailFlagNoInterrupt) == 0;
  } else if (!window->old_valid) {
    notify = true;  // no earlier decision to measure the driver's event index against
  } else {
    const uint16_t used_event = load_le16(avail_ + kAvailRingOffset + 2 * size_t{size_}, __ATOMIC_RELAXED);
    notify = vring_need_event(used_event, static_cast<uint16_t>(window->new_position),
                              static_cast<uint16_t>(window->old_position));
  }
  // NOTIFY_ON_EMPTY: running out of buffers overrides any suppression.
  if (!notify && notify_on_empty_ && read_avail_idx() == next_avail_) notify = true;
  return count_decision(notify, call_fd_.valid(), stats_);
}

void SplitQueue::notify() {
  flush_used();
  if (should_notify()) write_call_fd(call_fd_.get(), stats_, log_name_);
}

void SplitQueue::disable_notifications() {
  if (!configured() || broken_) return;
  // With EVENT_IDX the driver kicks only when it passes avail_event, which
  // we leave where it is while draining.
  if (!event_idx_) write_used_flags(used_flags_ | kUsedFlagNoNotify);
}

void SplitQueue::suppress_notifications() {
  if (!configured() || broken_) return;
  if (event_idx_) {
    // The driver kicks when its avail idx moves past avail_event (virtio 1.2
    // §2.7.10). One behind what we consumed is behind anything it can
    // publish, so it never passes it within 2^16 buffers.
    store_le16(used_ + kUsedRingOffset + kUsedElemSize * size_t{size_}, static_cast<uint16_t>(next_avail_ - 1),
               __ATOMIC_RELAXED);
  } else {
    write_used_flags(used_flags_ | kUsedFlagNoNotify);
  }
}

void SplitQueue::enable_notifications() {
  if (!configured() || broken_) return;
  if (event_idx_) {
    store_le16(used_ + kUsedRingOffset + kUsedElemSize * size_t{size_}, next_avail_, __ATOMIC_RELAXED);
  } else {
    write_used_flags(used_flags_ & ~kUsedFlagNoNotify);
  }
  // The store must be visible before the caller re-checks the avail index.
  std::atomic_thread_fence(std::memory_order_seq_cst);
}

}  // namespace vhost_vsock::virtio
