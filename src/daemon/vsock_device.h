// The glue between the vhost-user server and the vsock muxer: the only place
// that knows both. The server tells the device about queues and the
// front-end; the device hands the queues to the muxer.
//
// Queue lifecycle choice: when the RX or TX ring stops (GET_VRING_BASE or
// SET_VRING_ENABLE 0: device reset, guest reboot, driver unload, but also a
// VMM "stop"/pause) every connection of the VM is reset. The guest's socket
// state cannot be trusted to survive a ring stop, and a host peer left waiting
// on a connection the guest forgot would hang forever; resetting makes host
// programs see EOF/ECONNRESET at once and reconnect. Pausing a VM therefore
// drops its vsock connections.
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

  // virtio 1.2 §5.10.3: stream sockets. SEQPACKET is not offered yet.
  [[nodiscard]] uint64_t device_features() const override { return vsock::kFeatureStream; }
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

  void on_queue_started(uint16_t index, virtio::Queue& queue) override {
    if (index >= kQueueCount) {
      spdlog::warn("vm cid={} ignoring start of unknown queue {}", guest_cid_, index);
      return;
    }
    if (attached_[index]) muxer_.detach_queue(index);
    muxer_.attach_queue(index, queue);
    attached_[index] = true;
    spdlog::debug("vm cid={} queue {} started (size {})", guest_cid_, index, queue.size());
  }

  void on_queue_stopped(uint16_t index) override {
    if (index >= kQueueCount || !attached_[index]) return;
    muxer_.detach_queue(index);
    attached_[index] = false;
    // See the lifecycle note at the top of this file.
    muxer_.reset_all_connections();
    spdlog::debug("vm cid={} queue {} stopped; connections reset", guest_cid_, index);
  }

  void on_queue_kicked(uint16_t index) override {
    if (index >= kQueueCount || !attached_[index]) return;
    muxer_.on_queue_kicked(index);
  }

  void on_frontend_disconnected() override {
    detach_all_queues();
    muxer_.reset_all_connections();
    muxer_.set_negotiated_features(0);
  }

  // Before the server (which owns the queues) goes away.
  void detach_all_queues() {
    for (uint16_t index = 0; index < kQueueCount; ++index) {
      if (!attached_[index]) continue;
      muxer_.detach_queue(index);
      attached_[index] = false;
    }
  }

  [[nodiscard]] bool queue_attached(uint16_t index) const { return index < kQueueCount && attached_[index]; }

 private:
  MuxerT& muxer_;
  const uint64_t guest_cid_;
  const uint16_t max_queue_size_;
  std::array<bool, kQueueCount> attached_{};
};

extern template class BasicVsockDevice<vsock::Muxer>;
using VsockDevice = BasicVsockDevice<vsock::Muxer>;

}  // namespace vhost_vsock::daemon
