// SIGHUP with --config: re-read the YAML into a new DaemonConfig (the
// command-line options stay as started) and work out which VMs to start,
// stop or restart. Pure apart from reading and validating the file, so the
// daemon can reject a bad file before it touches any running VM.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "daemon/config.h"

namespace vhost_vsock::daemon {

// VMs are matched by guest CID: a VM whose CID is new is added, one whose
// CID is gone is removed, and one whose settings differ is restarted.
struct VmSetChange {
  std::vector<VmConfig> added;
  std::vector<VmConfig> removed;
  struct Changed {
    VmConfig before;
    VmConfig after;
    std::vector<std::string> keys;  // the YAML keys that differ, e.g. "uds_path"
  };
  std::vector<Changed> changed;
  std::vector<uint64_t> unchanged;  // CIDs

  [[nodiscard]] bool empty() const { return added.empty() && removed.empty() && changed.empty(); }
};

// The YAML keys whose values differ between two VMs of the same CID (where
// the VM sits in the file does not count).
std::vector<std::string> changed_vm_keys(const VmConfig& before, const VmConfig& after);

VmSetChange diff_vm_sets(const std::vector<VmConfig>& running, const std::vector<VmConfig>& next);

// Reads `running.config_file` again and validates the result as at startup.
// Everything but the VM list is kept from `running`; a changed YAML `metrics`
// address is reported in `warnings` (the endpoint keeps its address until a
// restart). False with `errors` set when the new file must be rejected.
bool reload_config_file(const DaemonConfig& running, DaemonConfig* next, ConfigErrors* errors,
                        std::vector<std::string>* warnings);

// One line per added/removed/changed VM, for the log.
std::vector<std::string> describe_vm_set_change(const VmSetChange& change);

}  // namespace vhost_vsock::daemon
