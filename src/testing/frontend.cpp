#include "testing/frontend.h"

#include <poll.h>
#include <spdlog/spdlog.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <stdexcept>
#include <thread>

#include "base/errno_text.h"
#include "base/unix_socket_address.h"
#include "testing/fd_passing.h"
#include "testing/vhost_user_payload.h"

namespace vhost_vsock::testing {

namespace {

using Clock = std::chrono::steady_clock;
namespace req = vhost_user_request;

[[noreturn]] void fail(const std::string& what) {
  throw std::runtime_error("vhost-user front-end: " + what);
}

template <typename T>
T get(std::span<const uint8_t> in, size_t offset) {
  T value{};
  std::memcpy(&value, in.data() + offset, sizeof(T));
  return value;
}

int remaining_ms(Clock::time_point deadline) {
  const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
  return left < 0 ? 0 : static_cast<int>(left);
}

}  // namespace

VhostUserFrontend::VhostUserFrontend(const std::string& socket_path, FrontendOptions options,
                                     std::chrono::milliseconds connect_timeout)
    : options_(options) {
  const sockaddr_un addr = base::unix_socket_address(socket_path);
  const auto deadline = Clock::now() + connect_timeout;
  for (;;) {
    base::UniqueFd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
    if (!fd) fail("socket: " + base::errno_text(errno));
    if (::connect(fd.get(), reinterpret_cast<const sockaddr*>(&addr), sizeof(addr)) == 0) {
      socket_ = std::move(fd);
      return;
    }
    const int err = errno;
    if ((err != ENOENT && err != ECONNREFUSED) || Clock::now() >= deadline) {
      fail("connect " + socket_path + ": " + base::errno_text(err));
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
}

bool VhostUserFrontend::send_message(uint32_t request, std::span<const uint8_t> payload, std::span<const int> fds,
                                     uint32_t flags) {
  if (!socket_) return false;
  uint8_t header[kVhostUserHeaderSize];
  const auto size = static_cast<uint32_t>(payload.size());
  std::memcpy(header, &request, 4);
  std::memcpy(header + 4, &flags, 4);
  std::memcpy(header + 8, &size, 4);
  iovec iov[2] = {{header, sizeof(header)}, {const_cast<uint8_t*>(payload.data()), payload.size()}};
  size_t total = sizeof(header) + payload.size();
  ssize_t sent = send_with_fds(socket_.get(), std::span<const iovec>(iov, payload.empty() ? 1 : 2), fds, MSG_NOSIGNAL);
  if (sent < 0) return false;
  // The socket is blocking, so a short write only happens for huge hostile
  // payloads; finish it without resending the fds.
  size_t done = static_cast<size_t>(sent);
  while (done < total) {
    const uint8_t* from = done < sizeof(header) ? header + done : payload.data() + (done - sizeof(header));
    const size_t len = done < sizeof(header) ? sizeof(header) - done : total - done;
    sent = ::send(socket_.get(), from, len, MSG_NOSIGNAL);
    if (sent <= 0) return false;
    done += static_cast<size_t>(sent);
  }
  return true;
}

std::optional<VhostUserReply> VhostUserFrontend::receive_reply(std::chrono::milliseconds timeout) {
  if (!socket_) return std::nullopt;
  const auto deadline = Clock::now() + timeout;
  auto read_exact = [&](uint8_t* out, size_t len) -> bool {
    size_t done = 0;
    while (done < len) {
      pollfd pfd{socket_.get(), POLLIN, 0};
      const int ready = ::poll(&pfd, 1, remaining_ms(deadline));
      if (ready < 0 && errno == EINTR) continue;
      if (ready <= 0) return false;
      iovec iov{out + done, len - done};
      alignas(cmsghdr) uint8_t control[CMSG_SPACE(sizeof(int) * 8)];
      msghdr msg{};
      msg.msg_iov = &iov;
      msg.msg_iovlen = 1;
      msg.msg_control = control;
      msg.msg_controllen = sizeof(control);
      const ssize_t got = ::recvmsg(socket_.get(), &msg, MSG_CMSG_CLOEXEC);
      if (got < 0 && errno == EINTR) continue;
      if (got <= 0) return false;
      // A backend has no business sending fds to the front-end on this socket.
      for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c != nullptr; c = CMSG_NXTHDR(&msg, c)) {
        if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS) {
          const size_t n = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
          for (size_t i = 0; i < n; ++i) {
            int fd;
            std::memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof(int));
            ::close(fd);
          }
        }
      }
      done += static_cast<size_t>(got);
    }
    return true;
  };
  uint8_t header[kVhostUserHeaderSize];
  if (!read_exact(header, sizeof(header))) return std::nullopt;
  VhostUserReply reply;
  uint32_t size = 0;
  std::memcpy(&reply.request, header, 4);
  std::memcpy(&reply.flags, header + 4, 4);
  std::memcpy(&size, header + 8, 4);
  if (size > kVhostUserMaxPayload) return std::nullopt;
  reply.payload.resize(size);
  if (size > 0 && !read_exact(reply.payload.data(), size)) return std::nullopt;
  return reply;
}

