#include "daemon/vsock_device.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "virtio/features.h"
#include "virtio/queue.h"

namespace vhost_vsock::daemon {
namespace {

// The device only passes queues on; this one is never used.
class FakeQueue final : public virtio::Queue {
 public:
  [[nodiscard]] bool configured() const override { return false; }
  [[nodiscard]] bool broken() const override { return false; }
  [[nodiscard]] uint16_t size() const override { return 0; }
  [[nodiscard]] const virtio::QueueStats& stats() const override { return stats_; }
  virtio::PopStatus pop(virtio::DescriptorChain&) override { return virtio::PopStatus::kEmpty; }
  void unpop(uint16_t) override {}
  [[nodiscard]] bool has_available() const override { return false; }
  void add_used(uint16_t, uint32_t) override {}
  void flush_used() override {}
  void notify() override {}
  void disable_notifications() override {}
  void enable_notifications() override {}
  void suppress_notifications() override {}

 private:
  virtio::QueueStats stats_;
};

// Records what the device asks of the muxer.
class FakeMuxer {
 public:
  void attach_queue(uint16_t index, virtio::Queue& queue) {
    calls.push_back("attach " + std::to_string(index));
    queues[index] = &queue;
  }
  void detach_queue(uint16_t index) {
    calls.push_back("detach " + std::to_string(index));
    queues[index] = nullptr;
  }
  void on_queue_kicked(uint16_t index) { calls.push_back("kick " + std::to_string(index)); }
  void reset_all_connections() { calls.push_back("reset"); }
  void set_negotiated_features(uint64_t value) { features = value; }
  [[nodiscard]] const vsock::MuxerStats& stats() const { return muxer_stats; }

  std::vector<std::string> calls;
  virtio::Queue* queues[2] = {nullptr, nullptr};
  uint64_t features = 0;
  vsock::MuxerStats muxer_stats;
};

using Calls = std::vector<std::string>;
constexpr auto kFresh = vhost_user::RingStart::kFresh;
constexpr auto kResumed = vhost_user::RingStart::kResumed;

// A device (CID 3, queues of 1024) on a FakeMuxer, and two queues to start.
class VsockDeviceTest : public ::testing::Test {
 protected:
  void start_rx_and_tx() {
    device.on_queue_started(0, rx, kFresh);
    device.on_queue_started(1, tx, kFresh);
  }

