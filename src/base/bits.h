// Bit tests shared by the layers (queue sizes, ring masks).
#pragma once

#include <bit>
#include <concepts>

namespace vhost_vsock::base {

// Zero is not a power of two: a queue of size 0 is invalid, not a mask of all ones.
template <std::unsigned_integral T>
constexpr bool is_power_of_two(T value) {
  return std::has_single_bit(value);
}

}  // namespace vhost_vsock::base
