// Local (host-side) ports for host-initiated connections, handed out
// round-robin from [2^30, 2^31) as Firecracker and Cloud Hypervisor do, so a
// port pair is not reused soon after it closed.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>

namespace vhost_vsock::vsock {

class LocalPortAllocator {
 public:
  static constexpr uint32_t kFirst = 1U << 30;
  static constexpr uint32_t kEnd = 1U << 31;  // exclusive

  explicit LocalPortAllocator(uint32_t next = kFirst) : next_(next >= kFirst && next < kEnd ? next : kFirst) {}

  // The next port for which `in_use` is false, looking at most `max_attempts`
  // candidates (pass more than the number of live connections to be sure to
  // find one).
  std::optional<uint32_t> allocate(const std::function<bool(uint32_t)>& in_use, uint64_t max_attempts) {
    for (uint64_t attempt = 0; attempt < max_attempts; ++attempt) {
      const uint32_t candidate = next_;
      next_ = candidate + 1 == kEnd ? kFirst : candidate + 1;
      if (!in_use(candidate)) return candidate;
    }
    return std::nullopt;
  }

  [[nodiscard]] uint32_t peek_next() const { return next_; }

 private:
  uint32_t next_;
};

}  // namespace vhost_vsock::vsock
