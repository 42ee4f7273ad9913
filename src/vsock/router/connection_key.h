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

struct ConnectionKeyHash {
  size_t operator()(const ConnectionKey& key) const {
    const uint64_t ports = (static_cast<uint64_t>(key.local_port) << 32) | key.peer_port;
    // splitmix64 finalizer over both words: guest-chosen ports must not
    // cluster in the table's buckets.
    uint64_t x = ports ^ (key.peer_cid * 0x9e3779b97f4a7c15ULL);
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
    return static_cast<size_t>(x ^ (x >> 31));
  }
};

}  // namespace vhost_vsock::vsock
