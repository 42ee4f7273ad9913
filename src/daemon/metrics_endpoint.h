// The daemon's side of --metrics: the HTTP server bound before the sandbox,
// and scrapes answered from snapshots the workers post back through their
// event loops (no lock or shared counter on the data path).
#pragma once

#include <chrono>
#include <memory>
#include <vector>

#include "daemon/config.h"
#include "daemon/vm_worker.h"
#include "metrics/http_server.h"

namespace vhost_vsock::daemon {

// How long a scrape waits for a busy worker before reporting it as not answering.
inline constexpr std::chrono::milliseconds kSnapshotTimeout{1000};

// One snapshot per worker, in worker order; a worker that does not answer
// within `timeout` gets {cid, answered=false}.
std::vector<metrics::VmSnapshot> collect_snapshots(const std::vector<std::unique_ptr<VmWorker>>& workers,
                                                   std::chrono::milliseconds timeout);

class ServedVms;

// Binds the endpoint when --metrics is set (nullptr otherwise). `vms` must
// outlive the server; each scrape reports the VMs served at that moment.
// Throws std::runtime_error if it cannot bind.
std::unique_ptr<metrics::HttpServer> make_metrics_endpoint(const MetricsOptions& options, ServedVms& vms);

}  // namespace vhost_vsock::daemon
