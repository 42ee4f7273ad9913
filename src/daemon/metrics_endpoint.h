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

// Binds the endpoint when --metrics is set (nullptr otherwise). `workers`
// must outlive the server. Throws std::runtime_error if it cannot bind.
std::unique_ptr<metrics::HttpServer> make_metrics_endpoint(const MetricsOptions& options,
                                                           const std::vector<std::unique_ptr<VmWorker>>& workers);

}  // namespace vhost_vsock::daemon
