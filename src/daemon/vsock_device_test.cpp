#include "daemon/vsock_device.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

namespace vhost_vsock::daemon {
namespace {

// Records what the device asks of the muxer.
class FakeMuxer {
 public:
  void attach_queue(uint16_t index, virtio::SplitVirtqueue& queue, vsock::Muxer::NotifyGuest notify) {
    calls.push_back("attach " + std::to_string(index));
    queues[index] = &queue;
    notifiers[index] = std::move(notify);
  }
  void detach_queue(uint16_t index) {
    calls.push_back("detach " + std::to_string(index));
    queues[index] = nullptr;
    notifiers[index] = nullptr;
  }
  void on_queue_kicked(uint16_t index) { calls.push_back("kick " + std::to_string(index)); }
  void reset_all_connections() { calls.push_back("reset"); }

  std::vector<std::string> calls;
  virtio::SplitVirtqueue* queues[2] = {nullptr, nullptr};
  vsock::Muxer::NotifyGuest notifiers[2];
};

class RecordingNotifier : public vhost_user::GuestNotifier {
 public:
  void notify_guest(uint16_t queue_index) override { notified.push_back(queue_index); }
  std::vector<uint16_t> notified;
};

using Calls = std::vector<std::string>;

TEST(VsockDevice, OffersStreamOnlyAndTwoQueues) {
  FakeMuxer muxer;
  BasicVsockDevice<FakeMuxer> device(muxer, 3, 1024);
  EXPECT_EQ(device.device_features(), 1u) << "VIRTIO_VSOCK_F_STREAM only; no SEQPACKET yet";
  EXPECT_EQ(device.queue_count(), 2);
  EXPECT_EQ(device.max_queue_size(), 1024);
}

TEST(VsockDevice, ConfigSpaceIsLittleEndianGuestCid) {
  FakeMuxer muxer;
  BasicVsockDevice<FakeMuxer> device(muxer, 0x00000000FEDCBA98ULL, 256);
  EXPECT_EQ(device.config_space(), (std::vector<uint8_t>{0x98, 0xBA, 0xDC, 0xFE, 0, 0, 0, 0}));
  BasicVsockDevice<FakeMuxer> small(muxer, 3, 256);
  EXPECT_EQ(small.config_space(), (std::vector<uint8_t>{3, 0, 0, 0, 0, 0, 0, 0}));
}

TEST(VsockDevice, StartedQueuesGoToTheMuxerAndNotifyThroughTheServer) {
  FakeMuxer muxer;
  RecordingNotifier notifier;
  virtio::SplitVirtqueue rx;
  virtio::SplitVirtqueue tx;
  BasicVsockDevice<FakeMuxer> device(muxer, 3, 1024);
  device.on_queue_started(0, rx, notifier);
  device.on_queue_started(1, tx, notifier);
  EXPECT_EQ(muxer.calls, (Calls{"attach 0", "attach 1"}));
  EXPECT_EQ(muxer.queues[0], &rx);
  EXPECT_EQ(muxer.queues[1], &tx);
  ASSERT_TRUE(muxer.notifiers[0]);
  muxer.notifiers[0](0);
  muxer.notifiers[1](1);
  EXPECT_EQ(notifier.notified, (std::vector<uint16_t>{0, 1}));

  device.on_queue_kicked(1);
  EXPECT_EQ(muxer.calls.back(), "kick 1");
}

TEST(VsockDevice, StoppingRxOrTxResetsEveryConnection) {
  FakeMuxer muxer;
  RecordingNotifier notifier;
  virtio::SplitVirtqueue rx;
  virtio::SplitVirtqueue tx;
  BasicVsockDevice<FakeMuxer> device(muxer, 3, 1024);
  device.on_queue_started(0, rx, notifier);
  device.on_queue_started(1, tx, notifier);
  muxer.calls.clear();
  device.on_queue_stopped(1);
  EXPECT_EQ(muxer.calls, (Calls{"detach 1", "reset"}));
  EXPECT_FALSE(device.queue_attached(1));
  EXPECT_TRUE(device.queue_attached(0));
  // A kick on a stopped queue must not reach the muxer.
  device.on_queue_kicked(1);
  device.on_queue_stopped(1);
  EXPECT_EQ(muxer.calls, (Calls{"detach 1", "reset"}));
  device.on_queue_stopped(0);
  EXPECT_EQ(muxer.calls, (Calls{"detach 1", "reset", "detach 0", "reset"}));
}

TEST(VsockDevice, UnknownQueueIndicesAreIgnored) {
  FakeMuxer muxer;
  RecordingNotifier notifier;
  virtio::SplitVirtqueue event;
  BasicVsockDevice<FakeMuxer> device(muxer, 3, 1024);
  device.on_queue_started(2, event, notifier);
  device.on_queue_kicked(2);
  device.on_queue_stopped(2);
  device.on_queue_kicked(65535);
  EXPECT_TRUE(muxer.calls.empty());
}

TEST(VsockDevice, RestartingAQueueDetachesTheOldOneFirst) {
  FakeMuxer muxer;
  RecordingNotifier notifier;
  virtio::SplitVirtqueue first;
  virtio::SplitVirtqueue second;
  BasicVsockDevice<FakeMuxer> device(muxer, 3, 1024);
  device.on_queue_started(0, first, notifier);
  device.on_queue_started(0, second, notifier);
  EXPECT_EQ(muxer.calls, (Calls{"attach 0", "detach 0", "attach 0"}));
  EXPECT_EQ(muxer.queues[0], &second);
}

TEST(VsockDevice, FrontendDisconnectDetachesAndResets) {
  FakeMuxer muxer;
  RecordingNotifier notifier;
  virtio::SplitVirtqueue rx;
  BasicVsockDevice<FakeMuxer> device(muxer, 3, 1024);
  device.on_features_negotiated((1ULL << 32) | 1);
  EXPECT_EQ(device.negotiated_features(), (1ULL << 32) | 1);
  device.on_queue_started(0, rx, notifier);
  muxer.calls.clear();
  device.on_frontend_disconnected();
  EXPECT_EQ(muxer.calls, (Calls{"detach 0", "reset"}));
  EXPECT_EQ(device.negotiated_features(), 0u);
  // Without queues a disconnect still resets (the server may report it twice).
  device.on_frontend_disconnected();
  EXPECT_EQ(muxer.calls, (Calls{"detach 0", "reset", "reset"}));
}

TEST(VsockDevice, DestructionDetachesQueuesStillAttached) {
  FakeMuxer muxer;
  RecordingNotifier notifier;
  virtio::SplitVirtqueue tx;
  {
    BasicVsockDevice<FakeMuxer> device(muxer, 3, 1024);
    device.on_queue_started(1, tx, notifier);
  }
  EXPECT_EQ(muxer.calls, (Calls{"attach 1", "detach 1"}));
  EXPECT_EQ(muxer.queues[1], nullptr);
}

}  // namespace
}  // namespace vhost_vsock::daemon
