// What identifies a stream: the guest (peer) CID and both ports. The CID is
// part of the key so a router shared by sibling VMs can use one table.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>

namespace vhost_vsock::vsock {

struct ConnectionKey {
  uint64_t peer_cid = 0;
  uint32_t local_port = 0;  // host side
  uint32_t peer_port = 0;   // guest side
  bool operator==(const ConnectionKey&) const = default;
};

// Keyed: the guest chooses its ports, so every table draws its own random
// seed (ConnectionTable) and a guest that cannot know it cannot aim its ports
// at one bucket. One multiply-xorshift, a bijection of the ports for a given
// seed and CID: lookups are on the per-packet path.
struct ConnectionKeyHash {
  uint64_t seed = 0;
  size_t operator()(const ConnectionKey& key) const noexcept {
    const uint64_t ports = (static_cast<uint64_t>(key.local_port) << 32) | key.peer_port;
    const uint64_t x = (ports ^ seed ^ (key.peer_cid * 0x9e3779b97f4a7c15ULL)) * 0xbf58476d1ce4e5b9ULL;
    return static_cast<size_t>(x ^ (x >> 32));
  }
};

}  // namespace vhost_vsock::vsock
