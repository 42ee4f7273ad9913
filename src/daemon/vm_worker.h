// One VM: its event loop, muxer (uds-path side), vsock device glue and
// vhost-user server, served by one thread. Sockets are bound in the
// constructor, on the caller's thread, so startup errors surface before any
// thread runs; the thread only runs the loop. Nothing is shared between
// workers, so there are no locks.
#pragma once

#include <atomic>
#include <functional>
#include <future>
#include <memory>
#include <thread>

#include "base/event_loop.h"
#include "daemon/config.h"
#include "daemon/vsock_device.h"
#include "metrics/snapshot.h"
#include "vhost_user/server.h"
#include "vsock/muxer/muxer.h"

namespace vhost_vsock::daemon {

vsock::MuxerLimits muxer_limits(const VmConfig& vm, const RuntimeOptions& runtime);

class VmWorker {
 public:
  // Called on the worker thread if its loop dies with an exception.
  using FailureCallback = std::function<void()>;

  // Binds uds-path and the vhost-user socket. Throws std::runtime_error
  // naming the VM and the path on failure (nothing is left bound then).
  // `siblings` (may be null) routes packets between the daemon's VMs; it is
  // shared by every worker and outlives them.
  VmWorker(const VmConfig& vm, const RuntimeOptions& runtime, FailureCallback on_failure,
           std::shared_ptr<vsock::SiblingHub> siblings = nullptr);
  // Stops and joins the thread if needed, then tears down in dependency
  // order: server, device, muxer (which unlink their socket files).
  ~VmWorker();
  VmWorker(const VmWorker&) = delete;
  VmWorker& operator=(const VmWorker&) = delete;

  void start();
  void stop();  // any thread
  void join();
  [[nodiscard]] bool failed() const { return failed_.load(); }

  // Only while the thread is not running (before start() or after join()).
  void log_stats() const;

  [[nodiscard]] const VmConfig& config() const { return vm_; }
  // The SOCK_SEQPACKET host listener's path, empty if it is not open.
  [[nodiscard]] std::string seqpacket_uds_path() const;

  // Any thread: asks the worker's loop for a snapshot of its counters and
  // connections, delivered through `reply` on the worker thread. False when
  // the mailbox is full or the loop is stopping (then `reply` is dropped).
  bool request_snapshot(std::shared_ptr<std::promise<metrics::VmSnapshot>> reply);

 private:
  void run();
  [[nodiscard]] metrics::VmSnapshot snapshot() const;  // worker thread (or while it is not running)

  VmConfig vm_;
  FailureCallback on_failure_;
  base::EventLoop loop_;
  std::unique_ptr<vsock::Muxer> muxer_;
  std::unique_ptr<VsockDevice> device_;
  std::unique_ptr<vhost_user::Server> server_;
  std::thread thread_;
  std::atomic<bool> failed_{false};
};

}  // namespace vhost_vsock::daemon
