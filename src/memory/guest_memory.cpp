#include "memory/guest_memory.h"

#include <spdlog/spdlog.h>
#include <sys/mman.h>

#include <algorithm>
#include <cerrno>
#include <system_error>

#include "base/errno_text.h"

namespace vhost_vsock::memory {
namespace {

// End of [start, start+len) as an exclusive bound, or nullopt when it does not
// fit in 64 bits. A range ending exactly at 2^64 is rejected too: no front-end
// maps memory there, and refusing it keeps every end address representable.
std::optional<uint64_t> range_end(uint64_t start, uint64_t len) {
  uint64_t end = 0;
  if (__builtin_add_overflow(start, len, &end)) return std::nullopt;
  return end;
}

bool ranges_overlap(uint64_t a_start, uint64_t a_size, uint64_t b_start, uint64_t b_size) {
  // Both ranges were checked not to wrap, so the ends are exact.
  return a_start < b_start + b_size && b_start < a_start + a_size;
}

// Why the table cannot be mapped; empty when it can.
std::string check_regions(const std::vector<RegionSpec>& regions) {
  if (regions.size() > GuestMemory::kMaxRegions) {
    return "memory table has " + std::to_string(regions.size()) + " regions, at most " +
           std::to_string(GuestMemory::kMaxRegions) + " are supported";
  }
  for (size_t i = 0; i < regions.size(); ++i) {
    const RegionSpec& r = regions[i];
    const std::string which = "memory region " + std::to_string(i);
    if (r.size == 0) return which + " has size 0";
    if (!r.fd.valid()) return which + " has no file descriptor";
    if (!range_end(r.guest_phys_addr, r.size)) return which + ": guest physical range wraps past 2^64";
    if (!range_end(r.user_addr, r.size)) return which + ": user address range wraps past 2^64";
    const auto mapping_length = range_end(r.mmap_offset, r.size);
    if (!mapping_length || *mapping_length > static_cast<uint64_t>(SIZE_MAX)) {
      return which + ": mmap offset + size overflows";
    }
    for (size_t j = 0; j < i; ++j) {
      const RegionSpec& other = regions[j];
      if (ranges_overlap(r.guest_phys_addr, r.size, other.guest_phys_addr, other.size)) {
        return which + " overlaps region " + std::to_string(j) + " in guest physical addresses";
      }
      if (ranges_overlap(r.user_addr, r.size, other.user_addr, other.size)) {
        return which + " overlaps region " + std::to_string(j) + " in user addresses";
      }
    }
  }
  return {};
}

}  // namespace

std::shared_ptr<const GuestMemory> GuestMemory::map(std::vector<RegionSpec> regions, std::string* error) {
  auto fail = [error](std::string message) -> std::shared_ptr<const GuestMemory> {
    if (error) *error = std::move(message);
    return nullptr;
  };
  if (std::string why = check_regions(regions); !why.empty()) return fail(std::move(why));

  std::shared_ptr<GuestMemory> memory(new GuestMemory());
  memory->regions_.reserve(regions.size());
  for (size_t i = 0; i < regions.size(); ++i) {
    const RegionSpec& r = regions[i];
    const size_t length = static_cast<size_t>(r.size + r.mmap_offset);
    // The offset goes into the length rather than mmap's offset argument,
    // because front-ends may pass offsets that are not page aligned.
    void* mapping = ::mmap(nullptr, length, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_NORESERVE, r.fd.get(), 0);
    if (mapping == MAP_FAILED) {
      const int saved_errno = errno;
      // Regions mapped so far are released by the destructor.
      return fail("mmap of memory region " + std::to_string(i) + " (" + std::to_string(length) +
                  " bytes) failed: " + base::errno_text(saved_errno));
    }
    memory->regions_.push_back(Region{
        .guest_phys_addr = r.guest_phys_addr,
        .size = r.size,
        .user_addr = r.user_addr,
        .host = static_cast<uint8_t*>(mapping) + r.mmap_offset,
        .mapping = mapping,
        .mapping_length = length,
    });
    spdlog::debug("mapped guest memory region {}: gpa {:#x} size {:#x} user {:#x} mmap offset {:#x}", i,
                  r.guest_phys_addr, r.size, r.user_addr, r.mmap_offset);
  }
  std::sort(memory->regions_.begin(), memory->regions_.end(),
            [](const Region& a, const Region& b) { return a.guest_phys_addr < b.guest_phys_addr; });
  regions.clear();  // closes the fds: the mappings keep the memory alive
  return memory;
}

std::shared_ptr<const GuestMemory> GuestMemory::wrap_existing(uint64_t guest_phys_addr, std::span<uint8_t> host) {
  if (host.empty() || !range_end(guest_phys_addr, host.size())) return nullptr;
  std::shared_ptr<GuestMemory> memory(new GuestMemory());
  // The front-end here is this process, so its user address is our pointer.
  memory->regions_.push_back(Region{
      .guest_phys_addr = guest_phys_addr,
      .size = host.size(),
      .user_addr = reinterpret_cast<uint64_t>(host.data()),
      .host = host.data(),
      .mapping = nullptr,
      .mapping_length = 0,
  });
  return memory;
}

GuestMemory::~GuestMemory() {
  for (const Region& region : regions_) {
    if (region.mapping != nullptr) ::munmap(region.mapping, region.mapping_length);
  }
}

const GuestMemory::Region* GuestMemory::find_region(uint64_t gpa) const {
  // First region starting above gpa; the one before it is the only candidate.
  auto it = std::upper_bound(regions_.begin(), regions_.end(), gpa,
                             [](uint64_t value, const Region& r) { return value < r.guest_phys_addr; });
  if (it == regions_.begin()) return nullptr;
  const Region& candidate = *(it - 1);
  if (gpa - candidate.guest_phys_addr >= candidate.size) return nullptr;
  return &candidate;
}

uint8_t* GuestMemory::translate(uint64_t gpa, uint64_t len) const {
  const Region* region = find_region(gpa);
  if (region == nullptr) return nullptr;
  const uint64_t offset = gpa - region->guest_phys_addr;
  if (len > region->size - offset) return nullptr;  // also catches gpa + len wrapping
  return region->host + offset;
}

bool GuestMemory::translate_to_iovecs(uint64_t gpa, uint64_t len, base::IovecList& out, size_t max_iovecs) const {
  if (!range_end(gpa, len)) return false;
  if (len == 0) return true;
  // The common case, one region holds it all: a single lookup.
  if (uint8_t* host = translate(gpa, len); host != nullptr) {
    if (max_iovecs == 0) return false;
    out.push_back(host, static_cast<size_t>(len));
    return true;
  }
  // Across regions. The first pass validates and counts, so a failure leaves
  // `out` untouched.
  size_t pieces = 0;
  uint64_t cursor = gpa;
  uint64_t remaining = len;
  while (remaining > 0) {
    const Region* region = find_region(cursor);
    if (region == nullptr || ++pieces > max_iovecs) return false;
    const uint64_t available = region->size - (cursor - region->guest_phys_addr);
    const uint64_t chunk = std::min(remaining, available);
    cursor += chunk;
    remaining -= chunk;
  }
  cursor = gpa;
  remaining = len;
  while (remaining > 0) {
    const Region* region = find_region(cursor);
    const uint64_t offset = cursor - region->guest_phys_addr;
    const uint64_t chunk = std::min(remaining, region->size - offset);
    out.push_back(region->host + offset, static_cast<size_t>(chunk));
    cursor += chunk;
    remaining -= chunk;
  }
  return true;
}

std::optional<uint64_t> GuestMemory::user_to_guest(uint64_t user_addr, uint64_t len) const {
  for (const Region& region : regions_) {
    if (user_addr < region.user_addr) continue;
    const uint64_t offset = user_addr - region.user_addr;
    if (offset >= region.size) continue;
    if (len > region.size - offset) return std::nullopt;  // straddles the region's end (or wraps)
    return region.guest_phys_addr + offset;
  }
  return std::nullopt;
}

}  // namespace vhost_vsock::memory
