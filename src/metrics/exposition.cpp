#include "metrics/exposition.h"

#include <prometheus/metric_family.h>
#include <prometheus/text_serializer.h>

#include <string>
#include <utility>

namespace vhost_vsock::metrics {
namespace {

using prometheus::ClientMetric;
using prometheus::MetricFamily;
using prometheus::MetricType;
using Labels = std::vector<ClientMetric::Label>;

// Collects the families in a fixed order; series are appended per VM.
class Families {
 public:
  MetricFamily& family(const std::string& name, const std::string& help, MetricType type) {
    for (auto& existing : families_) {
      if (existing.name == name) return existing;
    }
    families_.push_back({name, help, type, {}});
    return families_.back();
  }

  void counter(const std::string& name, const std::string& help, Labels labels, uint64_t value) {
    ClientMetric metric;
    metric.label = std::move(labels);
    metric.counter.value = static_cast<double>(value);
    family(name, help, MetricType::Counter).metric.push_back(std::move(metric));
  }

  void gauge(const std::string& name, const std::string& help, Labels labels, double value) {
    ClientMetric metric;
    metric.label = std::move(labels);
    metric.gauge.value = value;
    family(name, help, MetricType::Gauge).metric.push_back(std::move(metric));
  }

  [[nodiscard]] const std::vector<MetricFamily>& all() const { return families_; }

