#include "daemon/served_vms.h"

#include <fmt/ranges.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <exception>

#include "daemon/daemon.h"
#include "daemon/metrics_endpoint.h"

namespace vhost_vsock::daemon {

void log_vm_ready(const VmConfig& vm) {
  if (vm.forward_cid) {
    spdlog::info("vm cid={} ready: vhost-user socket={} forward-cid={} forward-listen={}", vm.guest_cid, vm.socket_path,
                 *vm.forward_cid, fmt::join(vm.forward_listen, "+"));
    return;
  }
  spdlog::info("vm cid={} ready: vhost-user socket={} uds-path={}", vm.guest_cid, vm.socket_path, vm.uds_path);
}

ServedVms::ServedVms(RuntimeOptions runtime, uint64_t open_file_limit, VmWorker::FailureCallback on_failure)
    : runtime_(runtime), open_file_limit_(open_file_limit), on_failure_(std::move(on_failure)) {}

ServedVms::~ServedVms() {
  const std::lock_guard lock(mutex_);
  workers_.clear();
}

std::unique_ptr<VmWorker> ServedVms::bind(const VmConfig& vm, size_t vm_count) const {
  RuntimeOptions runtime = runtime_;
  if (open_file_limit_ != 0) {
    runtime.max_connections = connection_cap_for_open_files(open_file_limit_, vm_count, runtime.max_connections);
  }
  try {
    return std::make_unique<VmWorker>(vm, runtime, on_failure_, siblings_);
  } catch (const std::exception& e) {
    spdlog::error("{}; vm cid={} is not served, the other VMs are", e.what(), vm.guest_cid);
    return nullptr;
  }
}

void ServedVms::bind_all(const std::vector<VmConfig>& vms) {
  const std::lock_guard lock(mutex_);
  // Sibling routing between the VMs that share a group, fixed at start: a VM
  // that does not bind stays in it unreachable (its siblings get an RST); a
  // reload that restarts a VM of the same CID takes its place again, with the
  // groups of the start; a VM a reload adds under a new CID is outside it.
  std::vector<vsock::SiblingVm> sibling_vms;
  for (const VmConfig& vm : vms) {
    RuntimeOptions runtime = runtime_;
    if (open_file_limit_ != 0) {
      runtime.max_connections = connection_cap_for_open_files(open_file_limit_, vms.size(), runtime.max_connections);
    }
    sibling_vms.push_back({vm.guest_cid, vm.groups, runtime.max_connections});
  }
  siblings_ = vsock::make_sibling_hub(sibling_vms);
  for (const VmConfig& vm : vms) {
    if (auto worker = bind(vm, vms.size())) workers_.push_back(std::move(worker));
  }
  if (!workers_.empty() && workers_.size() < vms.size()) {
    spdlog::warn("serving {} of {} VMs", workers_.size(), vms.size());
  }
}

void ServedVms::start_all() {
  for (auto& worker : workers_) worker->start();
}

void ServedVms::remove(uint64_t cid) {
  auto it = std::find_if(workers_.begin(), workers_.end(),
                         [cid](const auto& worker) { return worker->config().guest_cid == cid; });
  if (it == workers_.end()) return;  // it could not bind at startup or at the last reload
  (*it)->stop();
  (*it)->join();
  if ((*it)->failed()) spdlog::error("vm cid={} worker failed", cid);
  (*it)->log_stats();
  workers_.erase(it);  // the destructor closes the connections and removes the socket files
}

void ServedVms::apply(const VmSetChange& change) {
  const std::lock_guard lock(mutex_);
  // Stop first: an added VM may take over a removed VM's socket paths.
  for (const VmConfig& vm : change.removed) remove(vm.guest_cid);
  for (const auto& changed : change.changed) remove(changed.before.guest_cid);
  const size_t vm_count = workers_.size() + change.added.size() + change.changed.size();
  std::vector<const VmConfig*> to_start;
  for (const VmConfig& vm : change.added) to_start.push_back(&vm);
  for (const auto& changed : change.changed) to_start.push_back(&changed.after);
  for (const VmConfig* vm : to_start) {
    auto worker = bind(*vm, vm_count);
    if (!worker) continue;
    worker->start();
    log_vm_ready(worker->config());
    workers_.push_back(std::move(worker));
  }
}

void ServedVms::stop_all() {
  for (auto& worker : workers_) worker->stop();
  for (auto& worker : workers_) worker->join();
  for (const auto& worker : workers_) {
    if (worker->failed()) spdlog::error("vm cid={} worker failed", worker->config().guest_cid);
    worker->log_stats();
  }
  const std::lock_guard lock(mutex_);
  workers_.clear();
}

std::vector<metrics::VmSnapshot> ServedVms::snapshots(std::chrono::milliseconds timeout) {
  const std::lock_guard lock(mutex_);
  return collect_snapshots(workers_, timeout);
}

std::vector<VmConfig> ServedVms::configs() const {
  std::vector<VmConfig> out;
  out.reserve(workers_.size());
  for (const auto& worker : workers_) out.push_back(worker->config());
  return out;
}

}  // namespace vhost_vsock::daemon
