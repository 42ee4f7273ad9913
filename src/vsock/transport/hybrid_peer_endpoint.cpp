#include "vsock/transport/hybrid_peer_endpoint.h"

#include <fmt/format.h>

#include <algorithm>

namespace vhost_vsock::vsock {

size_t HybridPeerEndpoint::accept_greeting(uint32_t local_port, std::span<uint8_t, kMaxGreetingBytes> out) const {
  return hybrid_ok_greeting(local_port, out);
}

size_t hybrid_ok_greeting(uint32_t local_port, std::span<uint8_t, kMaxGreetingBytes> out) {
  // "OK " + at most 10 digits + "\n" always fits.
  static_assert(kMaxGreetingBytes >= 14);
  const auto result = fmt::format_to_n(reinterpret_cast<char*>(out.data()), out.size(), "OK {}\n", local_port);
  return std::min(result.size, out.size());
}

}  // namespace vhost_vsock::vsock
