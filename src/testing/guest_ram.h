// Guest "physical" memory for tests: one memfd-backed buffer at guest-physical
// base `gpa_base`, with a bump allocator (memory is never freed, so anything
// handed out stays valid and zero-initialised until the GuestRam dies).
// fd() can be sent to a vhost-user backend in SET_MEM_TABLE.
#pragma once

#include <cstddef>
#include <cstdint>

#include "base/unique_fd.h"

namespace vhost_vsock::testing {

class GuestRam {
 public:
  // Throws std::system_error if the memfd cannot be created or mapped.
  explicit GuestRam(size_t size, uint64_t gpa_base = 0x100000);
  ~GuestRam();
  GuestRam(const GuestRam&) = delete;
  GuestRam& operator=(const GuestRam&) = delete;

  // Returns the gpa of `len` fresh bytes aligned to `align` (a power of two);
  // throws std::bad_alloc when full.
  uint64_t alloc(size_t len, size_t align = 16);
  // Host pointer for [gpa, gpa+len); throws std::out_of_range if any byte lies
  // outside the RAM (a test bug, never a device input).
  uint8_t* host(uint64_t gpa, size_t len = 1);
  const uint8_t* host(uint64_t gpa, size_t len = 1) const;
  [[nodiscard]] bool contains(uint64_t gpa, size_t len) const;
  // Inverse of host(): the gpa of a host pointer inside the RAM.
  [[nodiscard]] uint64_t gpa_of(const void* host_ptr) const;

  [[nodiscard]] int fd() const { return fd_.get(); }
  [[nodiscard]] uint64_t gpa_base() const { return gpa_base_; }
  [[nodiscard]] size_t size() const { return size_; }
  [[nodiscard]] uint8_t* data() { return data_; }
  [[nodiscard]] const uint8_t* data() const { return data_; }
  [[nodiscard]] size_t bytes_allocated() const { return next_offset_; }

 private:
  base::UniqueFd fd_;
  uint8_t* data_ = nullptr;
  size_t size_ = 0;
  uint64_t gpa_base_ = 0;
  size_t next_offset_ = 0;
};

}  // namespace vhost_vsock::testing
