// Every live connection of a router, keyed by ConnectionKey, with the
// per-local-port use counts the host port allocator needs and the connection
// cap. It owns the connections: erasing one destroys it (closing its host
// socket). Timers and logs are the caller's business.
#pragma once

#include <cstdint>
#include <memory>
#include <unordered_map>
#include <utility>

#include "vsock/router/connection_key.h"
#include "vsock/router/routed_connection.h"

namespace vhost_vsock::vsock {

class ConnectionTable {
 public:
  explicit ConnectionTable(size_t max_connections)
      : max_connections_(max_connections), connections_(0, ConnectionKeyHash{random_seed()}) {}

  // Consecutive guest packets mostly belong to one stream: the last hit is
  // checked before the hash table.
  [[nodiscard]] RoutedConnection* find(const ConnectionKey& key) const {
    if (last_found_ != nullptr && last_found_key_ == key) return last_found_;
    return find_in_table(key);
  }
  // The key must be free (callers look first).
  RoutedConnection& insert(std::unique_ptr<RoutedConnection> connection);
  void erase(RoutedConnection& connection);
  void clear();

  [[nodiscard]] size_t size() const { return connections_.size(); }
  [[nodiscard]] size_t max_connections() const { return max_connections_; }
  // Room for one more, counting `also_pending` (host peers still handshaking).
  [[nodiscard]] bool has_room(size_t also_pending = 0) const {
    return connections_.size() + also_pending < max_connections_;
  }
  [[nodiscard]] bool local_port_in_use(uint32_t port) const { return local_ports_in_use_.contains(port); }

  template <typename Fn>
  void for_each(Fn&& fn) {
    for (auto& [key, connection] : connections_) fn(*connection);
  }
  template <typename Fn>
  void for_each(Fn&& fn) const {
    for (const auto& [key, connection] : connections_) fn(std::as_const(*connection));
  }

 private:
  // A seed of its own for each table's hash, which guests cannot predict.
  static uint64_t random_seed();
  RoutedConnection* find_in_table(const ConnectionKey& key) const;  // a hit becomes last_found_

  size_t max_connections_;
  std::unordered_map<ConnectionKey, std::unique_ptr<RoutedConnection>, ConnectionKeyHash> connections_;
  std::unordered_map<uint32_t, uint32_t> local_ports_in_use_;  // port -> live connections using it
  mutable ConnectionKey last_found_key_;
  mutable RoutedConnection* last_found_ = nullptr;  // erase() and clear() forget it
};

}  // namespace vhost_vsock::vsock
