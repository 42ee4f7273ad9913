// Payloads of the vhost-user requests a front-end sends, in host byte order
// as the protocol wants them: built by the simulator's front-end and, with
// wrong values on purpose, by the hostile front-end tests.
#pragma once

#include <cstdint>
#include <cstring>
#include <vector>

namespace vhost_vsock::testing {

// Appends the bytes of `value`.
template <typename T>
void put(std::vector<uint8_t>& out, T value) {
  const size_t at = out.size();
  out.resize(at + sizeof(T));
  std::memcpy(out.data() + at, &value, sizeof(T));
}

inline std::vector<uint8_t> encode_u64(uint64_t value) {
  std::vector<uint8_t> out;
  put(out, value);
  return out;
}

// struct vhost_vring_state: SET_VRING_NUM, SET_VRING_BASE, SET_VRING_ENABLE.
inline std::vector<uint8_t> encode_vring_state(uint32_t index, uint32_t num) {
  std::vector<uint8_t> out;
  put(out, index);
  put(out, num);
  return out;
}

// struct vhost_vring_addr for SET_VRING_ADDR, without logging (flags and log address 0).
inline std::vector<uint8_t> encode_vring_addr(uint32_t index, uint64_t desc, uint64_t used, uint64_t avail) {
  std::vector<uint8_t> out;
  put(out, index);
  put<uint32_t>(out, 0);
  put(out, desc);
  put(out, used);
  put(out, avail);
  put<uint64_t>(out, 0);
  return out;
}

struct MemoryRegion {
  uint64_t gpa, size, user_addr, mmap_offset;
};
static_assert(sizeof(MemoryRegion) == 32, "VhostUserMemoryRegion is 32 bytes");

// SET_MEM_TABLE: `count` is written as given, so a test can make it disagree with `regions`.
inline std::vector<uint8_t> encode_mem_table(uint32_t count, const std::vector<MemoryRegion>& regions) {
  std::vector<uint8_t> out;
  put(out, count);
  put<uint32_t>(out, 0);
  for (const MemoryRegion& r : regions) {
    put(out, r.gpa);
    put(out, r.size);
    put(out, r.user_addr);
    put(out, r.mmap_offset);
  }
  return out;
}

}  // namespace vhost_vsock::testing