 private:
  std::vector<MetricFamily> families_;
};

Labels with(const std::string& cid, const char* name = nullptr, const char* value = nullptr) {
  Labels labels{{"cid", cid}};
  if (name != nullptr) labels.push_back({name, value});
  return labels;
}

void add_traffic(Families& f, const std::string& cid, const vsock::MuxerStats& m) {
  const std::string conns = "vhost_user_vsock_connections_total";
  const char* conns_help = "Connections established, by who connected";
  f.counter(conns, conns_help, with(cid, "direction", "guest_to_host"), m.connections_from_guest);
  f.counter(conns, conns_help, with(cid, "direction", "host_to_guest"), m.connections_from_host);
  const std::string bytes = "vhost_user_vsock_bytes_total";
  const char* bytes_help = "Payload bytes moved";
  f.counter(bytes, bytes_help, with(cid, "direction", "guest_to_host"), m.bytes_from_guest);
  f.counter(bytes, bytes_help, with(cid, "direction", "host_to_guest"), m.bytes_to_guest);
  const std::string packets = "vhost_user_vsock_packets_total";
  const char* packets_help = "vsock packets (data and control) moved";
  f.counter(packets, packets_help, with(cid, "direction", "guest_to_host"), m.packets_from_guest);
  f.counter(packets, packets_help, with(cid, "direction", "host_to_guest"), m.packets_to_guest);
}

void add_siblings(Families& f, const std::string& cid, const vsock::MuxerStats& m) {
  f.gauge("vhost_user_vsock_sibling_connections_active", "Live connections to sibling VMs of this daemon", with(cid),
          static_cast<double>(m.sibling_connections_active));
  f.counter("vhost_user_vsock_sibling_connections_total", "Sibling connections established", with(cid),
            m.sibling_connections_opened);
  const std::string packets = "vhost_user_vsock_sibling_packets_total";
  const char* packets_help = "Packets relayed between this guest and sibling VMs";
  f.counter(packets, packets_help, with(cid, "direction", "guest_to_sibling"), m.sibling_packets_out);
  f.counter(packets, packets_help, with(cid, "direction", "sibling_to_guest"), m.sibling_packets_in);
  const std::string bytes = "vhost_user_vsock_sibling_bytes_total";
  const char* bytes_help = "Payload bytes relayed between this guest and sibling VMs";
  f.counter(bytes, bytes_help, with(cid, "direction", "guest_to_sibling"), m.sibling_bytes_out);
  f.counter(bytes, bytes_help, with(cid, "direction", "sibling_to_guest"), m.sibling_bytes_in);
  f.counter("vhost_user_vsock_sibling_refused_total",
            "Guest packets for another CID refused with an RST (unknown CID, no shared group, sibling down, cap)",
            with(cid), m.sibling_refused);
  f.counter("vhost_user_vsock_sibling_tx_stalls_total",
            "Times the guest's TX queue stopped because a sibling's inbound channel was full", with(cid),
            m.sibling_tx_stalls);
}

// --poll-us: stay 0 while busy polling is off.
void add_busy_poll(Families& f, const std::string& cid, const vsock::MuxerStats& m) {
  f.counter("vhost_user_vsock_busy_poll_windows_total",
            "Busy polling: windows begun (--poll-us; each after a pass that moved packets)", with(cid),
            m.busy_poll_windows);
  f.counter("vhost_user_vsock_busy_poll_finds_total",
            "Busy polling: queue passes started because it found guest buffers (no kick needed)", with(cid),
            m.busy_poll_finds);
}

void add_failures(Families& f, const std::string& cid, const vsock::MuxerStats& m) {
  const std::string resets = "vhost_user_vsock_resets_total";
  const char* resets_help = "Connections reset or refused, by reason";
  const std::pair<const char*, uint64_t> reasons[] = {
      {"refused", m.host_connects_refused},
      {"cap", m.resets_cap},
      {"timeout", m.resets_timeout},
      {"credit_violation", m.credit_violations},
      {"protocol", m.protocol_violations},
      {"peer_closed", m.resets_host_gone},
      {"driver_reset", m.resets_driver_gone},
      {"message_too_large", m.messages_refused},
      {"sibling_gone", m.sibling_resets_peer_gone},
  };
  for (const auto& [reason, value] : reasons) f.counter(resets, resets_help, with(cid, "reason", reason), value);
  f.counter("vhost_user_vsock_rst_packets_sent_total", "RST packets sent to the guest", with(cid), m.resets_sent);
  f.counter("vhost_user_vsock_handshake_failures_total",
            "Connection attempts that never established (bad CONNECT line, guest refusal, timeout, cap)", with(cid),
            m.handshake_failures);
  f.counter("vhost_user_vsock_credit_stalls_total", "Times host data began to wait for the guest's credit", with(cid),
            m.credit_stalls);
  f.counter("vhost_user_vsock_credit_requests_total",
            "CREDIT_REQUEST packets sent to the guest (seqpacket stalls, and stream stalls the guest left unanswered)",
            with(cid), m.credit_requests);
  f.counter("vhost_user_vsock_guest_writes_gathered_total",
            "Guest data packets written to the host socket in one call with an earlier packet of their connection",
            with(cid), m.guest_writes_gathered);
  const std::string dropped = "vhost_user_vsock_dropped_total";
  const char* dropped_help = "Guest packets dropped without a reply, by reason";
  f.counter(dropped, dropped_help, with(cid, "reason", "bad_address"), m.dropped_bad_address);
  f.counter(dropped, dropped_help, with(cid, "reason", "malformed"), m.dropped_malformed);
  f.counter(dropped, dropped_help, with(cid, "reason", "rst_overflow"), m.orphan_rsts_dropped);
  f.counter("vhost_user_vsock_rx_chains_too_small_total", "RX buffers returned unused (too small)", with(cid),
            m.rx_chains_too_small);
}

void add_queues(Families& f, const std::string& cid, const VmSnapshot& vm) {
  const std::string name = "vhost_user_vsock_queue_notifications_total";
  const char* help = "Virtqueue notifications: kicks from the driver, calls (interrupts) to it";
  static constexpr const char* kQueueNames[kQueueKinds] = {"rx", "tx", "event"};
  for (size_t q = 0; q < kQueueKinds; ++q) {
    for (const auto& [kind, value] : {std::pair{"kick", vm.queues[q].kicks}, std::pair{"call", vm.queues[q].calls}}) {
      Labels labels = with(cid, "queue", kQueueNames[q]);
      labels.push_back({"kind", kind});
      f.counter(name, help, std::move(labels), value);
    }
  }
}

void add_vm(Families& f, const VmSnapshot& vm) {
  const std::string cid = std::to_string(vm.cid);
  f.gauge("vhost_user_vsock_vm_up", "1 when the VM's worker answered this scrape", with(cid), vm.answered ? 1 : 0);
  if (!vm.answered) return;
  const vsock::MuxerStats& m = vm.muxer;
  f.gauge("vhost_user_vsock_connections_active", "Live connections", with(cid),
          static_cast<double>(m.connections_active));
  f.gauge("vhost_user_vsock_tx_memory_reserved_bytes",
          "Guest->host credit promised to the guest's connections (what they may need to hold)", with(cid),
          static_cast<double>(m.tx_memory_reserved));
  f.gauge("vhost_user_vsock_tx_memory_limit_bytes", "The VM's budget for that credit (--tx-memory-limit)", with(cid),
          static_cast<double>(m.tx_memory_limit));
  add_traffic(f, cid, m);
  add_failures(f, cid, m);
  add_siblings(f, cid, m);
  add_queues(f, cid, vm);
  add_busy_poll(f, cid, m);
  f.gauge("vhost_user_vsock_frontend_connected", "1 while a vhost-user front-end (QEMU) is connected", with(cid),
          vm.frontend_connected() ? 1 : 0);
  f.counter("vhost_user_vsock_frontends_accepted_total", "vhost-user front-end connections accepted", with(cid),
            vm.server.frontends_accepted);
  f.counter("vhost_user_vsock_vhost_user_messages_total", "vhost-user messages handled", with(cid), vm.server.messages);
  f.counter("vhost_user_vsock_vhost_user_protocol_errors_total", "Malformed or out-of-order vhost-user messages",
            with(cid), vm.server.protocol_errors);
}

}  // namespace

std::string prometheus_text(const std::vector<VmSnapshot>& vms, std::string_view version) {
  Families families;
  families.gauge("vhost_user_vsock_build_info", "Always 1; the version is in the label",
                 {{"version", std::string(version)}}, 1);
  for (const VmSnapshot& vm : vms) add_vm(families, vm);
  return prometheus::TextSerializer().Serialize(families.all());
}

}  // namespace vhost_vsock::metrics
