// The vsock backend's keys (vhost-device-vsock's forward-cid / forward-listen):
// parsing and the checks that apply to every form.
#include <fmt/format.h>

#include <algorithm>
#include <limits>

#include "daemon/config.h"

namespace vhost_vsock::daemon {
namespace {

constexpr uint32_t kVsockAny = std::numeric_limits<uint32_t>::max();  // VMADDR_CID_ANY and VMADDR_PORT_ANY

}  // namespace

bool parse_forward_ports(std::string_view text, std::vector<uint32_t>* out, std::string* error) {
  std::vector<uint32_t> ports;
  size_t start = 0;
  while (true) {
    const size_t plus = text.find('+', start);
    const std::string_view item = text.substr(start, plus == std::string_view::npos ? text.npos : plus - start);
    uint64_t port = 0;
    std::string item_error;
    if (item.empty() || !parse_unsigned(item, kVsockAny - 1, &port, &item_error)) {
      *error = fmt::format("'{}' is not a list of ports joined by '+', e.g. 9001+9002 ({})", text,
                           item.empty() ? "empty port" : item_error);
      return false;
    }
    if (std::find(ports.begin(), ports.end(), port) != ports.end()) {
      *error = fmt::format("port {} is listed twice", port);
      return false;
    }
    ports.push_back(static_cast<uint32_t>(port));
    if (plus == std::string_view::npos) break;
    start = plus + 1;
  }
  *out = std::move(ports);
  return true;
}

void validate_forwarding(const VmConfig& vm, ConfigErrors* errors) {
  if (vm.forward_cid && !vm.uds_path.empty()) {
    errors->push_back({vm_field(vm, "forward_cid"),
                       fmt::format("cannot be combined with {}: a VM has one host backend, the Unix socket or vsock "
                                   "forwarding (as in vhost-device-vsock)",
                                   vm_field(vm, "uds_path"))});
  }
  if (!vm.forward_cid && !vm.forward_listen.empty()) {
    errors->push_back(
        {vm_field(vm, "forward_listen"), fmt::format("needs {} (the vsock backend)", vm_field(vm, "forward_cid"))});
  }
  if (vm.forward_cid && *vm.forward_cid == kVsockAny) {
    errors->push_back({vm_field(vm, "forward_cid"),
                       fmt::format("{} is VMADDR_CID_ANY, not a CID to connect to (the host is 2, this host's own "
                                   "loopback 1)",
                                   kVsockAny)});
  }
}

bool uses_vsock_forwarding(const std::vector<VmConfig>& vms) {
  return std::any_of(vms.begin(), vms.end(), [](const VmConfig& vm) { return vm.forward_cid.has_value(); });
}

}  // namespace vhost_vsock::daemon
