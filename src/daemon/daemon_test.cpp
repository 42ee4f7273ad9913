// The daemon's lifecycle against the real muxer and vhost-user server:
// sockets bound before "ready", a clean exit on SIGTERM with the socket files
// removed, and a startup failure that takes the other VMs down with it.
#include "daemon/daemon.h"

#include <gtest/gtest.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <functional>
#include <future>
#include <thread>
#include <vector>

#include "base/unix_socket_address.h"
#include "daemon/cli.h"
#include "daemon/vm_worker.h"
#include "testing/temp_dir.h"

namespace vhost_vsock::daemon {
namespace {

using vhost_vsock::testing::TempDir;
using namespace std::chrono_literals;

bool is_socket(const std::string& path) {
  struct stat st {};
  return ::lstat(path.c_str(), &st) == 0 && S_ISSOCK(st.st_mode);
}

bool exists(const std::string& path) {
  struct stat st {};
  return ::lstat(path.c_str(), &st) == 0;
}

bool can_connect(const std::string& path) {
  int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  const sockaddr_un addr = base::unix_socket_address(path);
  const bool ok = ::connect(fd, reinterpret_cast<const sockaddr*>(&addr), sizeof(addr)) == 0;
  ::close(fd);
  return ok;
}

VmConfig vm_in(const TempDir& dir, uint64_t cid) {
  VmConfig vm;
  vm.guest_cid = cid;
  vm.socket_path = dir.file("vhost" + std::to_string(cid) + ".sock");
  vm.uds_path = dir.file("vm" + std::to_string(cid) + ".vsock");
  return vm;
}

// SIGTERM must be blocked in every thread before it is sent, or the default
// action kills the test binary.
void block_sigterm() {
  sigset_t mask;
  sigemptyset(&mask);
  sigaddset(&mask, SIGTERM);
  ASSERT_EQ(::pthread_sigmask(SIG_BLOCK, &mask, nullptr), 0);
}

TEST(ConnectionCap, KeepsTheRequestedCapWhenDescriptorsSuffice) {
  EXPECT_EQ(connection_cap_for_open_files(1 << 20, 4, 16384), 16384u);
}

TEST(ConnectionCap, SharesAShortLimitEquallyBetweenVms) {
  // 1024 descriptors, 2 VMs: (1024 - 16) / 2 = 504 each, less 64 for the VM's own sockets.
  const uint32_t cap = connection_cap_for_open_files(1024, 2, 16384);
  EXPECT_EQ(cap, 440u);
  EXPECT_LE(2 * (uint64_t{cap} + 64) + 16, 1024u);  // every VM at its cap still fits
  EXPECT_EQ(connection_cap_for_open_files(1024, 1, 16384), 944u);
}

TEST(ConnectionCap, NeverZero) {
  EXPECT_EQ(connection_cap_for_open_files(8, 3, 100), 1u);
  EXPECT_EQ(connection_cap_for_open_files(1024, 0, 100), 100u);
}

TEST(MuxerLimits, ComeFromTheVmAndRuntimeOptions) {
  VmConfig vm;
  vm.tx_buffer_size = 12345;
  RuntimeOptions runtime;
  runtime.max_connections = 77;
  runtime.handshake_timeout = 11ms;
  runtime.request_timeout = 22ms;
  runtime.shutdown_timeout = 33ms;
  const vsock::MuxerLimits limits = muxer_limits(vm, runtime);
  EXPECT_EQ(limits.tx_buffer_size, 12345u);
  EXPECT_EQ(limits.max_connections, 77u);
  EXPECT_EQ(limits.handshake_timeout, 11ms);
  EXPECT_EQ(limits.request_timeout, 22ms);
  EXPECT_EQ(limits.shutdown_timeout, 33ms);
  EXPECT_EQ(limits.busy_poll.count(), 0) << "--poll-us is off by default";
  runtime.poll_us = 50;
  EXPECT_EQ(muxer_limits(vm, runtime).busy_poll.count(), 50);
  vm.poll_us = 0;  // the VM's own poll-us key wins
  EXPECT_EQ(muxer_limits(vm, runtime).busy_poll.count(), 0);
}

// Runs the daemon on `config` until the VMs `served` have both sockets bound,
// checks them with `while_serving`, then SIGTERMs it: exit 0, and no socket
// file of any VM is left.
void serve_then_sigterm(const DaemonConfig& config, const std::vector<size_t>& served,
                        const std::function<void()>& while_serving) {
  auto result = std::async(std::launch::async, [&] { return run_daemon(config); });
  const auto deadline = std::chrono::steady_clock::now() + 10s;
  auto all_bound = [&] {
    return std::all_of(served.begin(), served.end(), [&](size_t i) {
      return is_socket(config.vms[i].socket_path) && is_socket(config.vms[i].uds_path);
    });
  };
  while (!all_bound() && std::chrono::steady_clock::now() < deadline) std::this_thread::sleep_for(10ms);
  EXPECT_TRUE(all_bound());
  while_serving();

  ASSERT_EQ(::kill(::getpid(), SIGTERM), 0);
  ASSERT_EQ(result.wait_for(10s), std::future_status::ready);
  EXPECT_EQ(result.get(), kExitOk);
  for (const auto& vm : config.vms) {
    EXPECT_FALSE(exists(vm.socket_path)) << vm.socket_path;
    EXPECT_FALSE(exists(vm.uds_path)) << vm.uds_path;
  }
}

TEST(Daemon, ServesEveryVmUntilSigtermThenRemovesItsSockets) {
  block_sigterm();
  TempDir dir;
  DaemonConfig config;
  config.vms = {vm_in(dir, 3), vm_in(dir, 4)};
  serve_then_sigterm(config, {0, 1}, [&] {
    EXPECT_TRUE(can_connect(config.vms[0].uds_path));
    EXPECT_TRUE(can_connect(config.vms[1].socket_path));
  });
}

TEST(Daemon, AVmThatCannotBindIsLeftOutAndTheOthersServe) {
  block_sigterm();
  TempDir dir;
  DaemonConfig config;
  config.vms = {vm_in(dir, 3), vm_in(dir, 4), vm_in(dir, 5)};
  // Validation would catch this; the directory may still disappear between
  // validation and bind.
  config.vms[1].socket_path = dir.file("gone/vhost4.sock");
  serve_then_sigterm(config, {0, 2}, [&] {
    EXPECT_TRUE(can_connect(config.vms[0].uds_path));
    EXPECT_TRUE(can_connect(config.vms[2].socket_path));
    EXPECT_FALSE(exists(config.vms[1].uds_path)) << "the failed VM's uds-path is left bound";
  });
}

TEST(Daemon, NoVmThatCanBindExits) {
  block_sigterm();
  TempDir dir;
  DaemonConfig config;
  config.vms = {vm_in(dir, 3), vm_in(dir, 4)};
  config.vms[0].socket_path = dir.file("gone/vhost3.sock");
  config.vms[1].uds_path = dir.file("gone/vm4.vsock");
  EXPECT_EQ(run_daemon(config), kExitRuntimeError);
  EXPECT_FALSE(exists(config.vms[0].uds_path));
  EXPECT_FALSE(exists(config.vms[1].socket_path));
}

TEST(VmWorker, BindFailureNamesTheVmAndPath) {
  TempDir dir;
  VmConfig vm = vm_in(dir, 9);
  vm.uds_path = dir.file("gone/vm9.vsock");
  try {
    VmWorker worker(vm, RuntimeOptions{}, nullptr);
    FAIL() << "expected a bind failure";
  } catch (const std::runtime_error& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find("cid=9"), std::string::npos) << what;
    EXPECT_NE(what.find(vm.uds_path), std::string::npos) << what;
  }
  EXPECT_FALSE(exists(vm.socket_path));
}

}  // namespace
}  // namespace vhost_vsock::daemon
