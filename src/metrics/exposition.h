// The Prometheus text exposition (format 0.0.4) of every VM's snapshot, one
// `cid` label per series. The names are a public interface: dashboards and
// alerts use them, so they change only with the docs (docs/operations.md).
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "metrics/snapshot.h"

namespace vhost_vsock::metrics {

inline constexpr std::string_view kPrometheusContentType = "text/plain; version=0.0.4; charset=utf-8";

std::string prometheus_text(const std::vector<VmSnapshot>& vms, std::string_view version);

}  // namespace vhost_vsock::metrics
