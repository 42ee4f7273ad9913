// Front-end lifecycle (disconnect, reconnect) and the ring/buffer layouts a
// guest may use.
#include <thread>
#include <tuple>
#include <vector>

#include "fixture.h"

namespace vhost_vsock::integration {
namespace {

class LifecycleTest : public RingDaemonTest {};

TEST_P(LifecycleTest, FrontendDisconnectClosesHostSocketsAndReconnectWorks) {
  start();
  HostListener listener(daemon().uds_port_path(7000));
  guest().listen(7001);
  std::vector<Connected> conns;
  for (int i = 0; i < 3; ++i) conns.push_back(guest_connects(listener, 7000));
  for (int i = 0; i < 3; ++i) conns.push_back(host_connects(7001));
  for (auto& c : conns) {
    ASSERT_TRUE(c.host.valid() && c.guest.valid());
    ASSERT_TRUE(c.guest.send("before"));
    ASSERT_EQ(read_exactly(c.host.get(), 6), "before");
  }

  guest().disconnect();
  for (size_t i = 0; i < conns.size(); ++i) {
    EXPECT_TRUE(wait_peer_closed(conns[i].host.get(), Millis(3000))) << "host socket " << i << " left open";
  }
  conns.clear();
  // While no front-end is attached the hybrid listener must not hand out OKs.
  {
    UniqueFd orphan = unix_connect(daemon().uds_path());
    if (orphan) {
      write_all(orphan.get(), "CONNECT 7001\n");
      bool eof = false;
      EXPECT_EQ(read_some(orphan.get(), 64, Millis(500), &eof).rfind("OK", 0), std::string::npos);
    }
  }

  // A new front-end (a rebooted VM) gets a clean device. (The probe above
  // may still be delivered to it as a REQUEST for 7001; the new guest does
  // not listen there, so it is refused.)
  guest_.reset();
  start_guest();
  guest().listen(7002);
  auto g2h = guest_connects(listener, 7000);
  ASSERT_TRUE(g2h.guest.send("after reconnect"));
  EXPECT_EQ(read_exactly(g2h.host.get(), 15), "after reconnect");
  auto h2g = host_connects(7002);
  ASSERT_TRUE(write_all(h2g.host.get(), "host again"));
  EXPECT_EQ(h2g.guest.recv_exactly(10), "host again");
}

TEST_P(LifecycleTest, RepeatedReconnectsStayHealthy) {
  start_daemon();
  HostListener listener(daemon().uds_port_path(7100));
  for (int round = 0; round < 5; ++round) {
    SCOPED_TRACE(round);
    start_guest();
    auto c = guest_connects(listener, 7100);
    ASSERT_TRUE(c.guest.send("round " + std::to_string(round)));
    EXPECT_EQ(read_exactly(c.host.get(), 7), "round " + std::to_string(round));
    guest_.reset();  // destroying the driver closes the front-end socket
    EXPECT_TRUE(wait_peer_closed(c.host.get(), Millis(3000)));
  }
}

// Every layout moves data both ways intact.
struct LayoutCase {
  const char* name;
  GuestOptions options;
};

GuestOptions with(void (*tweak)(GuestOptions&)) {
  GuestOptions o;
  tweak(o);
  return o;
}

// Each buffer layout over each ring layout.
class LayoutTest : public DaemonTest, public ::testing::WithParamInterface<std::tuple<RingLayout, LayoutCase>> {
 protected:
  void SetUp() override { ring_layout_ = std::get<0>(GetParam()); }
};

TEST_P(LayoutTest, EchoBothWays) {
  start({}, std::get<1>(GetParam()).options);
  HostListener listener(daemon().uds_port_path(8000));
  auto c = guest_connects(listener, 8000);
  ASSERT_TRUE(c.host.valid() && c.guest.established());
  std::vector<uint8_t> data(1 << 20);
  fill_pattern(data, 77, 0);

  std::jthread host([&] {
    // Echo whatever arrives until the guest's SHUT_WR.
    for (;;) {
      bool eof = false;
      std::string chunk = read_some(c.host.get(), 65536, Millis(10000), &eof);
      if (chunk.empty()) break;
      if (!write_all(c.host.get(), chunk)) break;
    }
    ::shutdown(c.host.get(), SHUT_WR);
  });
  std::jthread sender([&] {
    EXPECT_TRUE(c.guest.send(data, Millis(20000)));
    c.guest.shutdown(SHUT_WR);
  });
  std::vector<uint8_t> echoed(data.size());
  const size_t got = receive_fully(c.guest, echoed, Millis(10000));
  sender.join();
  host.join();
  ASSERT_EQ(got, data.size());
  EXPECT_TRUE(echoed == data);
}

INSTANTIATE_TEST_SUITE_P(
    Layouts, LayoutTest,
    ::testing::Combine(
        ::testing::Values(RingLayout::kSplit, RingLayout::kPacked),
        ::testing::Values(LayoutCase{"default", GuestOptions{}}, LayoutCase{"merged", with([](GuestOptions& o) {
                                                                              o.rx_layout =
                                                                                  testing::BufferLayout::kMerged;
                                                                              o.tx_layout =
                                                                                  testing::BufferLayout::kMerged;
                                                                            })},
                          LayoutCase{"fragmented", with([](GuestOptions& o) {
                                       o.rx_layout = testing::BufferLayout::kFragmented;
                                       o.tx_layout = testing::BufferLayout::kFragmented;
                                     })},
                          LayoutCase{"indirect", with([](GuestOptions& o) { o.indirect = true; })},
                          LayoutCase{"indirect_fragmented", with([](GuestOptions& o) {
                                       o.indirect = true;
                                       o.rx_layout = testing::BufferLayout::kFragmented;
                                       o.tx_layout = testing::BufferLayout::kFragmented;
                                     })},
                          LayoutCase{"no_event_idx", with([](GuestOptions& o) { o.event_idx = false; })},
                          LayoutCase{"split_memory_regions",
                                     with([](GuestOptions& o) { o.split_memory_regions = true; })},
                          LayoutCase{"split_rx_4k", with([](GuestOptions& o) {
                                       o.rx_layout = testing::BufferLayout::kSplit;
                                       o.rx_buffer_size = 4096;
                                     })},
                          LayoutCase{"small_rx_buffers", with([](GuestOptions& o) { o.rx_buffer_size = 512; })},
                          LayoutCase{"large_rx_buffers", with([](GuestOptions& o) { o.rx_buffer_size = 64 * 1024; })},
                          LayoutCase{"small_tx_packets", with([](GuestOptions& o) { o.tx_max_payload = 1000; })},
                          LayoutCase{"tiny_queue", with([](GuestOptions& o) { o.queue_size = 8; })})),
    [](const ::testing::TestParamInfo<std::tuple<RingLayout, LayoutCase>>& info) {
      return std::string(std::get<1>(info.param).name) +
             (std::get<0>(info.param) == RingLayout::kPacked ? "_packed" : "_split");
    });

VUV_FOR_EACH_RING_LAYOUT(LifecycleTest);

}  // namespace
}  // namespace vhost_vsock::integration
