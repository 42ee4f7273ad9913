// The daemon's life: bind every VM's sockets, start one worker per VM, wait
// for SIGINT/SIGTERM (or a worker failure), then stop, join and clean up.
#pragma once

#include "daemon/config.h"

namespace vhost_vsock::daemon {

// Blocks SIGINT/SIGTERM in the calling thread (workers inherit the mask) and
// ignores SIGPIPE. Returns kExitOk after a signal, kExitRuntimeError when a
// VM cannot start or a worker dies. Logging must be set up already.
int run_daemon(const DaemonConfig& config);

// Per-VM connection cap that fits `vm_count` VMs into `open_file_limit`
// descriptors with an equal share each, so that one VM flooding connections
// cannot take the descriptors the others need. Never above `requested`,
// never below 1.
uint32_t connection_cap_for_open_files(uint64_t open_file_limit, size_t vm_count, uint32_t requested);

}  // namespace vhost_vsock::daemon
