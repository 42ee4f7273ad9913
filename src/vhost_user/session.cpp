#include "vhost_user/session.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <spdlog/spdlog.h>
#include <sys/epoll.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <system_error>

#include "base/bits.h"
#include "base/errno_text.h"
#include "virtio/features.h"

namespace vhost_vsock::vhost_user {
namespace {

constexpr uint64_t kRingFeatures = virtio::kFeatureVersion1 | virtio::kFeatureEventIdx | virtio::kFeatureIndirectDesc |
                                   virtio::kFeatureNotifyOnEmpty | virtio::kFeatureRingPacked;

// Eventfds come from the front-end; make sure neither a read nor a write can
// block the loop even if it handed us a pipe.
bool set_nonblocking(int fd) {
  int flags = ::fcntl(fd, F_GETFL);
  if (flags < 0) return false;
  if ((flags & O_NONBLOCK) != 0) return true;
  return ::fcntl(fd, F_SETFL, flags | O_NONBLOCK) == 0;
}

// Touching a mapping past the end of its file raises SIGBUS, which would kill
// the whole daemon: refuse such regions up front. (Files other than regular
// ones, e.g. device memory, have no meaningful size and are left to mmap.)
bool region_fits_file(int fd, const MemoryRegionDescription& region) {
  struct stat info {};
  if (::fstat(fd, &info) != 0) return false;
  if (!S_ISREG(info.st_mode)) return true;
  uint64_t end = region.mmap_offset + region.size;
  return end >= region.mmap_offset && end <= static_cast<uint64_t>(info.st_size);
}

// Which requests must come without fds, and what carrying some costs: the
// front-end waits for the reply of a query, so a bad one ends the session.
// The rest check their fds themselves (memory table, vring fds) or are
// refused anyway.
enum class FdRule { kAny, kNoneElseFail, kNoneElseFatal };
FdRule fd_rule(Request request) {
  switch (request) {
    case Request::kGetFeatures:
    case Request::kGetVringBase:
    case Request::kGetProtocolFeatures:
    case Request::kGetQueueNum:
    case Request::kGetConfig:
      return FdRule::kNoneElseFatal;
    case Request::kSetFeatures:
    case Request::kSetOwner:
    case Request::kResetOwner:
    case Request::kSetVringNum:
    case Request::kSetVringAddr:
    case Request::kSetVringBase:
    case Request::kSetProtocolFeatures:
    case Request::kSetVringEnable:
      return FdRule::kNoneElseFail;
    default:
      return FdRule::kAny;
  }
}

}  // namespace

Session::Session(base::EventLoop& loop, Device& device, ServerStats& stats, std::string name)
    : loop_(loop),
      device_(device),
      stats_(stats),
      name_(std::move(name)),
      offered_features_(device.device_features() | kRingFeatures | kFeatureProtocolFeatures),
      vrings_(std::min<uint16_t>(device.queue_count(), kMaxVrings)) {}

Session::~Session() {
  shutdown();
}

Session::Outcome Session::handle(Message message, std::vector<uint8_t>& reply) {
  const MessageHeader header = message.header;
  spdlog::debug("vhost-user {}: {} (request {}) flags {:#x} size {} fds {}", name_, request_name(header.request),
                header.request, header.flags, header.size, message.fds.size());
  size_t reply_size_before = reply.size();
  Result result = shut_down_ ? Result::kFatal : dispatch(message, reply);
  // `message` (and any fd the handler did not keep) is released on return.
  if (result == Result::kFatal) {
    ++stats_.protocol_errors;
    protocol_warning("vhost-user {}: dropping the front-end after a bad {} (request {})", name_,
                     request_name(header.request), header.request);
    return Outcome::kDisconnect;
  }
  if (result == Result::kFailed) ++stats_.protocol_errors;
  bool replied = reply.size() != reply_size_before;
  if (!replied && header.need_reply() && (acked_protocol_features_ & kProtocolFeatureReplyAck) != 0) {
    append_reply_u64(reply, header.request, result == Result::kOk ? 0 : 1);
  }
  return Outcome::kContinue;
}

Session::Result Session::dispatch(Message& message, std::vector<uint8_t>& reply) {
  const uint32_t request = message.header.request;
  const FdRule rule = fd_rule(static_cast<Request>(request));
  if (rule != FdRule::kAny && !message.fds.empty()) {
    protocol_warning("vhost-user {}: {} carries {} unexpected file descriptors", name_, request_name(request),
                     message.fds.size());
    return rule == FdRule::kNoneElseFatal ? Result::kFatal : Result::kFailed;
  }
  auto answer = [&](uint64_t value) {
    append_reply_u64(reply, request, value);
    return Result::kOk;
  };
  switch (static_cast<Request>(request)) {
    case Request::kGetFeatures:
      return answer(offered_features_);
    case Request::kSetFeatures:
      return handle_set_features(message);
    case Request::kSetOwner:
      owner_set_ = true;
      return Result::kOk;
    case Request::kResetOwner:
      reset_owner();
      return Result::kOk;
    case Request::kSetMemTable:
      return handle_set_mem_table(message);
    case Request::kSetVringNum:
      return handle_set_vring_num(message);
    case Request::kSetVringAddr:
      return handle_set_vring_addr(message);
    case Request::kSetVringBase:
      return handle_set_vring_base(message);
    case Request::kGetVringBase:
      return handle_get_vring_base(message, reply);
    case Request::kSetVringKick:
    case Request::kSetVringCall:
    case Request::kSetVringErr:
      return handle_vring_fd(message);
    case Request::kGetProtocolFeatures:
      return answer(kOfferedProtocolFeatures);
    case Request::kSetProtocolFeatures:
      return handle_set_protocol_features(message);
    case Request::kGetQueueNum:
      return answer(vrings_.size());
    case Request::kSetVringEnable:
      return handle_set_vring_enable(message);
    case Request::kGetConfig:
      return handle_get_config(message, reply);
    case Request::kSetLogBase:
    case Request::kSetLogFd:
    case Request::kSetConfig:
    case Request::kGetMaxMemSlots:
      break;
  }
  return refuse(message);
}

Session::Result Session::refuse(const Message& message) {
  const uint32_t request = message.header.request;
  switch (static_cast<Request>(request)) {
    case Request::kSetLogBase:
    case Request::kSetLogFd:
      // We offer neither VHOST_F_LOG_ALL nor LOG_SHMFD (vsock is not migratable).
      protocol_warning("vhost-user {}: {} is not supported (dirty logging was not offered)", name_,
                       request_name(request));
      return Result::kFailed;
    case Request::kSetConfig:
      protocol_warning("vhost-user {}: SET_CONFIG refused: the device config space is read-only", name_);
      return Result::kFailed;
    default:  // incl. GET_MAX_MEM_SLOTS: only valid with CONFIGURE_MEM_SLOTS, which we do not offer
      protocol_warning("vhost-user {}: unsupported request {} ({}) with {} payload bytes", name_, request,
                       request_name(request), message.payload.size());
      return Result::kFailed;
  }
}

Session::Result Session::handle_set_features(const Message& message) {
  auto features = decode_u64(message.payload);
  if (!features) {
    protocol_warning("vhost-user {}: SET_FEATURES payload is {} bytes, expected 8", name_, message.payload.size());
    return Result::kFailed;
  }
  if ((*features & ~offered_features_) != 0) {
    refuse_features(*features);
    return Result::kFailed;
  }
  features_refused_ = false;
  if (((acked_features_ ^ *features) & virtio::kFeatureRingPacked) != 0) {
    // The ring layout changes: the device must let go of the old queues, and
    // a base saved in the old layout means nothing in the new one.
    for (uint16_t i = 0; i < ring_count(); ++i) {
      stop(i);
      vrings_[i].base.reset();
      vrings_[i].fresh = true;
    }
  }
  acked_features_ = *features;
  spdlog::info("vhost-user {}: features negotiated {:#x} (offered {:#x}), {} rings", name_, acked_features_,
               offered_features_, (acked_features_ & virtio::kFeatureRingPacked) != 0 ? "packed" : "split");
  for (auto& ring : vrings_) ring.queues.set_features(acked_features_);
  device_.on_features_negotiated(acked_features_);
  // Acking VHOST_USER_F_PROTOCOL_FEATURES changes whether rings start enabled.
  for (uint16_t i = 0; i < ring_count(); ++i) reconcile(i);
  return Result::kOk;
}

void Session::refuse_features(uint64_t features) {
  // The front-end will drive the rings with features we do not implement:
  // running them anyway would corrupt them, so they stay stopped until a
  // SET_FEATURES we can honour.
  features_refused_ = true;
  for (uint16_t i = 0; i < ring_count(); ++i) stop(i);
  protocol_warning(
      "vhost-user {}: SET_FEATURES {:#x} acks bits {:#x} that were not offered ({:#x}); the rings stay stopped", name_,
      features, features & ~offered_features_, offered_features_);
}

Session::Result Session::handle_set_protocol_features(const Message& message) {
  auto features = decode_u64(message.payload);
  if (!features) {
    protocol_warning("vhost-user {}: SET_PROTOCOL_FEATURES payload is {} bytes, expected 8", name_,
                     message.payload.size());
    return Result::kFailed;
  }
  if ((*features & ~kOfferedProtocolFeatures) != 0) {
    protocol_warning("vhost-user {}: SET_PROTOCOL_FEATURES {:#x} acks bits {:#x} that were not offered", name_,
                     *features, *features & ~kOfferedProtocolFeatures);
    return Result::kFailed;
  }
  acked_protocol_features_ = *features;
  spdlog::info("vhost-user {}: protocol features negotiated {:#x}", name_, acked_protocol_features_);
  return Result::kOk;
}

Session::Result Session::handle_set_mem_table(Message& message) {
  std::string error;
  auto regions = decode_memory_table(message.payload, &error);
  if (!regions) {
    protocol_warning("vhost-user {}: SET_MEM_TABLE rejected: {}", name_, error);
    return Result::kFailed;
  }
  if (message.fds.size() != regions->size()) {
    protocol_warning("vhost-user {}: SET_MEM_TABLE has {} regions but {} file descriptors", name_, regions->size(),
                     message.fds.size());
    return Result::kFailed;
  }
  std::vector<memory::RegionSpec> specs(regions->size());
  for (size_t i = 0; i < regions->size(); ++i) {
    const auto& region = (*regions)[i];
    if (!region_fits_file(message.fds[i].get(), region)) {
      protocol_warning(
          "vhost-user {}: SET_MEM_TABLE rejected: region {} (mmap offset {:#x} size {:#x}) extends past "
          "the end of its file",
          name_, i, region.mmap_offset, region.size);
      return Result::kFailed;
    }
    spdlog::debug("vhost-user {}: region {}: gpa {:#x} size {:#x} user {:#x} mmap offset {:#x}", name_, i,
                  region.guest_phys_addr, region.size, region.user_addr, region.mmap_offset);
    specs[i].guest_phys_addr = region.guest_phys_addr;
    specs[i].size = region.size;
    specs[i].user_addr = region.user_addr;
    specs[i].mmap_offset = region.mmap_offset;
    specs[i].fd = std::move(message.fds[i]);
  }
  auto mapped = memory::GuestMemory::map(std::move(specs), &error);
  if (!mapped) {
    protocol_warning("vhost-user {}: SET_MEM_TABLE rejected: {}", name_, error);
    return Result::kFailed;
  }
  // Running rings point into the old map: stop them, swap, restart on the new
  // one (QEMU sends a new table on memory hotplug while the guest runs).
  for (uint16_t i = 0; i < ring_count(); ++i) stop(i);
  memory_ = std::move(mapped);
  spdlog::info("vhost-user {}: memory table with {} regions mapped", name_, memory_->region_count());
  for (uint16_t i = 0; i < ring_count(); ++i) reconcile(i);
  return Result::kOk;
}

std::optional<uint16_t> Session::ring_index(uint64_t index, const Message& message) {
  if (index < vrings_.size()) return static_cast<uint16_t>(index);
  protocol_warning("vhost-user {}: {} names ring {}, but the device has {}", name_,
                   request_name(message.header.request), index, vrings_.size());
  return std::nullopt;
}

std::optional<Session::RingState> Session::ring_state(const Message& message) {
  auto state = decode_vring_state(message.payload);
  if (!state) return std::nullopt;
  auto index = ring_index(state->index, message);
  if (!index) return std::nullopt;
  return RingState{*index, state->num};
}

Session::Result Session::handle_set_vring_num(const Message& message) {
  auto state = ring_state(message);
  if (!state) return Result::kFailed;
  uint32_t max_size = std::min<uint32_t>(device_.max_queue_size(), virtio::kMaxQueueSize);
  if (!base::is_power_of_two(state->num) || state->num > max_size) {
    protocol_warning("vhost-user {}: SET_VRING_NUM {} for ring {} is not a power of two in 1..{}", name_, state->num,
                     state->index, max_size);
    return Result::kFailed;
  }
  Vring& ring = vrings_[state->index];
  stop(state->index);
  if (ring.size != state->num) ring.fresh = true;
  ring.size = static_cast<uint16_t>(state->num);
  reconcile(state->index);
  return Result::kOk;
}

Session::Result Session::handle_set_vring_addr(const Message& message) {
  auto address = decode_vring_address(message.payload);
  if (!address) {
    protocol_warning("vhost-user {}: SET_VRING_ADDR payload is {} bytes, expected {}", name_, message.payload.size(),
                     kVringAddressSize);
    return Result::kFailed;
  }
  auto index = ring_index(address->index, message);
  if (!index) return Result::kFailed;
  Vring& ring = vrings_[*index];
  // Check now when we can, so the front-end learns of a bad address from the
  // ack; otherwise (no table or size yet) the check happens at start.
  if (memory_ && ring.size != 0) {
    const RingQueues::Spans spans = RingQueues::spans(ring.size, acked_features_);
    if (!memory_->user_to_guest(address->desc_user_addr, spans.desc) ||
        !memory_->user_to_guest(address->avail_user_addr, spans.avail) ||
        !memory_->user_to_guest(address->used_user_addr, spans.used)) {
      protocol_warning(
          "vhost-user {}: SET_VRING_ADDR ring {} (desc {:#x} avail {:#x} used {:#x}, size {}) is outside "
          "the memory table",
          name_, *index, address->desc_user_addr, address->avail_user_addr, address->used_user_addr, ring.size);
      return Result::kFailed;
    }
  }
  stop(*index);
  ring.address = *address;
  ring.has_address = true;
  reconcile(*index);
  return Result::kOk;
}

Session::Result Session::handle_set_vring_base(const Message& message) {
  auto state = ring_state(message);
  if (!state) return Result::kFailed;
  if (const char* why = RingQueues::check_base(state->num, vrings_[state->index].size, acked_features_)) {
    protocol_warning("vhost-user {}: SET_VRING_BASE {:#x} for ring {} {}", name_, state->num, state->index, why);
    return Result::kFailed;
  }
  Vring& ring = vrings_[state->index];
  stop(state->index);
  ring.base = state->num;
  ring.fresh = true;
  reconcile(state->index);
  return Result::kOk;
}

Session::Result Session::handle_get_vring_base(const Message& message, std::vector<uint8_t>& reply) {
  // The front-end blocks on the reply, so a request we cannot answer ends the session.
  auto state = ring_state(message);
  if (!state) return Result::kFatal;
  Vring& ring = vrings_[state->index];
  stop(state->index);
  // The ring stays stopped until the front-end sets a kick fd again.
  ring.kick.reset();
  ring.fresh = true;
  append_reply_vring_state(reply, message.header.request,
                           VringState{state->index, ring.base.value_or(RingQueues::initial_base(acked_features_))});
  return Result::kOk;
}

Session::Result Session::handle_vring_fd(Message& message) {
  const auto request = static_cast<Request>(message.header.request);
  auto value = decode_u64(message.payload);
  if (!value) return Result::kFailed;
  if ((*value & ~(kVringIndexMask | kVringNoFdFlag)) != 0) {
    protocol_warning("vhost-user {}: {} payload {:#x} has reserved bits set", name_,
                     request_name(message.header.request), *value);
    return Result::kFailed;
  }
  auto index = ring_index(*value & kVringIndexMask, message);
  if (!index) return Result::kFailed;
  bool no_fd = (*value & kVringNoFdFlag) != 0;
  size_t expected_fds = no_fd ? 0 : 1;
  if (message.fds.size() != expected_fds) {
    protocol_warning("vhost-user {}: {} for ring {} carries {} file descriptors, expected {}", name_,
                     request_name(message.header.request), *index, message.fds.size(), expected_fds);
    return Result::kFailed;
  }
  base::UniqueFd fd;
  if (!no_fd) {
    fd = std::move(message.fds[0]);
    if (!set_nonblocking(fd.get())) {
      protocol_warning("vhost-user {}: {} for ring {}: cannot make the fd non-blocking", name_,
                       request_name(message.header.request), *index);
      return Result::kFailed;
    }
  }
  Vring& ring = vrings_[*index];
  switch (request) {
    case Request::kSetVringKick:
      stop(*index);
      ring.kick = std::move(fd);
      if (no_fd) {
        // Polling mode: a ring we would have to spin on. Nobody uses it with vsock.
        protocol_warning(
            "vhost-user {}: SET_VRING_KICK without an fd (polling) is not supported; ring {} stays stopped", name_,
            *index);
        return Result::kFailed;
      }
      reconcile(*index);
      return Result::kOk;
    case Request::kSetVringCall:
      // Kept by the queue whether or not the ring runs; a running device
      // notifies through the new fd from its next pass on.
      ring.queues.set_call_fd(std::move(fd));
      return Result::kOk;
    default:
      ring.err = std::move(fd);
      return Result::kOk;
  }
}

Session::Result Session::handle_set_vring_enable(const Message& message) {
  auto state = ring_state(message);
  if (!state) return Result::kFailed;
  if (state->num > 1) {
    protocol_warning("vhost-user {}: SET_VRING_ENABLE {} for ring {} is neither 0 nor 1", name_, state->num,
                     state->index);
    return Result::kFailed;
  }
  vrings_[state->index].enabled = state->num == 1;
  reconcile(state->index);
  return Result::kOk;
}

Session::Result Session::handle_get_config(const Message& message, std::vector<uint8_t>& reply) {
  std::string error;
  auto access = decode_config_access(message.payload, &error);
  if (!access) {
    protocol_warning("vhost-user {}: GET_CONFIG rejected: {}", name_, error);
    append_reply_config(reply, ConfigAccess{}, {});
    return Result::kFailed;
  }
  std::vector<uint8_t> config = device_.config_space();
  if (access->size == 0 || uint64_t{access->offset} + access->size > config.size()) {
    protocol_warning("vhost-user {}: GET_CONFIG offset {} size {} is outside the {}-byte config space", name_,
                     access->offset, access->size, config.size());
    append_reply_config(reply, *access, {});
    return Result::kFailed;
  }
  append_reply_config(reply, *access, std::span<const uint8_t>(config).subspan(access->offset, access->size));
  return Result::kOk;
}

void Session::reset_owner() {
  spdlog::info("vhost-user {}: RESET_OWNER: stopping all rings and forgetting guest state", name_);
  for (uint16_t i = 0; i < ring_count(); ++i) stop(i);
  device_.on_frontend_disconnected();
  log_queue_stats();
  for (auto& ring : vrings_) forget_ring(ring);
  memory_.reset();
  acked_features_ = 0;
  acked_protocol_features_ = 0;
  features_refused_ = false;
  owner_set_ = false;
}

void Session::shutdown() {
  if (shut_down_) return;
  shut_down_ = true;
  for (uint16_t i = 0; i < ring_count(); ++i) stop(i);
  device_.on_frontend_disconnected();
  log_queue_stats();
  for (auto& ring : vrings_) forget_ring(ring);
  memory_.reset();
}

void Session::log_queue_stats() const {
  for (uint16_t i = 0; i < ring_count(); ++i) {
    if (vrings_[i].size == 0) continue;  // never set up by this front-end
    const virtio::QueueStats& s = vrings_[i].queues.queue().stats();
    spdlog::info(
        "vhost-user {}: ring {} queue stats: chains_popped={} descriptors_walked={} invalid_chains={} "
        "notifications sent={} suppressed={} without_fd={} call_fd_errors={}",
        name_, i, s.chains_popped, s.descriptors_walked, s.invalid_chains, s.notifications_sent,
        s.notifications_suppressed, s.notifications_without_fd, s.call_fd_errors);
  }
}

void Session::forget_ring(Vring& ring) {
  ring.queues.reset();
  ring.queues.set_call_fd(base::UniqueFd());
  ring.kick.reset();
  ring.err.reset();
  ring.size = 0;
  ring.has_address = false;
  ring.address = VringAddress{};
  ring.base.reset();
  ring.stopped_at.reset();
  ring.fresh = true;
  ring.enabled = false;
}

bool Session::should_run(const Vring& ring) const {
  // Without VHOST_USER_F_PROTOCOL_FEATURES a ring is enabled as soon as it exists.
  bool enabled = ring.enabled || !protocol_features_negotiated();
  return !shut_down_ && !features_refused_ && enabled && memory_ && ring.size != 0 && ring.has_address &&
         ring.kick.valid();
}

void Session::reconcile(uint16_t index) {
  if (should_run(vrings_[index])) {
    start(index);
  } else {
    stop(index);
  }
}

void Session::start(uint16_t index) {
  Vring& ring = vrings_[index];
  if (ring.started) return;
  const RingQueues::Spans spans = RingQueues::spans(ring.size, acked_features_);
  auto desc = memory_->user_to_guest(ring.address.desc_user_addr, spans.desc);
  auto avail = memory_->user_to_guest(ring.address.avail_user_addr, spans.avail);
  auto used = memory_->user_to_guest(ring.address.used_user_addr, spans.used);
  if (!desc || !avail || !used) {
    ++stats_.protocol_errors;
    protocol_warning(
        "vhost-user {}: ring {} not started: its addresses (desc {:#x} avail {:#x} used {:#x}, size {}) are "
        "outside the memory table",
        name_, index, ring.address.desc_user_addr, ring.address.avail_user_addr, ring.address.used_user_addr,
        ring.size);
    signal_error(index);
    return;
  }
  if (ring.fresh) ring.queues.reset();
  ring.queues.set_log_name(fmt::format("{} ring {}", name_, index));  // the device may rename it
  ring.queues.set_features(acked_features_);
  std::string error;
  if (!ring.queues.configure(memory_, ring.size, *desc, *avail, *used, &error)) {
    ++stats_.protocol_errors;
    protocol_warning("vhost-user {}: ring {} not started: {}", name_, index, error);
    signal_error(index);
    return;
  }
  if (ring.fresh) {
    ring.queues.set_base(ring.base.value_or(RingQueues::initial_base(acked_features_)));
    ring.fresh = false;
  }
  try {
    // Edge-triggered and never read: each write to the eventfd is a new edge,
    // so reading the counter back would only cost a syscall per kick (the
    // kernel's vhost does not read it either).
    loop_.add(ring.kick.get(), EPOLLIN | EPOLLET, [this, index](uint32_t events) { on_kick(index, events); });
  } catch (const std::system_error& e) {
    ++stats_.protocol_errors;
    protocol_warning("vhost-user {}: ring {} not started: cannot watch its kick fd: {}", name_, index, e.what());
    ring.kick.reset();
    signal_error(index);
    return;
  }
  ring.started = true;
  const RingStart how = resumes_where_it_stopped(ring) ? RingStart::kResumed : RingStart::kFresh;
  ring.stopped_at.reset();
  spdlog::info("vhost-user {}: ring {} {} ({}, size {}, base {:#x})", name_, index,
               how == RingStart::kResumed ? "resumed" : "started", ring.queues.packed() ? "packed" : "split", ring.size,
               ring.queues.base());
  device_.on_queue_started(index, ring.queues.queue(), how);
  // Buffers made available before the kick fd was watched would otherwise wait for the next kick.
  device_.on_queue_kicked(index);
}

bool Session::resumes_where_it_stopped(const Vring& ring) const {
  if (!ring.stopped_at) return false;
  const Vring::StopPoint& at = *ring.stopped_at;
  const VringAddress& now = ring.address;
  return at.size == ring.size && at.features == acked_features_ && ring.base == at.base &&
         at.address.desc_user_addr == now.desc_user_addr && at.address.avail_user_addr == now.avail_user_addr &&
         at.address.used_user_addr == now.used_user_addr && at.address.flags == now.flags;
}

void Session::stop(uint16_t index) {
  Vring& ring = vrings_[index];
  if (!ring.started) return;
  device_.on_queue_stopped(index);
  loop_.remove(ring.kick.get());
  ring.started = false;
  ring.base = ring.queues.base();
  ring.stopped_at = Vring::StopPoint{ring.address, ring.size, *ring.base, acked_features_};
  spdlog::info("vhost-user {}: ring {} stopped (base {:#x})", name_, index, *ring.base);
}

void Session::on_kick(uint16_t index, uint32_t events) {
  Vring& ring = vrings_[index];
  if (!ring.started) return;
  if ((events & (EPOLLERR | EPOLLHUP)) == 0) {
    device_.on_queue_kicked(index);
    return;
  }
  // Not an eventfd (a pipe or socket whose writer went away): it can never
  // kick again.
  ++stats_.protocol_errors;
  protocol_warning("vhost-user {}: kick fd of ring {} failed ({}); stopping the ring", name_, index,
                   (events & EPOLLERR) != 0 ? "error" : "hung up");
  stop(index);
  ring.kick.reset();
  signal_error(index);
}

void Session::signal_error(uint16_t index) {
  if (!vrings_[index].err) return;
  uint64_t one = 1;
  [[maybe_unused]] ssize_t n = ::write(vrings_[index].err.get(), &one, sizeof(one));
}

}  // namespace vhost_vsock::vhost_user
