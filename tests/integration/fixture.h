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

// Reads from `stream` until `out` is full, or until one wait for data lasts
// `wait_per_read` (or EOF / reset). The number of bytes read.
size_t receive_fully(Stream& stream, std::span<uint8_t> out, Millis wait_per_read);

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
};

}  // namespace vhost_vsock::integration