bool VhostUserFrontend::backend_closed() {
  if (!socket_) return true;
  pollfd pfd{socket_.get(), POLLIN | POLLRDHUP, 0};
  if (::poll(&pfd, 1, 0) <= 0) return false;
  if (pfd.revents & (POLLHUP | POLLRDHUP | POLLERR)) return true;
  char byte;
  return ::recv(socket_.get(), &byte, 1, MSG_PEEK | MSG_DONTWAIT) == 0;
}

VhostUserReply VhostUserFrontend::call(uint32_t request, std::span<const uint8_t> payload, size_t expected_size) {
  if (!send_message(request, payload)) fail("send request " + std::to_string(request) + " failed");
  auto reply = receive_reply(options_.reply_timeout);
  if (!reply) fail("no reply to request " + std::to_string(request));
  if (reply->request != request) {
    fail("reply to request " + std::to_string(request) + " names request " + std::to_string(reply->request));
  }
  if ((reply->flags & 0x3) != kVhostUserVersion || (reply->flags & kVhostUserFlagReply) == 0) {
    fail("reply to request " + std::to_string(request) + " has flags " + std::to_string(reply->flags));
  }
  if (reply->payload.size() != expected_size) {
    fail("reply to request " + std::to_string(request) + " has size " + std::to_string(reply->payload.size()) +
         ", expected " + std::to_string(expected_size));
  }
  return std::move(*reply);
}

uint64_t VhostUserFrontend::call_u64(uint32_t request) {
  return get<uint64_t>(call(request, {}, 8).payload, 0);
}

void VhostUserFrontend::send_no_reply(uint32_t request, std::span<const uint8_t> payload, std::span<const int> fds,
                                      bool want_ack) {
  const bool ack = want_ack && options_.ack_every_request && (acked_protocol_features_ & kProtocolFeatureReplyAck);
  const uint32_t flags = kVhostUserVersion | (ack ? kVhostUserFlagNeedReply : 0);
  if (!send_message(request, payload, fds, flags)) fail("send request " + std::to_string(request) + " failed");
  if (!ack) return;
  auto reply = receive_reply(options_.reply_timeout);
  if (!reply) fail("no ack for request " + std::to_string(request));
  if (reply->request != request || reply->payload.size() != 8 || (reply->flags & kVhostUserFlagReply) == 0) {
    fail("malformed ack for request " + std::to_string(request));
  }
  const auto status = get<uint64_t>(reply->payload, 0);
  if (status != 0)
    fail("backend refused request " + std::to_string(request) + " (status " + std::to_string(status) + ")");
}

uint64_t VhostUserFrontend::get_features() {
  return call_u64(req::kGetFeatures);
}

