#include "vsock/router/connection_timers.h"

namespace vhost_vsock::vsock {

void ConnectionTimers::cancel(RoutedConnection& connection) {
  if (connection.timer == 0) return;
  loop_.cancel_timer(connection.timer);
  connection.timer = 0;
}

void ConnectionTimers::arm_for_state(RoutedConnection& connection) {
  cancel(connection);
  std::chrono::milliseconds delay{0};
  switch (connection.conn.state()) {
    case ConnectionState::kAwaitingResponse:
    case ConnectionState::kConnectingToHost:  // a forward connect: as long as a guest has to answer
      delay = durations_.request_timeout;
      break;
    case ConnectionState::kClosingAfterFlush:
      connection.flush_backlog = connection.conn.host_backlog();
      delay = durations_.shutdown_timeout;
      break;
    case ConnectionState::kAwaitingGuestRst:
      delay = durations_.shutdown_timeout;
      break;
    default:
      return;
  }
  arm_after(connection, delay);
}

void ConnectionTimers::arm_after(RoutedConnection& connection, std::chrono::milliseconds delay) {
  cancel(connection);
  connection.timer =
      loop_.add_timer(delay, [this, key = connection.key(), id = connection.id, alive = std::weak_ptr<bool>(alive_)] {
        if (!alive.expired()) fire(key, id);
      });
}

void ConnectionTimers::fire(const ConnectionKey& key, uint64_t id) {
  RoutedConnection* connection = table_.find(key);
  if (connection == nullptr || connection->id != id) return;
  connection->timer = 0;
  on_expired_(*connection);
}

}  // namespace vhost_vsock::vsock
