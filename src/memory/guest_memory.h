// The guest's memory as the front-end described it in SET_MEM_TABLE: a set of
// mmap'ed regions, and bounds-checked translation of guest ranges to host memory.
// Immutable once built; a new table replaces the whole object (shared_ptr), so
// a queue that still holds the old map keeps it mapped until it lets go.
#pragma once

#include <sys/uio.h>

#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "base/iovec_list.h"
#include "base/unique_fd.h"

namespace vhost_vsock::memory {

// One region as the vhost-user message carries it, plus its fd.
struct RegionSpec {
  uint64_t guest_phys_addr = 0;
  uint64_t size = 0;
  uint64_t user_addr = 0;    // front-end's virtual address of the region
  uint64_t mmap_offset = 0;  // offset into fd where the region starts
  base::UniqueFd fd;
};

class GuestMemory {
 public:
  static constexpr size_t kMaxRegions = 32;  // more than any front-end sends (VHOST_MEMORY_BASELINE_NREGIONS is 8)

  // Maps every region (MAP_SHARED, PROT_READ|PROT_WRITE) and closes the fds.
  // Returns nullptr and sets `error` on: too many regions, zero size, ranges
  // that wrap past 2^64, overlapping guest-physical or user ranges, mmap failure.
  static std::shared_ptr<const GuestMemory> map(std::vector<RegionSpec> regions, std::string* error);
  // For tests and the simulator: wraps memory this process already has mapped
  // (not unmapped on destruction). Its user address is the host pointer, as if
  // this process were the front-end. nullptr if empty or the range wraps.
  static std::shared_ptr<const GuestMemory> wrap_existing(uint64_t guest_phys_addr, std::span<uint8_t> host);

  ~GuestMemory();
  GuestMemory(const GuestMemory&) = delete;
  GuestMemory& operator=(const GuestMemory&) = delete;

  // Host pointer for [gpa, gpa+len) when the whole range lies in one region;
  // nullptr otherwise (including len == 0 at an unmapped address, and wrap-around).
  [[nodiscard]] uint8_t* translate(uint64_t gpa, uint64_t len) const;
  // Appends iovecs covering [gpa, gpa+len), which may span adjacent regions.
  // Returns false (appending nothing) if any byte is unmapped, on wrap-around,
  // or if it would need more than `max_iovecs` entries. An empty range appends
  // nothing and succeeds. A range may not end exactly at 2^64 (treated as wrap).
  bool translate_to_iovecs(uint64_t gpa, uint64_t len, base::IovecList& out, size_t max_iovecs = 8) const;
  // Converts a front-end virtual address range (as in SET_VRING_ADDR) to a
  // guest physical address; nullopt if not inside one region.
  [[nodiscard]] std::optional<uint64_t> user_to_guest(uint64_t user_addr, uint64_t len) const;

  [[nodiscard]] size_t region_count() const { return regions_.size(); }

 private:
  struct Region {
    uint64_t guest_phys_addr;
    uint64_t size;
    uint64_t user_addr;
    uint8_t* host;          // start of the region in our address space
    void* mapping;          // what mmap returned (nullptr when wrapped)
    size_t mapping_length;  // size + mmap_offset
  };
  GuestMemory() = default;
  [[nodiscard]] const Region* find_region(uint64_t gpa) const;

  std::vector<Region> regions_;  // sorted by guest_phys_addr
};

}  // namespace vhost_vsock::memory
