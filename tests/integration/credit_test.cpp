// Flow control end to end: a reader that stops on either side must stall the
// writer without losing, duplicating or reordering a byte.
#include <atomic>
#include <thread>
#include <vector>

#include "fixture.h"

namespace vhost_vsock::integration {
namespace {

constexpr size_t kTransfer = 4 << 20;

class CreditTest : public RingDaemonTest {};

std::vector<uint8_t> pattern(size_t n, uint64_t seed) {
  std::vector<uint8_t> data(n);
  fill_pattern(data, seed, 0);
  return data;
}

TEST_P(CreditTest, SlowGuestReaderStallsHostWriterWithoutLoss) {
  GuestOptions g;
  g.buf_alloc = 256 * 1024;
  start({}, g);
  guest().listen(3000);
  auto c = host_connects(3000);
  ASSERT_TRUE(c.host.valid() && c.guest.valid());

  const auto data = pattern(kTransfer, 1);
  std::atomic<bool> write_ok{false};
  std::jthread writer([&] { write_ok = write_all(c.host.get(), data, Millis(30000)); });

  // The guest is not reading: the device may fill exactly our buf_alloc and
  // must then wait for a credit update.
  EXPECT_TRUE(c.guest.wait_readable(g.buf_alloc, Millis(5000)));
  std::this_thread::sleep_for(Millis(300));
  EXPECT_EQ(c.guest.readable_bytes(), g.buf_alloc) << "device sent beyond our credit, or stopped short of it";
  EXPECT_FALSE(write_ok.load()) << "4 MiB cannot fit in 256 KiB of credit plus socket buffers";

  // Resume reading: everything arrives, in order.
  std::vector<uint8_t> received(kTransfer);
  const size_t got = receive_fully(c.guest, received, Millis(10000));
  writer.join();
  EXPECT_TRUE(write_ok.load());
  ASSERT_EQ(got, kTransfer);
  EXPECT_TRUE(received == data) << "payload corrupted or reordered";
  EXPECT_GT(guest().stats().credit_updates_sent, 0u);
}

TEST_P(CreditTest, SlowHostReaderStallsGuestWriterWithoutLoss) {
  start();
  HostListener listener(daemon().uds_port_path(3001));
  auto c = guest_connects(listener, 3001);
  ASSERT_TRUE(c.host.valid() && c.guest.established());

  const auto data = pattern(kTransfer, 2);
  std::atomic<bool> send_ok{false};
  std::atomic<bool> send_done{false};
  std::jthread sender([&] {
    send_ok = c.guest.send(data, Millis(30000));
    send_done = true;
  });

  // The host does not read: the guest must run out of the device's credit
  // (tx buffer + socket buffer), not have data dropped.
  EXPECT_TRUE(wait_credit_exhausted(guest(), c.guest, Millis(5000)))
      << "device credit should be exhausted while the host is stalled\n"
      << guest().debug_state();
  EXPECT_FALSE(send_done.load()) << "guest sent 4 MiB into a host socket nobody reads";

  std::vector<uint8_t> received;
  received.reserve(kTransfer);
  while (received.size() < kTransfer) {
    bool eof = false;
    std::string chunk = read_some(c.host.get(), 65536, Millis(10000), &eof);
    if (chunk.empty()) break;
    received.insert(received.end(), chunk.begin(), chunk.end());
  }
  sender.join();
  EXPECT_TRUE(send_ok.load());
  ASSERT_EQ(received.size(), kTransfer);
  EXPECT_TRUE(received == data) << "payload corrupted or reordered";
}

TEST_P(CreditTest, SmallGuestBufAllocIsHonoured) {
  GuestOptions g;
  g.buf_alloc = 8 * 1024;  // smaller than one 64 KiB packet: the device must split
  start({}, g);
  guest().listen(3002);
  auto c = host_connects(3002);
  ASSERT_TRUE(c.host.valid() && c.guest.valid());
  const auto data = pattern(1 << 20, 3);
  std::jthread writer([&] { write_all(c.host.get(), data, Millis(30000)); });
  std::vector<uint8_t> received(data.size());
  size_t got = 0;
  while (got < data.size()) {
    // Read slowly in small pieces to keep credit tight.
    const size_t n =
        c.guest.recv_into(std::span(received).subspan(got, std::min<size_t>(3000, data.size() - got)), Millis(10000));
    if (n == 0) break;
    EXPECT_LE(c.guest.readable_bytes(), g.buf_alloc);
    got += n;
  }
  writer.join();
  ASSERT_EQ(got, data.size());
  EXPECT_TRUE(received == data);
}

TEST_P(CreditTest, PausedRxQueueDelaysButLosesNothing) {
  start();
  guest().listen(3003);
  auto c = host_connects(3003);
  ASSERT_TRUE(c.host.valid() && c.guest.valid());
  guest().set_rx_paused(true);  // the guest stops taking RX buffers entirely
  const auto data = pattern(size_t{512} * 1024, 4);
  std::jthread writer([&] { write_all(c.host.get(), data, Millis(30000)); });
  std::this_thread::sleep_for(Millis(500));
  guest().set_rx_paused(false);
  std::vector<uint8_t> received(data.size());
  const size_t got = receive_fully(c.guest, received, Millis(10000));
  writer.join();
  ASSERT_EQ(got, data.size());
  EXPECT_TRUE(received == data);
}

}  // namespace
}  // namespace vhost_vsock::integration

namespace vhost_vsock::integration {
namespace {

// The device runs the RX ring dry (the guest is not reaping), then the guest
// refills it: the device must have asked for a kick (avail_event with
// EVENT_IDX, or no NO_NOTIFY flag) so that it notices the new buffers, with
// no other traffic to wake it.
TEST_P(CreditTest, DeviceNoticesRxRefillAfterRingRanDry) {
  for (bool event_idx : {true, false}) {
    SCOPED_TRACE(event_idx ? "EVENT_IDX" : "no EVENT_IDX");
    GuestOptions g;
    g.event_idx = event_idx;
    g.rx_buffer_size = 512;  // 128 chains * 512 bytes is far below our 256 KiB credit
    start({}, g);
    guest().listen(3004);
    auto c = host_connects(3004);
    ASSERT_TRUE(c.host.valid() && c.guest.valid());
    guest().set_rx_paused(true);
    const auto data = pattern(size_t{200} * 1024, 5);
    ASSERT_TRUE(write_all(c.host.get(), data));  // fits in the socket buffer
    std::this_thread::sleep_for(Millis(300));    // the device fills every RX buffer and stops
    guest().set_rx_paused(false);
    std::vector<uint8_t> received(data.size());
    const size_t got = receive_fully(c.guest, received, Millis(3000));
    EXPECT_EQ(got, data.size()) << "device stopped after the RX ring ran dry\n" << guest().debug_state();
    EXPECT_TRUE(received == data);
    TearDown();  // next round gets a fresh daemon and guest
  }
}

VUV_FOR_EACH_RING_LAYOUT(CreditTest);

}  // namespace
}  // namespace vhost_vsock::integration
