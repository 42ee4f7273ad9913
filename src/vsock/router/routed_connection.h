// One entry of the connection table: the stream itself plus what the router
// keeps about it (its timer, the RX scheduling hooks, lifecycle facts).
#pragma once

#include <chrono>
#include <memory>

#include "base/event_loop.h"
#include "vsock/connection/connection.h"
#include "vsock/router/connection_key.h"
#include "vsock/router/intrusive_list.h"

namespace vhost_vsock::vsock {

struct RoutedConnection {
  RoutedConnection(const ConnectionParams& params, std::unique_ptr<HostEndpoint> host, ConnectionState state,
                   uint64_t id_)
      : conn(params, std::move(host), state),
        id(id_),
        guest_initiated(state != ConnectionState::kAwaitingResponse),
        created(std::chrono::steady_clock::now()) {
    control_hook.owner = this;
    data_hook.owner = this;
  }
  ~RoutedConnection() {
    control_hook.unlink();
    data_hook.unlink();
  }
  [[nodiscard]] ConnectionKey key() const { return {conn.guest_cid(), conn.local_port(), conn.peer_port()}; }

  Connection conn;
  uint64_t id;  // unique for the router's lifetime: stale timers and events check it
  // For the connection listing: only host-initiated connections start by
  // awaiting the guest's RESPONSE.
  const bool guest_initiated;
  const std::chrono::steady_clock::time_point created;
  base::EventLoop::TimerId timer = 0;
  size_t flush_backlog = 0;  // kClosingAfterFlush: host_backlog() when the timer was armed
  bool was_established = false;
  // Connect-wait (host-initiated only): until when a guest RST is retried,
  // how often it was, and whether the timer armed is a retry's.
  std::chrono::steady_clock::time_point connect_wait_until{};
  uint32_t connect_retries = 0;
  bool retry_armed = false;
  // Credit stalls (Connection::credit_stalls()) already counted, and the one
  // the CREDIT_REQUEST timer was armed for.
  uint64_t credit_stalls_seen = 0;
  uint64_t credit_stall_timed = 0;
  ListHook<RoutedConnection> control_hook;  // owes the guest a control packet
  ListHook<RoutedConnection> data_hook;     // may have host bytes for the guest
};

}  // namespace vhost_vsock::vsock
