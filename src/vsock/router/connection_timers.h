// The one timer a connection may have, chosen by its state: the guest must
// answer our REQUEST (request timeout), a closing connection's TX buffer must
// drain and the guest must RST after our full SHUTDOWN (shutdown timeout).
// An established stream stalled for the guest's credit may have the router's
// CREDIT_REQUEST fallback (arm_after; arm_for_state cancels it on any change
// of state).
// A timer that fires for a connection that is gone, or for an older
// connection under the same key, is ignored; so is one that fires after this
// object is destroyed.
#pragma once

#include <chrono>
#include <functional>
#include <memory>

#include "base/event_loop.h"
#include "vsock/router/connection_table.h"

namespace vhost_vsock::vsock {

class ConnectionTimers {
 public:
  struct Durations {
    std::chrono::milliseconds request_timeout;
    std::chrono::milliseconds shutdown_timeout;
  };
  using Expired = std::function<void(RoutedConnection&)>;

  ConnectionTimers(base::EventLoop& loop, const ConnectionTable& table, Durations durations, Expired on_expired)
      : loop_(loop), table_(table), durations_(durations), on_expired_(std::move(on_expired)) {}
  ~ConnectionTimers() { *alive_ = false; }
  ConnectionTimers(const ConnectionTimers&) = delete;
  ConnectionTimers& operator=(const ConnectionTimers&) = delete;

  [[nodiscard]] const Durations& durations() const { return durations_; }
  // Cancels the connection's timer and arms the one its state needs, if any.
  void arm_for_state(RoutedConnection& connection);
  // Cancels the connection's timer and arms one that fires after `delay`.
  void arm_after(RoutedConnection& connection, std::chrono::milliseconds delay);
  void cancel(RoutedConnection& connection);

 private:
  void fire(const ConnectionKey& key, uint64_t id);

  base::EventLoop& loop_;
  const ConnectionTable& table_;
  Durations durations_;
  Expired on_expired_;
  std::shared_ptr<bool> alive_ = std::make_shared<bool>(true);
};

}  // namespace vhost_vsock::vsock
