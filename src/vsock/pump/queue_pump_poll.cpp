// Busy polling (--poll-us): see QueuePump::enable_busy_poll().
#include <spdlog/spdlog.h>

#include "vsock/pump/queue_pump.h"

namespace vhost_vsock::vsock {

QueuePump::~QueuePump() {
  // The hook points at this pump; the loop outlives it.
  if (poll_.window.count() > 0) loop_.set_idle_hook({});
}

void QueuePump::enable_busy_poll(std::chrono::microseconds window) {
  if (window.count() <= 0) return;
  poll_.window = window;
  loop_.set_idle_hook([this] { return poll_when_idle(); });
}

virtio::Queue* QueuePump::running_queue(uint16_t index) const {
  virtio::Queue* queue = queues_[index];
  return queue != nullptr && queue->configured() && !queue->broken() ? queue : nullptr;
}

bool QueuePump::poll_when_idle() {
  virtio::Queue* tx = running_queue(kTxQueue);
  if (tx == nullptr) {  // no rings, or a stopped device: nothing to poll, never spin
    poll_.worked = false;
    if (!poll_.polling) return false;
    // TX stopped mid-window (it gets kicks again when it is attached); RX
    // may run on and must not be left without kicks.
    poll_.polling = false;
    virtio::Queue* rx = poll_.rx_kicks_suppressed ? running_queue(kRxQueue) : nullptr;
    if (rx == nullptr) return false;
    rx->enable_notifications();
    poll_.rx_kicks_suppressed = false;
    if (!rx->has_available()) return false;
    schedule_rx();
    return true;
  }
  const auto now = std::chrono::steady_clock::now();
  if (poll_.worked) {  // new work (re)starts the window; without it the window only runs out
    poll_.worked = false;
    if (!poll_.polling) {
      ++stats_.busy_poll_windows;
      poll_.tx_kicks_suppressed = poll_.rx_kicks_suppressed = false;  // passes may have enabled them since
    }
    poll_.polling = true;
    poll_.deadline = now + poll_.window;
  }
  if (!poll_.polling) return false;
  // RX buffers matter only while packets wait for them.
  virtio::Queue* rx = rx_starved_ ? running_queue(kRxQueue) : nullptr;
  // We watch the rings: the guest need not kick (in a real VM, a VM exit each).
  if (!poll_.tx_kicks_suppressed) {
    tx->suppress_notifications();
    poll_.tx_kicks_suppressed = true;
  }
  if (rx != nullptr && !poll_.rx_kicks_suppressed) {
    rx->suppress_notifications();
    poll_.rx_kicks_suppressed = true;
  }
  if (now < poll_.deadline) {
    // Checked first: buffers a pass cannot take (backpressure) must not keep us spinning.
    if (schedule_available(*tx, rx)) ++stats_.busy_poll_finds;
    return true;
  }
  // Going to sleep: ask for kicks again, then look once more. A buffer the
  // guest published while it still saw kicks suppressed came with no kick;
  // without this re-check it would wait for the next one.
  poll_.polling = false;
  tx->enable_notifications();
  if (rx != nullptr) rx->enable_notifications();
  poll_.tx_kicks_suppressed = false;
  poll_.rx_kicks_suppressed = poll_.rx_kicks_suppressed && rx == nullptr;
  return schedule_available(*tx, rx);
}

bool QueuePump::schedule_available(virtio::Queue& tx, virtio::Queue* rx) {
  bool found = false;
  if (tx.has_available()) {
    schedule_tx();
    found = true;
  }
  if (rx != nullptr && rx->has_available()) {
    schedule_rx();
    found = true;
  }
  return found;
}

}  // namespace vhost_vsock::vsock
