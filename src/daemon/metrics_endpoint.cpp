#include "daemon/metrics_endpoint.h"

#include <spdlog/spdlog.h>

#include <future>

#include "daemon/cli.h"
#include "daemon/served_vms.h"

namespace vhost_vsock::daemon {

std::vector<metrics::VmSnapshot> collect_snapshots(const std::vector<std::unique_ptr<VmWorker>>& workers,
                                                   std::chrono::milliseconds timeout) {
  std::vector<std::future<metrics::VmSnapshot>> replies;
  replies.reserve(workers.size());
  for (const auto& worker : workers) {
    auto reply = std::make_shared<std::promise<metrics::VmSnapshot>>();
    replies.push_back(reply->get_future());
    // A refused post drops `reply`: its future reports a broken promise below.
    (void)worker->request_snapshot(std::move(reply));
  }
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  std::vector<metrics::VmSnapshot> snapshots(workers.size());
  for (size_t i = 0; i < workers.size(); ++i) {
    snapshots[i].cid = workers[i]->config().guest_cid;
    if (replies[i].wait_until(deadline) != std::future_status::ready) continue;
    try {
      snapshots[i] = replies[i].get();
    } catch (const std::future_error&) {
      // the worker's mailbox was full or it is stopping: reported as not answering
    }
  }
  return snapshots;
}

std::unique_ptr<metrics::HttpServer> make_metrics_endpoint(const MetricsOptions& options, ServedVms& vms) {
  if (!options.address) return nullptr;
  auto server = std::make_unique<metrics::HttpServer>(*options.address, version_string(),
                                                      [&vms] { return vms.snapshots(kSnapshotTimeout); });
  spdlog::info("metrics: serving /metrics and /connections on http://{}", options.address->to_string());
  return server;
}

}  // namespace vhost_vsock::daemon