void VhostUserFrontend::set_features(uint64_t features) {
  send_no_reply(req::kSetFeatures, encode_u64(features));
  acked_features_ = features;
}

uint64_t VhostUserFrontend::get_protocol_features() {
  return call_u64(req::kGetProtocolFeatures);
}

void VhostUserFrontend::set_protocol_features(uint64_t features) {
  // REPLY_ACK only counts from the next message on.
  send_no_reply(req::kSetProtocolFeatures, encode_u64(features), {}, false);
  acked_protocol_features_ = features;
}

void VhostUserFrontend::set_owner() {
  send_no_reply(req::kSetOwner, {});
}

uint64_t VhostUserFrontend::get_queue_num() {
  return call_u64(req::kGetQueueNum);
}

std::vector<uint8_t> VhostUserFrontend::get_config(uint32_t offset, uint32_t size) {
  std::vector<uint8_t> payload;
  put<uint32_t>(payload, offset);
  put<uint32_t>(payload, size);
  put<uint32_t>(payload, 0);  // flags
  payload.resize(payload.size() + size, 0);
  auto reply = call(req::kGetConfig, payload, payload.size());
  if (get<uint32_t>(reply.payload, 0) != offset || get<uint32_t>(reply.payload, 4) != size) {
    fail("GET_CONFIG reply echoes a different offset/size");
  }
  return {reply.payload.begin() + 12, reply.payload.end()};
}

uint64_t VhostUserFrontend::read_guest_cid() {
  return get<uint64_t>(get_config(0, 8), 0);
}

void VhostUserFrontend::set_mem_table(GuestRam& ram) {
  std::vector<MemoryRegion> regions;
  const auto user_base = reinterpret_cast<uint64_t>(ram.data());
  // Split on a page boundary well past the rings (allocated first), so the
  // rings stay inside one region while data buffers may straddle both.
  const size_t split = (ram.size() / 2) & ~size_t{4095};
  if (options_.split_memory_regions && split > 0) {
    regions.push_back({ram.gpa_base(), split, user_base, 0});
    regions.push_back({ram.gpa_base() + split, ram.size() - split, user_base + split, split});
  } else {
    regions.push_back({ram.gpa_base(), ram.size(), user_base, 0});
  }
  std::vector<int> fds(regions.size(), ram.fd());
  send_no_reply(req::kSetMemTable, encode_mem_table(static_cast<uint32_t>(regions.size()), regions), fds);
}

void VhostUserFrontend::setup_vring(uint16_t index, GuestRam& ram, GuestRing& ring) {
  if (index > 1) fail("queue index out of range");
  send_no_reply(req::kSetVringNum, encode_vring_state(index, ring.size()));
  send_no_reply(req::kSetVringBase, encode_vring_state(index, ring.initial_vring_base()));
  // Front-end virtual addresses, as QEMU sends them (packed: the driver event
  // area in the avail field, the device event area in the used field).
  send_no_reply(req::kSetVringAddr, encode_vring_addr(index, reinterpret_cast<uint64_t>(ram.host(ring.desc_gpa())),
                                                      reinterpret_cast<uint64_t>(ram.host(ring.device_area_gpa())),
                                                      reinterpret_cast<uint64_t>(ram.host(ring.driver_area_gpa()))));

  kick_fds_[index].reset(::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC));
  call_fds_[index].reset(::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC));
  if (!kick_fds_[index] || !call_fds_[index]) fail("eventfd: " + base::errno_text(errno));
  const std::vector<uint8_t> which = encode_u64(index);
  const int kick = kick_fds_[index].get();
  const int call_fd_value = call_fds_[index].get();
  send_no_reply(req::kSetVringKick, which, std::span<const int>(&kick, 1));
  send_no_reply(req::kSetVringCall, which, std::span<const int>(&call_fd_value, 1));
}

void VhostUserFrontend::set_vring_enable(uint16_t index, bool enable) {
  send_no_reply(req::kSetVringEnable, encode_vring_state(index, enable ? 1 : 0));
}

