// The VM workers the daemon serves, as a set that a SIGHUP reload can change
// while the others keep running. Only the main thread changes the set; the
// metrics endpoint's threads read it under a mutex (never on the data path).
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "daemon/config.h"
#include "daemon/config_reload.h"
#include "daemon/vm_worker.h"
#include "metrics/snapshot.h"

namespace vhost_vsock::daemon {

class ServedVms {
 public:
  // `runtime` as asked for; `open_file_limit` (0: no limit) caps each VM's
  // connections to its share (see connection_cap_for_open_files).
  ServedVms(RuntimeOptions runtime, uint64_t open_file_limit, VmWorker::FailureCallback on_failure);
  ~ServedVms();
  ServedVms(const ServedVms&) = delete;
  ServedVms& operator=(const ServedVms&) = delete;

  // Startup: binds each VM's sockets; a VM that cannot bind is logged and
  // left out, the others are served. Main thread, before start_all().
  void bind_all(const std::vector<VmConfig>& vms);
  void start_all();

  // Reload: stops the removed and changed VMs (connections closed, socket
  // files removed), then binds and starts the added and changed ones. A VM
  // that cannot bind is logged and left out. Unchanged VMs are not touched.
  void apply(const VmSetChange& change);

  // Shutdown: stops and joins every worker, logs their stats, removes them.
  void stop_all();

  // Any thread: one snapshot per served VM (see collect_snapshots).
  std::vector<metrics::VmSnapshot> snapshots(std::chrono::milliseconds timeout);

  // Main thread only.
  [[nodiscard]] const std::vector<std::unique_ptr<VmWorker>>& workers() const { return workers_; }
  [[nodiscard]] std::vector<VmConfig> configs() const;
  [[nodiscard]] bool empty() const { return workers_.empty(); }
  [[nodiscard]] size_t size() const { return workers_.size(); }

 private:
  std::unique_ptr<VmWorker> bind(const VmConfig& vm, size_t vm_count) const;
  void remove(uint64_t cid);  // caller holds mutex_

  // Sibling routing among the VMs of the start (see bind_all).
  std::shared_ptr<vsock::SiblingHub> siblings_;

  RuntimeOptions runtime_;
  uint64_t open_file_limit_;
  VmWorker::FailureCallback on_failure_;
  std::mutex mutex_;  // guards workers_ against the metrics threads' reads
  std::vector<std::unique_ptr<VmWorker>> workers_;
};

// The "ready" log line scripts wait for.
void log_vm_ready(const VmConfig& vm);

}  // namespace vhost_vsock::daemon
