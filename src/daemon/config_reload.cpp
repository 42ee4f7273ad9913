#include "daemon/config_reload.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <map>
#include <optional>

namespace vhost_vsock::daemon {

std::vector<std::string> changed_vm_keys(const VmConfig& before, const VmConfig& after) {
  std::vector<std::string> keys;
  auto check = [&keys](bool differs, const char* key) {
    if (differs) keys.emplace_back(key);
  };
  check(before.guest_cid != after.guest_cid, "guest_cid");
  check(before.socket_path != after.socket_path, "socket");
  check(before.uds_path != after.uds_path, "uds_path");
  check(before.tx_buffer_size != after.tx_buffer_size, "tx_buffer_size");
  check(before.queue_size != after.queue_size, "queue_size");
  check(before.connect_wait_ms != after.connect_wait_ms, "connect_wait");
  check(before.groups != after.groups, "groups");
  check(before.forward_cid != after.forward_cid, "forward_cid");
  check(before.forward_listen != after.forward_listen, "forward_listen");
  check(before.poll_us != after.poll_us, "poll_us");
  // A field added to VmConfig without a name above still counts as a change.
  VmConfig same_place = after;
  same_place.source = before.source;
  same_place.index = before.index;
  if (keys.empty() && !(same_place == before)) keys.emplace_back("(other settings)");
  return keys;
}

VmSetChange diff_vm_sets(const std::vector<VmConfig>& running, const std::vector<VmConfig>& next) {
  VmSetChange change;
  std::map<uint64_t, const VmConfig*> next_by_cid;
  for (const VmConfig& vm : next) next_by_cid.emplace(vm.guest_cid, &vm);
  std::map<uint64_t, const VmConfig*> running_by_cid;
  for (const VmConfig& vm : running) running_by_cid.emplace(vm.guest_cid, &vm);

  for (const VmConfig& vm : running) {
    auto it = next_by_cid.find(vm.guest_cid);
    if (it == next_by_cid.end()) {
      change.removed.push_back(vm);
      continue;
    }
    std::vector<std::string> keys = changed_vm_keys(vm, *it->second);
    if (keys.empty()) {
      change.unchanged.push_back(vm.guest_cid);
    } else {
      change.changed.push_back({vm, *it->second, std::move(keys)});
    }
  }
  for (const VmConfig& vm : next) {
    if (running_by_cid.count(vm.guest_cid) == 0) change.added.push_back(vm);
  }
  return change;
}

namespace {

void compare_metrics_key(const DaemonConfig& running, const std::optional<std::string>& yaml_metrics,
                         std::vector<std::string>* warnings) {
  if (running.metrics.set_by_flag) return;  // --metrics wins over the file, as at startup
  const std::string before = running.metrics.address ? running.metrics.address->to_string() : std::string("off");
  std::string after = "off";
  if (yaml_metrics) {
    metrics::ListenAddress address;
    ConfigErrors ignored;
    after = parse_metrics_address(*yaml_metrics, running.metrics.allow_remote, "metrics", &address, &ignored)
                ? address.to_string()
                : *yaml_metrics;
  }
  if (before == after) return;
  warnings->push_back(fmt::format(
      "the metrics endpoint cannot change without a restart: it stays {} (the file now says {})", before, after));
}

}  // namespace

bool reload_config_file(const DaemonConfig& running, DaemonConfig* next, ConfigErrors* errors,
                        std::vector<std::string>* warnings) {
  DaemonConfig candidate = running;
  candidate.vms.clear();
  std::optional<std::string> yaml_metrics;
  if (!load_yaml_config_file(running.config_file, &candidate.vms, errors, &yaml_metrics)) return false;
  validate_config(candidate, errors);
  // The running filter was built without AF_VSOCK: a forwarding VM would die of SIGSYS.
  if (running.sandbox.seccomp != SeccompMode::kOff && !running.sandbox.vsock_forwarding &&
      uses_vsock_forwarding(candidate.vms)) {
    errors->push_back({"forward_cid",
                       "needs a restart: this daemon's seccomp filter was installed without vsock "
                       "forwarding, so it does not allow AF_VSOCK sockets"});
  }
  if (!errors->empty()) return false;
  compare_metrics_key(running, yaml_metrics, warnings);
  *next = std::move(candidate);
  return true;
}

std::vector<std::string> describe_vm_set_change(const VmSetChange& change) {
  std::vector<std::string> lines;
  for (const VmConfig& vm : change.added) {
    const std::string backend =
        vm.forward_cid ? fmt::format("forward-cid={}", *vm.forward_cid) : fmt::format("uds-path={}", vm.uds_path);
    lines.push_back(fmt::format("vm cid={} added: vhost-user socket={} {}", vm.guest_cid, vm.socket_path, backend));
  }
  for (const VmConfig& vm : change.removed) {
    lines.push_back(fmt::format("vm cid={} removed: its connections are closed and its sockets removed", vm.guest_cid));
  }
  for (const auto& changed : change.changed) {
    lines.push_back(fmt::format(
        "vm cid={} changed ({}): restarting it, its front-end and connections are closed and must reconnect",
        changed.after.guest_cid, fmt::join(changed.keys, ", ")));
  }
  return lines;
}

}  // namespace vhost_vsock::daemon
