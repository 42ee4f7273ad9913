// Private to the muxer: a thin composition of the router (connections and
// what is owed to the guest), the queue pump (the virtqueues) and the hybrid
// listener (host-initiated connections, muxer_host.cpp).
#pragma once

#include <memory>
#include <vector>

#include "base/event_loop.h"
#include "vsock/muxer/muxer.h"
#include "vsock/pump/queue_pump.h"
#include "vsock/router/router.h"
#include "vsock/transport/forward_listener.h"
#include "vsock/transport/hybrid_listener.h"

namespace vhost_vsock::vsock {

class Muxer::Impl {
 public:
  Impl(base::EventLoop& loop, MuxerOptions options);
  ~Impl();

  void open_listener();
  void open_seqpacket_listener();
  void open_forward_listeners();
  [[nodiscard]] size_t pending_host_peers() const;

  base::EventLoop& loop_;
  MuxerOptions options_;
  MuxerStats stats_;
  uint64_t negotiated_features_ = 0;  // Muxer::set_negotiated_features()
  Router router_;
  QueuePump pump_{loop_, router_, stats_};
  std::unique_ptr<HybridListener> listener_;                         // null without a uds-path
  std::unique_ptr<HybridListener> seqpacket_listener_;               // <uds-path>_seqpacket; null if it could not open
  std::vector<std::unique_ptr<ForwardListener>> forward_listeners_;  // --forward-listen
};

}  // namespace vhost_vsock::vsock
