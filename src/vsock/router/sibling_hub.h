// Sibling VMs of one daemon: which VMs may reach each other (a shared group),
// and the one-way channels that carry guest packets between their worker
// threads. Each ordered pair of VMs that share a group has its own channel:
// one producer (the sender's worker) and one consumer (the receiver's), a
// lock-free ring bounded in packets and in payload bytes. A sender checks for
// room before it takes a packet off its guest's TX ring; without room it
// leaves the packet there and is woken when the receiver frees some, so
// nothing is dropped and nothing grows without bound. Payloads are copied
// once out of the sender's guest memory into the packet, and once from there
// into the receiver's RX buffers (the two guests' memories are separate).
//
// The set of VMs is fixed at construction. Each VM's wake-up eventfd
// belongs to the hub, so a worker that stops (a reload) never closes a
// descriptor another worker may still write to; the VM's router watches it
// on its own loop while it lives, and a router for the same CID may take the
// VM's place later.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "base/bounded_mpsc_queue.h"
#include "base/unique_fd.h"
#include "vsock/packet/header.h"

namespace vhost_vsock::vsock {

// One guest packet on its way to a sibling, its payload copied out of the sender's memory.
struct SiblingPacket {
  PacketHeader header;
  std::unique_ptr<uint8_t[]> payload;  // header.len bytes (null when 0)
  uint64_t sender_epoch = 0;           // the sender's guest generation: stale after its reset
};

class SiblingHub {
 public:
  // Per channel: at most this many packets and payload bytes in flight. 256
  // KiB is a Linux guest's default socket buffer, enough to keep one stream
  // busy; a full channel stalls only its sender.
  static constexpr size_t kChannelPackets = 256;
  static constexpr size_t kChannelBytes = size_t{256} * 1024;

  struct VmSpec {
    uint64_t cid = 0;
    std::vector<std::string> groups;
    size_t max_connections = 0;  // the VM's connection cap (sibling connections count too)
  };

  struct Member;
  struct Channel {
    Channel(Member& from_, Member& to_) : from(from_), to(to_) {}
    Member& from;
    Member& to;
    // The ring (about 32 KiB) is allocated by the sender with its first
    // packet: N VMs in one group make N x (N - 1) channels, and most pairs
    // never talk. Published with release, so the receiver sees it built.
    std::atomic<base::BoundedMpscQueue<SiblingPacket>*> packets{nullptr};
    std::unique_ptr<base::BoundedMpscQueue<SiblingPacket>> packets_storage;  // set once, by the sender
    std::atomic<size_t> packets_in_flight{0};
    std::atomic<size_t> bytes_in_flight{0};
    std::atomic<bool> sender_waiting{false};  // the sender stopped its TX for room here
    // Sender thread only: the receiver's epoch as the sender last acted on it.
    uint64_t seen_receiver_epoch = 0;
    // Receiver thread only: the packet being written into the receiver's RX ring.
    std::optional<SiblingPacket> head;
    size_t head_offset = 0;  // payload bytes of `head` already written
  };

  struct Member {
    uint64_t cid = 0;
    std::vector<std::string> groups;
    size_t max_connections = 0;
    std::atomic<bool> reachable{false};  // a guest driver is up: packets for it are accepted
    std::atomic<bool> seqpacket{false};  // its driver acked VIRTIO_VSOCK_F_SEQPACKET
    std::atomic<uint64_t> epoch{0};      // bumped when its guest's connections are all gone
    std::atomic<size_t> connections{0};  // live connections, host and sibling (published for the cap)
    base::UniqueFd wake_fd;              // eventfd its router watches; written by any thread, closed with the hub
    std::atomic<bool> wake_pending{false};
    std::vector<Channel*> inbound;                    // channels into this VM
    std::unordered_map<uint64_t, Channel*> outbound;  // by receiver CID
  };

  explicit SiblingHub(const std::vector<VmSpec>& vms);
  SiblingHub(const SiblingHub&) = delete;
  SiblingHub& operator=(const SiblingHub&) = delete;

  // Null for a CID the hub does not know.
  [[nodiscard]] Member* member(uint64_t cid);

  // ---- sender thread ----
  // Whether `bytes` more of payload fit in the channel now. When not, the
  // sender is marked waiting and the receiver wakes it after freeing room.
  static bool reserve_room(Channel& channel, size_t bytes);
  // Only after reserve_room() said yes (the sender is the only producer).
  static void push(Channel& channel, SiblingPacket& packet);

  // ---- receiver thread ----
  // The next packet of `channel` (kept as its head until release()), or null.
  static SiblingPacket* peek(Channel& channel);
  // The head was delivered (or discarded): free its room, wake a waiting sender.
  static void release(Channel& channel);

  // Any thread: wake the member's worker (coalesced until it calls take_wake()).
  static void wake(Member& member);
  // The member's worker, on its eventfd: clears the wake so the next one writes again.
  static void take_wake(Member& member);

 private:
  std::vector<std::unique_ptr<Member>> members_;
  std::vector<std::unique_ptr<Channel>> channels_;
};

}  // namespace vhost_vsock::vsock
