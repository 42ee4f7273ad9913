// What one VM worker hands the metrics server: a copy of its counters and of
// its live connections, taken on the worker's own thread, so the data path
// keeps plain (non-atomic) counters and no lock.
#pragma once

#include <array>
#include <cstdint>
#include <vector>

#include "vhost_user/stats.h"
#include "vsock/muxer/muxer.h"

namespace vhost_vsock::metrics {

enum QueueIndex : uint8_t { kRxQueue = 0, kTxQueue = 1, kEventQueue = 2, kQueueKinds = 3 };

struct QueueNotifications {
  uint64_t kicks = 0;  // the driver kicked us
  uint64_t calls = 0;  // we interrupted the driver
};

struct VmSnapshot {
  uint64_t cid = 0;
  bool answered = false;  // false: the worker did not reply in time (only `cid` is set)
  vsock::MuxerStats muxer;
  vhost_user::ServerStats server;
  // rx, tx, event. QEMU keeps the event queue itself, so its entry stays 0.
  std::array<QueueNotifications, kQueueKinds> queues{};
  std::vector<vsock::ConnectionInfo> connections;

  [[nodiscard]] bool frontend_connected() const { return server.frontends_accepted > server.frontend_disconnects; }
};

}  // namespace vhost_vsock::metrics
