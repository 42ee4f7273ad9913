// The connections between this guest and its sibling VMs, as this router
// sees them from the packets passing through. The two guests are the
// endpoints (their kernels keep state and credit), so an entry holds only
// what the daemon needs: the connection cap, the metrics listing, and the
// RSTs owed to this guest when the sibling goes away.
#pragma once

#include <chrono>
#include <cstdint>
#include <random>
#include <unordered_map>

#include "base/event_loop.h"
#include "vsock/packet/header.h"
#include "vsock/router/connection_key.h"

namespace vhost_vsock::vsock {

struct SiblingConnection {
  SocketType type = SocketType::kStream;
  bool from_our_guest = false;  // our guest sent the REQUEST
  bool established = false;     // a RESPONSE went through
  std::chrono::steady_clock::time_point created;
  uint32_t bytes_from_guest = 0;  // modulo 2^32, as the virtio counters
  uint32_t bytes_to_guest = 0;
  base::EventLoop::TimerId timer = 0;  // the request timeout while not established
  uint64_t id = 0;
};

// Keyed by {sibling CID, our guest's port, the sibling's port} (ConnectionKey's
// peer_cid, local_port, peer_port).
class SiblingTable {
 public:
  SiblingTable() : entries_(0, ConnectionKeyHash{std::random_device{}()}) {}

  [[nodiscard]] SiblingConnection* find(const ConnectionKey& key) {
    auto it = entries_.find(key);
    return it == entries_.end() ? nullptr : &it->second;
  }
  SiblingConnection& insert(const ConnectionKey& key, SiblingConnection entry) {
    entry.id = next_id_++;
    return entries_.insert_or_assign(key, entry).first->second;
  }
  void erase(const ConnectionKey& key) { entries_.erase(key); }
  void clear() { entries_.clear(); }
  [[nodiscard]] size_t size() const { return entries_.size(); }

  template <typename Fn>
  void for_each(Fn&& fn) const {
    for (const auto& [key, entry] : entries_) fn(key, entry);
  }
  // Erases the entries `pred` picks, after handing each to `fn`.
  template <typename Pred, typename Fn>
  size_t erase_if(Pred&& pred, Fn&& fn) {
    size_t erased = 0;
    for (auto it = entries_.begin(); it != entries_.end();) {
      if (pred(it->first, it->second)) {
        fn(it->first, it->second);
        it = entries_.erase(it);
        ++erased;
      } else {
        ++it;
      }
    }
    return erased;
  }

 private:
  std::unordered_map<ConnectionKey, SiblingConnection, ConnectionKeyHash> entries_;
  uint64_t next_id_ = 1;
};

}  // namespace vhost_vsock::vsock
