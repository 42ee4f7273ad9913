// The glue between the vhost-user server and the vsock muxer: the only place
// that knows both. The server tells the device about queues and the
// front-end; the device hands the queues to the muxer.
//
// Queue lifecycle: a ring stop (GET_VRING_BASE, SET_VRING_ENABLE 0, a new
// memory table) alone says nothing about the guest: QEMU sends the same
// messages for a pause ("stop"), a memory-table update and a device reset. So
// connections are kept while the rings are stopped (host data waits in the
// per-connection buffers, within credit) and the choice is made when a ring
// starts again: one that resumes where it stopped (stop/cont) keeps every
// connection; a fresh start (device reset, guest reboot: base 0) resets them
// all first, since the guest forgot them. A front-end that goes away resets
// them at once.
#pragma once

#include <spdlog/spdlog.h>

#include <array>
#include <cstdint>
#include <vector>

#include "vhost_user/device.h"
#include "virtio/queue.h"
#include "vsock/muxer/muxer.h"
#include "vsock/packet/header.h"

namespace vhost_vsock::daemon {

// A template over the muxer type only so unit tests can substitute a fake;
// the daemon uses VsockDevice (= BasicVsockDevice<vsock::Muxer>).
template <typename MuxerT>
class BasicVsockDevice final : public vhost_user::Device {
 public:
  static constexpr uint16_t kRxQueue = 0;
  static constexpr uint16_t kTxQueue = 1;
  static constexpr uint16_t kQueueCount = 2;  // QEMU keeps the event queue (2) itself

  BasicVsockDevice(MuxerT& muxer, uint64_t guest_cid, uint16_t max_queue_size)
      : muxer_(muxer), guest_cid_(guest_cid), max_queue_size_(max_queue_size) {}
  ~BasicVsockDevice() override { detach_all_queues(); }
  BasicVsockDevice(const BasicVsockDevice&) = delete;
  BasicVsockDevice& operator=(const BasicVsockDevice&) = delete;

  // virtio 1.2 §5.10.3: stream and seqpacket sockets.
  [[nodiscard]] uint64_t device_features() const override { return vsock::kFeatureStream | vsock::kFeatureSeqpacket; }
  [[nodiscard]] uint16_t queue_count() const override { return kQueueCount; }
  // struct virtio_vsock_config { le64 guest_cid; }
  [[nodiscard]] std::vector<uint8_t> config_space() const override {
    std::vector<uint8_t> config(8);
    for (size_t i = 0; i < config.size(); ++i) config[i] = static_cast<uint8_t>(guest_cid_ >> (8 * i));
    return config;
  }
  // --queue-size: the largest vring this device accepts (vhost-device-vsock's
  // max_queue_size), enforced by the server on SET_VRING_NUM.
  [[nodiscard]] uint16_t max_queue_size() const override { return max_queue_size_; }

  void on_features_negotiated(uint64_t features) override {
    muxer_.set_negotiated_features(features);
    spdlog::debug("vm cid={} features negotiated: {:#x}", guest_cid_, features);
  }

  void on_queue_started(uint16_t index, virtio::Queue& queue, vhost_user::RingStart how) override {
    if (index >= kQueueCount) {
      spdlog::warn("vm cid={} ignoring start of unknown queue {}", guest_cid_, index);
      return;
    }
    if (attached_[index]) detach(index);
    // See the lifecycle note at the top of this file.
    if (stopped_since_running_ && how == vhost_user::RingStart::kFresh) {
      spdlog::info("vm cid={} queue {} starts afresh (device reset or a new driver): resetting {} connection(s)",
                   guest_cid_, index, muxer_.stats().connections_active);
      muxer_.reset_all_connections();
      stopped_since_running_ = false;
    }
    muxer_.attach_queue(index, queue);
    attached_[index] = true;
    queues_[index] = &queue;
    calls_at_attach_[index] = queue.stats().notifications_sent;
    if (attached_[kRxQueue] && attached_[kTxQueue]) stopped_since_running_ = false;
    spdlog::debug("vm cid={} queue {} {} (size {})", guest_cid_, index,
                  how == vhost_user::RingStart::kResumed ? "resumed" : "started", queue.size());
  }

  void on_queue_stopped(uint16_t index) override {
    if (index >= kQueueCount || !attached_[index]) return;
    detach(index);
    stopped_since_running_ = true;
    spdlog::debug("vm cid={} queue {} stopped; {} connection(s) kept until it starts again", guest_cid_, index,
                  muxer_.stats().connections_active);
  }

  void on_queue_kicked(uint16_t index) override {
    if (index >= kQueueCount || !attached_[index]) return;
    ++kicks_[index];
    muxer_.on_queue_kicked(index);
  }

  void on_frontend_disconnected() override {
    detach_all_queues();
    // No driver first: a sibling told of the reset below must already find this VM unreachable.
    muxer_.set_negotiated_features(0);
    muxer_.reset_all_connections();
    stopped_since_running_ = false;
  }

  // Before the server (which owns the queues) goes away.
  void detach_all_queues() {
    for (uint16_t index = 0; index < kQueueCount; ++index) {
      if (attached_[index]) detach(index);
    }
  }

  // Kicks handled (each ring start counts one: buffers may be waiting) and
  // interrupts sent to the guest, over the device's lifetime (metrics).
  struct QueueNotifications {
    uint64_t kicks = 0;
    uint64_t calls = 0;
  };
  [[nodiscard]] QueueNotifications queue_notifications(uint16_t index) const {
    if (index >= kQueueCount) return {};
    uint64_t calls = retired_calls_[index];
    if (queues_[index] != nullptr) calls += queues_[index]->stats().notifications_sent - calls_at_attach_[index];
    return {kicks_[index], calls};
  }

  [[nodiscard]] bool queue_attached(uint16_t index) const { return index < kQueueCount && attached_[index]; }

 private:
  MuxerT& muxer_;
  const uint64_t guest_cid_;
  const uint16_t max_queue_size_;
  std::array<bool, kQueueCount> attached_{};
  // A ring stopped since both last ran: connections are kept until a ring
  // starts again, and reset then unless it resumes (see the note at the top).
  bool stopped_since_running_ = false;

  void detach(uint16_t index) {
    muxer_.detach_queue(index);
    attached_[index] = false;
    // A ring keeps its Queue (and its stats) across restarts: count only what
    // happened while attached.
    retired_calls_[index] += queues_[index]->stats().notifications_sent - calls_at_attach_[index];
    queues_[index] = nullptr;
  }

  // Metrics; touched on the worker thread only.
  std::array<virtio::Queue*, kQueueCount> queues_{};
  std::array<uint64_t, kQueueCount> calls_at_attach_{};
  std::array<uint64_t, kQueueCount> retired_calls_{};
  std::array<uint64_t, kQueueCount> kicks_{};
};

extern template class BasicVsockDevice<vsock::Muxer>;
using VsockDevice = BasicVsockDevice<vsock::Muxer>;

}  // namespace vhost_vsock::daemon