uint32_t VhostUserFrontend::get_vring_base(uint16_t index) {
  auto reply = call(req::kGetVringBase, encode_vring_state(index, 0), 8);
  if (get<uint32_t>(reply.payload, 0) != index) fail("GET_VRING_BASE reply names another queue");
  return get<uint32_t>(reply.payload, 4);
}

uint64_t VhostUserFrontend::start(GuestRam& ram, GuestRing& rx, GuestRing& tx) {
  const uint64_t offered = get_features();
  if (!(offered & kVirtioFeatureVersion1)) fail("backend does not offer VIRTIO_F_VERSION_1");
  if (!(offered & kVhostUserFeatureProtocolFeatures)) fail("backend does not offer VHOST_USER_F_PROTOCOL_FEATURES");
  if (rx.event_idx() != options_.event_idx || tx.event_idx() != options_.event_idx) {
    fail("ring event_idx does not match FrontendOptions::event_idx");
  }
  if (rx.packed() != tx.packed()) fail("rx and tx rings have different layouts");
  if (rx.packed() && !(offered & kVirtioFeatureRingPacked)) fail("backend does not offer VIRTIO_F_RING_PACKED");
  if (options_.event_idx && !(offered & kVirtioFeatureEventIdx)) fail("backend does not offer EVENT_IDX");
  if (options_.indirect_desc && !(offered & kVirtioFeatureIndirectDesc)) fail("backend does not offer INDIRECT_DESC");

  const uint64_t protocol_offered = get_protocol_features();
  if (!(protocol_offered & kProtocolFeatureConfig)) fail("backend does not offer VHOST_USER_PROTOCOL_F_CONFIG");
  set_protocol_features(protocol_offered & (kProtocolFeatureMq | kProtocolFeatureReplyAck | kProtocolFeatureConfig));
  if (acked_protocol_features_ & kProtocolFeatureMq) {
    const uint64_t queues = get_queue_num();
    if (queues < 2) fail("backend serves " + std::to_string(queues) + " queues, need 2");
  }
  set_owner();
  const uint64_t guest_cid = read_guest_cid();

  uint64_t features = kVirtioFeatureVersion1 | kVhostUserFeatureProtocolFeatures | (offered & kVsockFeatureStream);
  if (options_.event_idx) features |= kVirtioFeatureEventIdx;
  if (options_.indirect_desc) features |= kVirtioFeatureIndirectDesc;
  if (rx.packed()) features |= kVirtioFeatureRingPacked;
  if (options_.seqpacket) features |= offered & kVsockFeatureSeqpacket;
  set_features(features);
  set_mem_table(ram);
  setup_vring(0, ram, rx);
  setup_vring(1, ram, tx);
  set_vring_enable(0, true);
  set_vring_enable(1, true);
  spdlog::debug("front-end: started, guest cid {}, features {:#x}", guest_cid, features);
  return guest_cid;
}

void VhostUserFrontend::kick(uint16_t index) {
  if (index > 1 || !kick_fds_[index]) return;
  const uint64_t one = 1;
  // EAGAIN means the counter is saturated: the backend has a kick pending anyway.
  [[maybe_unused]] const ssize_t n = ::write(kick_fds_[index].get(), &one, sizeof(one));
}

bool VhostUserFrontend::wait_call(uint16_t index, std::chrono::milliseconds timeout) {
  if (index > 1 || !call_fds_[index]) return false;
  pollfd pfd{call_fds_[index].get(), POLLIN, 0};
  if (::poll(&pfd, 1, static_cast<int>(timeout.count())) <= 0) return false;
  uint64_t count;
  return ::read(call_fds_[index].get(), &count, sizeof(count)) == sizeof(count);
}

int VhostUserFrontend::call_fd(uint16_t index) const {
  return index > 1 ? -1 : call_fds_[index].get();
}

void VhostUserFrontend::disconnect() {
  socket_.reset();
}

}  // namespace vhost_vsock::testing
