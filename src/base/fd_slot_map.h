// EventLoop's fd -> handler slot lookup: an open-addressing hash table sized
// to one loop's own live registrations, not to the highest fd of the process
// (with 64 VMs each loop would otherwise hold a table as long as every VM's
// fds together). Linear probing with backward-shift deletion (no tombstones,
// so churn never degrades lookups); it allocates only when it grows past its
// high-water mark.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace vhost_vsock::base {

class FdSlotMap {
 public:
  static constexpr uint32_t kNoSlot = UINT32_MAX;

  // The slot registered for `fd`, or kNoSlot.
  [[nodiscard]] uint32_t find(int fd) const {
    if (size_ == 0 || fd < 0) return kNoSlot;
    for (size_t i = home(fd);; i = next(i)) {
      if (entries_[i].fd == fd) return entries_[i].slot;
      if (entries_[i].fd < 0) return kNoSlot;
    }
  }

  // Precondition: fd >= 0 and not present.
  void insert(int fd, uint32_t slot) {
    if (2 * (size_ + 1) > entries_.size()) grow();
    place(fd, slot);
    ++size_;
  }

  // Removes `fd` and returns its slot, or kNoSlot if it was not present.
  uint32_t erase(int fd) {
    if (size_ == 0 || fd < 0) return kNoSlot;
    size_t hole = home(fd);
    while (entries_[hole].fd != fd) {
      if (entries_[hole].fd < 0) return kNoSlot;
      hole = next(hole);
    }
    const uint32_t slot = entries_[hole].slot;
    // Backward shift: pull later entries of the probe run into the hole when
    // their home is not between the hole and where they sit.
    for (size_t i = next(hole); entries_[i].fd >= 0; i = next(i)) {
      const size_t home_distance = (i - home(entries_[i].fd)) & mask();
      const size_t hole_distance = (i - hole) & mask();
      if (home_distance >= hole_distance) {
        entries_[hole] = entries_[i];
        hole = i;
      }
    }
    entries_[hole].fd = -1;
    --size_;
    return slot;
  }

  [[nodiscard]] size_t size() const { return size_; }
  [[nodiscard]] size_t capacity() const { return entries_.size(); }

 private:
  struct Entry {
    int fd = -1;  // -1: empty
    uint32_t slot = 0;
  };
  static constexpr size_t kMinCapacity = 16;

  [[nodiscard]] size_t mask() const { return entries_.size() - 1; }
  [[nodiscard]] size_t next(size_t i) const { return (i + 1) & mask(); }
  // Fibonacci hashing: neighbouring fd numbers land far apart.
  [[nodiscard]] size_t home(int fd) const {
    return static_cast<size_t>((static_cast<uint32_t>(fd) * 0x9E3779B9U) >> shift_);
  }

  void place(int fd, uint32_t slot) {
    size_t i = home(fd);
    while (entries_[i].fd >= 0) i = next(i);
    entries_[i] = Entry{fd, slot};
  }

  void grow() {
    std::vector<Entry> old;
    old.swap(entries_);
    const size_t capacity = old.empty() ? kMinCapacity : 2 * old.size();
    entries_.resize(capacity);
    shift_ = 32;
    for (size_t c = capacity; c > 1; c >>= 1) --shift_;
    for (const Entry& entry : old) {
      if (entry.fd >= 0) place(entry.fd, entry.slot);
    }
  }

  std::vector<Entry> entries_;  // capacity a power of two, at most half full
  size_t size_ = 0;
  unsigned shift_ = 32;  // 32 - log2(capacity)
};

}  // namespace vhost_vsock::base