  FakeMuxer muxer;
  FakeQueue rx;
  FakeQueue tx;
  BasicVsockDevice<FakeMuxer> device{muxer, 3, 1024};
};

TEST_F(VsockDeviceTest, OffersStreamAndSeqpacketAndTwoQueues) {
  EXPECT_EQ(device.device_features(), 3u) << "VIRTIO_VSOCK_F_STREAM (bit 0) and VIRTIO_VSOCK_F_SEQPACKET (bit 1)";
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

TEST_F(VsockDeviceTest, StartedQueuesGoToTheMuxer) {
  start_rx_and_tx();
  EXPECT_EQ(muxer.calls, (Calls{"attach 0", "attach 1"}));
  EXPECT_EQ(muxer.queues[0], &rx);
  EXPECT_EQ(muxer.queues[1], &tx);

  device.on_queue_kicked(1);
  EXPECT_EQ(muxer.calls.back(), "kick 1");
}

// A stop alone (QEMU sends the same for stop/cont and a device reset) keeps
// every connection; a kick on a stopped queue does not reach the muxer.
TEST_F(VsockDeviceTest, StoppingRingsKeepsConnections) {
  start_rx_and_tx();
  muxer.calls.clear();
  device.on_queue_stopped(1);
  EXPECT_EQ(muxer.calls, (Calls{"detach 1"}));
  EXPECT_FALSE(device.queue_attached(1));
  EXPECT_TRUE(device.queue_attached(0));
  device.on_queue_kicked(1);
  device.on_queue_stopped(1);
  device.on_queue_stopped(0);
  EXPECT_EQ(muxer.calls, (Calls{"detach 1", "detach 0"}));
}

TEST_F(VsockDeviceTest, RingsThatResumeKeepConnections) {
  start_rx_and_tx();
  device.on_queue_stopped(0);
  device.on_queue_stopped(1);
  muxer.calls.clear();
  device.on_queue_started(0, rx, kResumed);
  device.on_queue_started(1, tx, kResumed);
  EXPECT_EQ(muxer.calls, (Calls{"attach 0", "attach 1"}));
  // Running again: a later fresh start after a new stop resets.
  device.on_queue_stopped(1);
  device.on_queue_started(1, tx, kFresh);
  EXPECT_EQ(muxer.calls, (Calls{"attach 0", "attach 1", "detach 1", "reset", "attach 1"}));
}

// A device reset restarts the rings from base 0: the guest forgot its
// connections, so they are reset once, before the first queue is attached,
// and host connects made after that are not reset by the second queue.
TEST_F(VsockDeviceTest, AFreshStartAfterAStopResetsOnce) {
  start_rx_and_tx();
  device.on_queue_stopped(0);
  device.on_queue_stopped(1);
  muxer.calls.clear();
  device.on_queue_started(0, rx, kFresh);
  device.on_queue_started(1, tx, kFresh);
  EXPECT_EQ(muxer.calls, (Calls{"reset", "attach 0", "attach 1"}));
}

// Host connects that arrive before the driver first starts the rings wait for
// it; they are not reset by the first start.
TEST_F(VsockDeviceTest, TheFirstStartResetsNothing) {
  start_rx_and_tx();
  EXPECT_EQ(muxer.calls, (Calls{"attach 0", "attach 1"}));
}

TEST_F(VsockDeviceTest, UnknownQueueIndicesAreIgnored) {
  FakeQueue event;
  device.on_queue_started(2, event, kFresh);
  device.on_queue_kicked(2);
  device.on_queue_stopped(2);
  device.on_queue_kicked(65535);
  EXPECT_TRUE(muxer.calls.empty());
}

TEST_F(VsockDeviceTest, RestartingAQueueDetachesTheOldOneFirst) {
  FakeQueue first;
  FakeQueue second;
  device.on_queue_started(0, first, kFresh);
  device.on_queue_started(0, second, kFresh);
  EXPECT_EQ(muxer.calls, (Calls{"attach 0", "detach 0", "attach 0"}));
  EXPECT_EQ(muxer.queues[0], &second);
  // As the server does before its queues go (the device reads their stats).
  device.detach_all_queues();
}

TEST_F(VsockDeviceTest, FrontendDisconnectDetachesAndResets) {
  device.on_features_negotiated(virtio::kFeatureVersion1 | vsock::kFeatureStream);
  EXPECT_EQ(muxer.features, virtio::kFeatureVersion1 | vsock::kFeatureStream) << "negotiated features reach the muxer";
  device.on_queue_started(0, rx, kFresh);
  muxer.calls.clear();
  device.on_frontend_disconnected();
  EXPECT_EQ(muxer.calls, (Calls{"detach 0", "reset"}));
  EXPECT_EQ(muxer.features, 0u);
  // Without queues a disconnect still resets (the server may report it twice).
  device.on_frontend_disconnected();
  EXPECT_EQ(muxer.calls, (Calls{"detach 0", "reset", "reset"}));
}

TEST(VsockDevice, DestructionDetachesQueuesStillAttached) {
  FakeMuxer muxer;
  FakeQueue tx;
  {
    BasicVsockDevice<FakeMuxer> device(muxer, 3, 1024);
    device.on_queue_started(1, tx, kFresh);
  }
  EXPECT_EQ(muxer.calls, (Calls{"attach 1", "detach 1"}));
  EXPECT_EQ(muxer.queues[1], nullptr);
}

}  // namespace
}  // namespace vhost_vsock::daemon
