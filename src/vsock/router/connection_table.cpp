#include "vsock/router/connection_table.h"

namespace vhost_vsock::vsock {

RoutedConnection* ConnectionTable::find(const ConnectionKey& key) const {
  auto it = connections_.find(key);
  return it == connections_.end() ? nullptr : it->second.get();
}

RoutedConnection& ConnectionTable::insert(std::unique_ptr<RoutedConnection> owned) {
  RoutedConnection& connection = *owned;
  const ConnectionKey key = connection.key();
  if (RoutedConnection* old = find(key)) erase(*old);  // callers check first; belt and braces
  ++local_ports_in_use_[key.local_port];
  connections_.emplace(key, std::move(owned));
  return connection;
}

void ConnectionTable::erase(RoutedConnection& connection) {
  const ConnectionKey key = connection.key();
  auto port = local_ports_in_use_.find(key.local_port);
  if (port != local_ports_in_use_.end() && --port->second == 0) local_ports_in_use_.erase(port);
  connections_.erase(key);  // destroys the connection
}

void ConnectionTable::clear() {
  connections_.clear();
  local_ports_in_use_.clear();
}

}  // namespace vhost_vsock::vsock
