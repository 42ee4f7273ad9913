#include "vsock/router/connection_table.h"

#include <atomic>
#include <chrono>
#include <exception>
#include <random>

namespace vhost_vsock::vsock {
namespace {

uint64_t splitmix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

uint64_t draw_process_secret() noexcept {
  try {
    std::random_device device;
    return (static_cast<uint64_t>(device()) << 32) ^ device();
  } catch (const std::exception&) {
    // No entropy source: address-space layout and the clock still keep it from guests.
    const int on_stack = 0;
    return reinterpret_cast<uintptr_t>(&on_stack) ^
           static_cast<uint64_t>(std::chrono::steady_clock::now().time_since_epoch().count());
  }
}

// Drawn before main(), and so before the sandbox, whose seccomp filter does
// not allow getrandom.
const uint64_t kProcessSecret = draw_process_secret();
std::atomic<uint64_t> tables_seeded{0};

}  // namespace

uint64_t ConnectionTable::random_seed() {
  return splitmix64(kProcessSecret ^ splitmix64(tables_seeded.fetch_add(1, std::memory_order_relaxed)));
}

RoutedConnection* ConnectionTable::find_in_table(const ConnectionKey& key) const {
  auto it = connections_.find(key);
  if (it == connections_.end()) return nullptr;
  last_found_key_ = key;
  last_found_ = it->second.get();
  return last_found_;
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
  if (&connection == last_found_) last_found_ = nullptr;
  connections_.erase(key);  // destroys the connection
}

void ConnectionTable::clear() {
  last_found_ = nullptr;
  connections_.clear();
  local_ports_in_use_.clear();
}

}  // namespace vhost_vsock::vsock
