#include "daemon/vm_worker.h"

#include <fmt/format.h>
#include <pthread.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <stdexcept>
#include <string_view>

#include "virtio/queue.h"

namespace vhost_vsock::daemon {
namespace {

// Names the VM and the path, without repeating the path if the cause already does.
std::string startup_error(uint64_t cid, std::string_view role, const std::string& path, std::string_view cause) {
  if (cause.find(path) != std::string_view::npos) return fmt::format("vm cid={}: {}", cid, cause);
  return fmt::format("vm cid={}: cannot listen on {} {}: {}", cid, role, path, cause);
}

}  // namespace

vsock::MuxerLimits muxer_limits(const VmConfig& vm, const RuntimeOptions& runtime) {
  vsock::MuxerLimits limits;
  limits.tx_buffer_size = vm.tx_buffer_size;
  limits.tx_memory_limit = vm.tx_memory_limit;
  limits.connect_wait = std::chrono::milliseconds(vm.connect_wait_ms);
  limits.max_connections = runtime.max_connections;
  limits.handshake_timeout = runtime.handshake_timeout;
  limits.request_timeout = runtime.request_timeout;
  limits.shutdown_timeout = runtime.shutdown_timeout;
  limits.busy_poll = std::chrono::microseconds(vm.poll_us.value_or(runtime.poll_us));
  return limits;
}

VmWorker::VmWorker(const VmConfig& vm, const RuntimeOptions& runtime, FailureCallback on_failure,
                   std::shared_ptr<vsock::SiblingHub> siblings)
    : vm_(vm), on_failure_(std::move(on_failure)) {
  try {
    vsock::MuxerOptions options{vm_.guest_cid, vm_.uds_path, muxer_limits(vm_, runtime), std::move(siblings), {}};
    if (vm_.forward_cid) options.forward = vsock::VsockForwarding{*vm_.forward_cid, vm_.forward_listen, {}, {}};
    muxer_ = std::make_unique<vsock::Muxer>(loop_, std::move(options));
  } catch (const std::exception& e) {
    if (vm_.forward_cid) throw std::runtime_error(fmt::format("vm cid={}: {}", vm_.guest_cid, e.what()));
    throw std::runtime_error(startup_error(vm_.guest_cid, "uds-path", vm_.uds_path, e.what()));
  }
  const auto max_queue_size = static_cast<uint16_t>(std::min<uint32_t>(vm_.queue_size, virtio::kMaxQueueSize));
  device_ = std::make_unique<VsockDevice>(*muxer_, vm_.guest_cid, max_queue_size);
  try {
    server_ = std::make_unique<vhost_user::Server>(loop_, vm_.socket_path, *device_);
  } catch (const std::exception& e) {
    device_.reset();
    muxer_.reset();  // unlinks uds-path again
    throw std::runtime_error(startup_error(vm_.guest_cid, "vhost-user socket", vm_.socket_path, e.what()));
  }
  if (const uint32_t poll_us = vm_.poll_us.value_or(runtime.poll_us); poll_us > 0) {
    spdlog::info(
        "vm cid={} busy polling on (poll-us {}): after work the worker watches its virtqueues for up to {} us, "
        "guest kicks suppressed, before it sleeps",
        vm_.guest_cid, poll_us, poll_us);
  }
}

VmWorker::~VmWorker() {
  stop();
  join();
  // The server owns the rings the muxer may still point at: detach first.
  if (device_) device_->detach_all_queues();
  server_.reset();
  device_.reset();
  muxer_.reset();
}

void VmWorker::start() {
  thread_ = std::thread([this] { run(); });
}

void VmWorker::stop() {
  loop_.stop();
}

void VmWorker::join() {
  if (thread_.joinable()) thread_.join();
}

void VmWorker::run() {
  // Thread names are capped at 15 characters: "vsock-cid-<n>" fits CIDs below 10^6, else truncated.
  const std::string name = fmt::format("vsock-cid-{}", vm_.guest_cid).substr(0, 15);
  ::pthread_setname_np(::pthread_self(), name.c_str());
  try {
    loop_.run();
  } catch (const std::exception& e) {
    spdlog::critical("vm cid={} worker stopped by an unexpected error: {}", vm_.guest_cid, e.what());
    failed_ = true;
    if (on_failure_) on_failure_();
  }
}

std::string VmWorker::seqpacket_uds_path() const {
  return muxer_ ? muxer_->seqpacket_uds_path() : std::string();
}

bool VmWorker::request_snapshot(std::shared_ptr<std::promise<metrics::VmSnapshot>> reply) {
  return loop_.post([this, reply = std::move(reply)]() mutable {
    try {
      reply->set_value(snapshot());
    } catch (const std::exception& e) {  // out of memory: the scrape reports this VM as not answering
      spdlog::warn("vm cid={} metrics snapshot failed: {}", vm_.guest_cid, e.what());
    }
  });
}

metrics::VmSnapshot VmWorker::snapshot() const {
  metrics::VmSnapshot out;
  out.cid = vm_.guest_cid;
  out.answered = true;
  out.muxer = muxer_->stats();
  out.server = server_->stats();
  for (const uint16_t index : {VsockDevice::kRxQueue, VsockDevice::kTxQueue}) {
    const auto counts = device_->queue_notifications(index);
    out.queues[index] = {counts.kicks, counts.calls};
  }
  muxer_->list_connections(&out.connections);
  return out;
}

void VmWorker::log_stats() const {
  const vsock::MuxerStats m = muxer_->stats();
  spdlog::info(
      "vm cid={} muxer stats: connections opened={} active={} host_connects_refused={} handshake_failures={} "
      "connect_wait_retries={} packets from_guest={} to_guest={} bytes from_guest={} to_guest={} dropped "
      "bad_address={} malformed={} "
      "resets_sent={} credit_violations={} protocol_violations={} rx_chains_too_small={} orphan_rsts_dropped={} "
      "rx_passes={} seqpacket_messages_refused={} sibling connections={} packets out={} in={} refused={} "
      "tx_stalls={} resets_peer_gone={}",
      vm_.guest_cid, m.connections_opened, m.connections_active, m.host_connects_refused, m.handshake_failures,
      m.connect_wait_retries, m.packets_from_guest, m.packets_to_guest, m.bytes_from_guest, m.bytes_to_guest,
      m.dropped_bad_address, m.dropped_malformed, m.resets_sent, m.credit_violations, m.protocol_violations,
      m.rx_chains_too_small, m.orphan_rsts_dropped, m.rx_passes, m.messages_refused, m.sibling_connections_opened,
      m.sibling_packets_out, m.sibling_packets_in, m.sibling_refused, m.sibling_tx_stalls, m.sibling_resets_peer_gone);
  const vhost_user::ServerStats& s = server_->stats();
  spdlog::info(
      "vm cid={} vhost-user stats: frontends_accepted={} frontend_disconnects={} protocol_errors={} "
      "messages={}",
      vm_.guest_cid, s.frontends_accepted, s.frontend_disconnects, s.protocol_errors, s.messages);
}

}  // namespace vhost_vsock::daemon
