// What the vhost-user server needs from the device it serves. The server owns
// the protocol, memory table, rings and eventfds (each queue writes its own
// call eventfd in Queue::notify()); the device owns what the queues carry.
// The vsock device implements this in daemon/ (glue), so that vhost_user/
// never learns about vsock or host sockets.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "virtio/queue.h"

namespace vhost_vsock::vhost_user {

// How a ring starts. kResumed: it continues exactly where it stopped, at the
// same addresses and size and with the base it stopped at, as after a VMM
// stop/cont or a memory-table update; the guest's driver never went away.
// kFresh: a first start, or anything else (a device reset starts from base 0).
enum class RingStart { kFresh, kResumed };

class Device {
 public:
  virtual ~Device() = default;

  // Virtio feature bits offered (the server adds VHOST_USER_F_PROTOCOL_FEATURES
  // and the virtio ring features it implements: VERSION_1, EVENT_IDX,
  // INDIRECT_DESC, NOTIFY_ON_EMPTY, RING_PACKED).
  [[nodiscard]] virtual uint64_t device_features() const = 0;
  // Queues the backend serves (vsock: 2, rx=0 and tx=1; QEMU keeps the event queue).
  [[nodiscard]] virtual uint16_t queue_count() const = 0;
  // Config space as the guest sees it (vsock: le64 guest_cid).
  [[nodiscard]] virtual std::vector<uint8_t> config_space() const = 0;
  // Largest ring size SET_VRING_NUM may set (the daemon's --queue-size).
  [[nodiscard]] virtual uint16_t max_queue_size() const { return virtio::kMaxQueueSize; }

  virtual void on_features_negotiated(uint64_t features) = 0;
  // Queue `index` is configured, enabled and has a kick fd: the device may use
  // it until on_queue_stopped(index). The reference stays valid until then;
  // its call fd may change meanwhile (SET_VRING_CALL), which notify() follows.
  virtual void on_queue_started(uint16_t index, virtio::Queue& queue, RingStart how) = 0;
  // The ring stopped (GET_VRING_BASE, disable, reset or disconnect). The device
  // must not touch the queue after this returns. Whether the guest's state
  // survived is known only at the next start (`how`), or never when the
  // front-end goes away (on_frontend_disconnected).
  virtual void on_queue_stopped(uint16_t index) = 0;
  // The driver kicked queue `index` (already drained from the kick eventfd).
  virtual void on_queue_kicked(uint16_t index) = 0;
  // The front-end went away (closed socket, protocol error) or sent RESET_OWNER:
  // forget all guest state. Queues were already stopped.
  virtual void on_frontend_disconnected() = 0;
};

}  // namespace vhost_vsock::vhost_user
