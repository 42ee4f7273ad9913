#include "testing/guest_ram.h"

#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>
#include <new>
#include <stdexcept>
#include <string>
#include <system_error>

namespace vhost_vsock::testing {

GuestRam::GuestRam(size_t size, uint64_t gpa_base) : size_(size), gpa_base_(gpa_base) {
  if (size == 0) throw std::invalid_argument("GuestRam: size must be > 0");
  if (gpa_base + size < gpa_base) throw std::invalid_argument("GuestRam: range wraps past 2^64");
  fd_.reset(::memfd_create("vuv-guest-ram", MFD_CLOEXEC));
  if (!fd_) throw std::system_error(errno, std::generic_category(), "memfd_create");
  if (::ftruncate(fd_.get(), static_cast<off_t>(size)) != 0) {
    throw std::system_error(errno, std::generic_category(), "ftruncate guest ram");
  }
  void* mapping = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd_.get(), 0);
  if (mapping == MAP_FAILED) throw std::system_error(errno, std::generic_category(), "mmap guest ram");
  data_ = static_cast<uint8_t*>(mapping);
}

GuestRam::~GuestRam() {
  if (data_ != nullptr) ::munmap(data_, size_);
}

uint64_t GuestRam::alloc(size_t len, size_t align) {
  if (align == 0 || (align & (align - 1)) != 0) throw std::invalid_argument("GuestRam::alloc: bad alignment");
  // Align the guest-physical address, not the offset, so a base that is not
  // itself aligned still yields aligned gpas.
  const uint64_t gpa = gpa_base_ + next_offset_;
  const uint64_t aligned = (gpa + align - 1) & ~static_cast<uint64_t>(align - 1);
  const uint64_t offset = aligned - gpa_base_;
  if (offset > size_ || len > size_ - offset) throw std::bad_alloc();
  next_offset_ = offset + len;
  return aligned;
}

bool GuestRam::contains(uint64_t gpa, size_t len) const {
  if (gpa < gpa_base_) return false;
  const uint64_t offset = gpa - gpa_base_;
  return offset <= size_ && len <= size_ - offset;
}

uint8_t* GuestRam::host(uint64_t gpa, size_t len) {
  if (!contains(gpa, len)) {
    throw std::out_of_range("GuestRam::host: gpa " + std::to_string(gpa) + "+" + std::to_string(len) +
                            " outside guest ram");
  }
  return data_ + (gpa - gpa_base_);
}

const uint8_t* GuestRam::host(uint64_t gpa, size_t len) const {
  return const_cast<GuestRam*>(this)->host(gpa, len);
}

uint64_t GuestRam::gpa_of(const void* host_ptr) const {
  const auto* p = static_cast<const uint8_t*>(host_ptr);
  if (p < data_ || p > data_ + size_) throw std::out_of_range("GuestRam::gpa_of: pointer outside guest ram");
  return gpa_base_ + static_cast<uint64_t>(p - data_);
}

}  // namespace vhost_vsock::testing
