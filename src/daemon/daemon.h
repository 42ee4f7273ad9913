// The daemon's life: bind every VM's sockets, start one worker per VM, wait
// for SIGINT/SIGTERM (or a worker failure), then stop, join and clean up.
#pragma once

#include "daemon/config.h"

namespace vhost_vsock::daemon {

// Blocks SIGINT/SIGTERM in the calling thread (workers inherit the mask) and
// ignores SIGPIPE. Returns kExitOk after a signal, kExitRuntimeError when a
// VM cannot start or a worker dies. Logging must be set up already.
int run_daemon(const DaemonConfig& config);

}  // namespace vhost_vsock::daemon
