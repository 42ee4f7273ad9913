// Shared fixture: one real daemon process and one simulated guest per test.
// TearDown checks that the daemon is still alive and that the guest driver saw
// no protocol violations, and prints the daemon's log when a test failed.
#pragma once

#include <gtest/gtest.h>

#include <memory>
#include <span>
#include <string>

#include "host_socket.h"
#include "testing/daemon_process.h"
#include "testing/vsock_driver.h"

namespace vhost_vsock::integration {

using testing::DaemonOptions;
using testing::DaemonProcess;
using testing::GuestOptions;
using testing::GuestVsockDriver;
using testing::Stream;
using testing::StreamState;

inline constexpr uint64_t kGuestCid = 3;

// The virtqueue layout the simulated guest drives (GuestOptions::packed_ring).
enum class RingLayout { kSplit, kPacked };
// "split" / "packed": the parameter part of a test's name.
std::string ring_layout_name(const ::testing::TestParamInfo<RingLayout>& info);

// Reads from `stream` until `out` is full, or until one wait for data lasts
// `wait_per_read` (or EOF / reset). The number of bytes read.
size_t receive_fully(Stream& stream, std::span<uint8_t> out, Millis wait_per_read);

// Waits up to `timeout` until `stream` (the only one of `guest`) is held back
// by credit for good: none left, and no packet came or went for `quiet`. Free
// credit touches zero whenever the guest outruns the device for a moment, and
// comes back with the next CREDIT_UPDATE; only a zero that stays says the
// host side stopped taking data. False if it never settled at zero.
bool wait_credit_exhausted(GuestVsockDriver& guest, const Stream& stream, Millis timeout, Millis quiet = Millis(300));

class DaemonTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() { raise_fd_limit(); }

  void start_daemon(DaemonOptions options = {});
  GuestVsockDriver& start_guest(GuestOptions options = {});
  void start(DaemonOptions daemon_options = {}, GuestOptions guest_options = {}) {
    start_daemon(std::move(daemon_options));
    start_guest(guest_options);
  }
  void TearDown() override;

  struct Connected {
    Stream guest;
    UniqueFd host;
  };
  // Guest connects to CID 2 `port`; the host side comes from `listener`.
  Connected guest_connects(HostListener& listener, uint32_t port);
  // Host sends "CONNECT <port>" on the hybrid listener; the guest (already
  // listening on `port`) accepts. `ok_port` receives the port from "OK <n>".
  Connected host_connects(uint32_t port, uint64_t* ok_port = nullptr);

  DaemonProcess& daemon() { return *daemon_; }
  GuestVsockDriver& guest() { return *guest_; }

  std::unique_ptr<DaemonProcess> daemon_;
  std::unique_ptr<GuestVsockDriver> guest_;
  bool expect_no_violations_ = true;
  RingLayout ring_layout_ = RingLayout::kSplit;  // every start_guest() uses it
};

// A DaemonTest run once per ring layout: write TEST_P and instantiate the
// suite with VUV_FOR_EACH_RING_LAYOUT(Suite); names end in /split or /packed.
class RingDaemonTest : public DaemonTest, public ::testing::WithParamInterface<RingLayout> {
 protected:
  void SetUp() override { ring_layout_ = GetParam(); }
  [[nodiscard]] bool packed() const { return ring_layout_ == RingLayout::kPacked; }
};

#define VUV_FOR_EACH_RING_LAYOUT(suite) \
  INSTANTIATE_TEST_SUITE_P(Ring, suite, ::testing::Values(RingLayout::kSplit, RingLayout::kPacked), ring_layout_name)

}  // namespace vhost_vsock::integration
