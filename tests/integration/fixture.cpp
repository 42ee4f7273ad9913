#include "fixture.h"

#include <chrono>
#include <iostream>
#include <thread>
#include <utility>

namespace vhost_vsock::integration {

size_t receive_fully(Stream& stream, std::span<uint8_t> out, Millis wait_per_read) {
  size_t got = 0;
  while (got < out.size()) {
    const size_t n = stream.recv_into(out.subspan(got), wait_per_read);
    if (n == 0) break;
    got += n;
  }
  return got;
}

bool wait_credit_exhausted(GuestVsockDriver& guest, const Stream& stream, Millis timeout, Millis quiet) {
  using Clock = std::chrono::steady_clock;
  const auto deadline = Clock::now() + timeout;
  auto traffic = [&] {
    const testing::DriverStats s = guest.stats();
    return std::pair(s.packets_received, s.packets_sent);
  };
  auto last = traffic();
  auto still_since = Clock::now();
  for (;;) {
    const auto now_traffic = traffic();
    const auto now = Clock::now();
    if (stream.peer_free_credit() != 0 || now_traffic != last) {
      last = now_traffic;
      still_since = now;
    } else if (now - still_since >= quiet) {
      return true;
    }
    if (now >= deadline) return false;
    std::this_thread::sleep_for(Millis(10));
  }
}

std::string ring_layout_name(const ::testing::TestParamInfo<RingLayout>& info) {
  return info.param == RingLayout::kPacked ? "packed" : "split";
}

void DaemonTest::start_daemon(DaemonOptions options) {
  options.guest_cid = kGuestCid;
  daemon_ = std::make_unique<DaemonProcess>(std::move(options));
}

GuestVsockDriver& DaemonTest::start_guest(GuestOptions options) {
  if (ring_layout_ == RingLayout::kPacked) options.packed_ring = true;
  guest_ = std::make_unique<GuestVsockDriver>(daemon_->socket_path(), options);
  EXPECT_EQ(guest_->guest_cid(), kGuestCid) << "GET_CONFIG guest_cid";
  EXPECT_EQ((guest_->frontend().acked_features() & testing::kVirtioFeatureRingPacked) != 0, options.packed_ring)
      << "VIRTIO_F_RING_PACKED negotiated as the test's ring layout asks";
  return *guest_;
}

void DaemonTest::TearDown() {
  if (guest_ && expect_no_violations_) {
    const auto violations = guest_->violations();
    std::string listed;
    for (const auto& v : violations) listed += "  " + v + "\n";
    EXPECT_TRUE(violations.empty()) << "device protocol violations seen by the guest driver:\n" << listed;
  }
  if (guest_ && HasFailure()) std::cerr << "---- guest driver state ----\n" << guest_->debug_state();
  guest_.reset();
  if (daemon_) {
    EXPECT_TRUE(daemon_->running()) << "daemon died during the test (wait status " << daemon_->exit_status() << ")";
    daemon_->stop();
    if (HasFailure()) daemon_->print_log_tail(std::cerr, 300);
  }
  daemon_.reset();
}

DaemonTest::Connected DaemonTest::guest_connects(HostListener& listener, uint32_t port) {
  Connected c;
  c.guest = guest_->connect(port, Millis(5000));
  EXPECT_TRUE(c.guest.established()) << "guest connect to port " << port << " refused=" << c.guest.refused();
  c.host = listener.accept(Millis(5000));
  EXPECT_TRUE(c.host.valid()) << "host listener got no connection for port " << port;
  return c;
}

DaemonTest::Connected DaemonTest::host_connects(uint32_t port, uint64_t* ok_port) {
  Connected c;
  std::string ok_line;
  c.host = hybrid_connect(daemon_->uds_path(), port, &ok_line, Millis(5000));
  EXPECT_TRUE(c.host.valid()) << "no OK for CONNECT " << port;
  auto accepted = guest_->accept(port, Millis(5000));
  EXPECT_TRUE(accepted.has_value()) << "guest accepted nothing on port " << port;
  if (accepted) c.guest = *accepted;
  if (ok_port != nullptr && ok_line.size() > 3) *ok_port = std::stoull(ok_line.substr(3));
  return c;
}

}  // namespace vhost_vsock::integration
