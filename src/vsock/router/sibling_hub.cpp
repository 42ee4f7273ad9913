#include "vsock/router/sibling_hub.h"

#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <system_error>

namespace vhost_vsock::vsock {
namespace {

bool share_a_group(const SiblingHub::Member& a, const SiblingHub::Member& b) {
  return std::any_of(a.groups.begin(), a.groups.end(), [&](const std::string& group) {
    return std::find(b.groups.begin(), b.groups.end(), group) != b.groups.end();
  });
}

}  // namespace

SiblingHub::SiblingHub(const std::vector<VmSpec>& vms) {
  for (const VmSpec& vm : vms) {
    auto member = std::make_unique<Member>();
    member->cid = vm.cid;
    member->groups = vm.groups;
    member->max_connections = vm.max_connections;
    member->wake_fd = base::UniqueFd(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
    if (!member->wake_fd) throw std::system_error(errno, std::generic_category(), "eventfd");
    members_.push_back(std::move(member));
  }
  for (auto& from : members_) {
    for (auto& to : members_) {
      if (from == to || from->cid == to->cid || !share_a_group(*from, *to)) continue;
      channels_.push_back(std::make_unique<Channel>(*from, *to));
      from->outbound[to->cid] = channels_.back().get();
      to->inbound.push_back(channels_.back().get());
    }
  }
}

SiblingHub::Member* SiblingHub::member(uint64_t cid) {
  for (auto& member : members_) {
    if (member->cid == cid) return member.get();
  }
  return nullptr;
}

bool SiblingHub::reserve_room(Channel& channel, size_t bytes) {
  auto fits = [&] {
    return channel.packets_in_flight.load(std::memory_order_acquire) < kChannelPackets &&
           channel.bytes_in_flight.load(std::memory_order_acquire) + bytes <= kChannelBytes;
  };
  if (fits()) return true;
  channel.sender_waiting.store(true, std::memory_order_seq_cst);
  // The receiver may have freed room between the check and the flag: look again.
  if (!fits()) return false;
  channel.sender_waiting.store(false, std::memory_order_relaxed);
  return true;
}

void SiblingHub::push(Channel& channel, SiblingPacket& packet) {
  channel.packets_in_flight.fetch_add(1, std::memory_order_relaxed);
  channel.bytes_in_flight.fetch_add(packet.header.len, std::memory_order_relaxed);
  auto* ring = channel.packets.load(std::memory_order_relaxed);  // only this thread stores it
  if (ring == nullptr) {
    channel.packets_storage = std::make_unique<base::BoundedMpscQueue<SiblingPacket>>(kChannelPackets);
    ring = channel.packets_storage.get();
    channel.packets.store(ring, std::memory_order_release);
  }
  // Cannot fail: packets_in_flight <= kChannelPackets == the ring's capacity.
  [[maybe_unused]] const bool pushed = ring->try_push(packet);
  wake(channel.to);
}

SiblingPacket* SiblingHub::peek(Channel& channel) {
  if (!channel.head.has_value()) {
    auto* ring = channel.packets.load(std::memory_order_acquire);
    if (ring == nullptr) return nullptr;  // the sender has never pushed
    std::optional<SiblingPacket> next = ring->try_pop();
    if (!next.has_value()) return nullptr;
    channel.head.emplace(std::move(*next));
    channel.head_offset = 0;
  }
  return &*channel.head;
}

void SiblingHub::release(Channel& channel) {
  if (!channel.head.has_value()) return;
  const size_t bytes = channel.head->header.len;
  channel.head.reset();
  channel.head_offset = 0;
  channel.bytes_in_flight.fetch_sub(bytes, std::memory_order_release);
  channel.packets_in_flight.fetch_sub(1, std::memory_order_seq_cst);
  if (channel.sender_waiting.exchange(false, std::memory_order_seq_cst)) wake(channel.from);
}

void SiblingHub::wake(Member& member) {
  if (member.wake_pending.exchange(true, std::memory_order_acq_rel)) return;
  const uint64_t one = 1;
  [[maybe_unused]] const ssize_t n = ::write(member.wake_fd.get(), &one, sizeof(one));
}

void SiblingHub::take_wake(Member& member) {
  uint64_t count = 0;
  [[maybe_unused]] const ssize_t n = ::read(member.wake_fd.get(), &count, sizeof(count));
  member.wake_pending.store(false, std::memory_order_release);
}

}  // namespace vhost_vsock::vsock
