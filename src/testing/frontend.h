// A vhost-user front-end (the role QEMU plays, docs/interop/vhost-user.rst):
// connects to a backend's socket, negotiates features, hands over guest
// memory and the rings of a GuestRam, and owns the kick/call eventfds.
// Setup failures throw std::runtime_error naming the request; the raw
// send_message()/receive_reply() pair is for hostile tests.
#pragma once

#include <chrono>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "base/unique_fd.h"
#include "testing/guest_ram.h"
#include "testing/guest_ring.h"

namespace vhost_vsock::testing {

namespace vhost_user_request {
inline constexpr uint32_t kGetFeatures = 1;
inline constexpr uint32_t kSetFeatures = 2;
inline constexpr uint32_t kSetOwner = 3;
inline constexpr uint32_t kResetOwner = 4;
inline constexpr uint32_t kSetMemTable = 5;
inline constexpr uint32_t kSetLogBase = 6;
inline constexpr uint32_t kSetLogFd = 7;
inline constexpr uint32_t kSetVringNum = 8;
inline constexpr uint32_t kSetVringAddr = 9;
inline constexpr uint32_t kSetVringBase = 10;
inline constexpr uint32_t kGetVringBase = 11;
inline constexpr uint32_t kSetVringKick = 12;
inline constexpr uint32_t kSetVringCall = 13;
inline constexpr uint32_t kSetVringErr = 14;
inline constexpr uint32_t kGetProtocolFeatures = 15;
inline constexpr uint32_t kSetProtocolFeatures = 16;
inline constexpr uint32_t kGetQueueNum = 17;
inline constexpr uint32_t kSetVringEnable = 18;
inline constexpr uint32_t kGetConfig = 24;
inline constexpr uint32_t kSetConfig = 25;
}  // namespace vhost_user_request

inline constexpr uint32_t kVhostUserVersion = 0x1;
inline constexpr uint32_t kVhostUserFlagReply = 0x4;
inline constexpr uint32_t kVhostUserFlagNeedReply = 0x8;
inline constexpr uint64_t kVhostUserFeatureProtocolFeatures = 1ULL << 30;
inline constexpr uint64_t kProtocolFeatureMq = 1ULL << 0;
inline constexpr uint64_t kProtocolFeatureReplyAck = 1ULL << 3;
inline constexpr uint64_t kProtocolFeatureConfig = 1ULL << 9;
inline constexpr uint64_t kVirtioFeatureIndirectDesc = 1ULL << 28;
inline constexpr uint64_t kVirtioFeatureEventIdx = 1ULL << 29;
inline constexpr uint64_t kVirtioFeatureVersion1 = 1ULL << 32;
inline constexpr uint64_t kVirtioFeatureRingPacked = 1ULL << 34;
inline constexpr uint64_t kVsockFeatureStream = 1ULL << 0;
inline constexpr uint64_t kVsockFeatureSeqpacket = 1ULL << 1;
// SET_VRING_KICK/CALL/ERR payload bit: no fd attached (polling mode).
inline constexpr uint64_t kVringNoFdFlag = 1ULL << 8;
inline constexpr size_t kVhostUserHeaderSize = 12;
inline constexpr size_t kVhostUserMaxPayload = 4096;  // more than any reply we expect

struct VhostUserReply {
  uint32_t request = 0;
  uint32_t flags = 0;
  std::vector<uint8_t> payload;
};

struct FrontendOptions {
  bool event_idx = true;
  bool indirect_desc = true;
  bool seqpacket = true;  // ack VIRTIO_VSOCK_F_SEQPACKET if offered
  // Describe the GuestRam as two regions (second at a non-zero mmap offset).
  bool split_memory_regions = false;
  // With REPLY_ACK negotiated, ask for an ack on every request that has no
  // reply of its own (QEMU does so only for a few), to check each one.
  bool ack_every_request = true;
  std::chrono::milliseconds reply_timeout{5000};
};

class VhostUserFrontend {
 public:
  // Connects (retrying until `connect_timeout` while the socket file is not
  // there yet or refuses). Throws std::runtime_error on failure.
  VhostUserFrontend(const std::string& socket_path, FrontendOptions options = {},
                    std::chrono::milliseconds connect_timeout = std::chrono::milliseconds(5000));
  ~VhostUserFrontend() = default;
  VhostUserFrontend(const VhostUserFrontend&) = delete;
  VhostUserFrontend& operator=(const VhostUserFrontend&) = delete;

  // Everything QEMU does before the guest driver runs: features, protocol
  // features, owner, queue count, config (guest_cid), memory table, then each
  // ring (rx = queue 0, tx = queue 1) configured, given eventfds and enabled.
  // Both rings must have the same layout; a packed one negotiates
  // VIRTIO_F_RING_PACKED. Returns the guest CID from the config space.
  uint64_t start(GuestRam& ram, GuestRing& rx, GuestRing& tx);

  // The individual steps.
  uint64_t get_features();
  void set_features(uint64_t features);
  uint64_t get_protocol_features();
  void set_protocol_features(uint64_t features);
  void set_owner();
  uint64_t get_queue_num();
  std::vector<uint8_t> get_config(uint32_t offset, uint32_t size);
  uint64_t read_guest_cid();
  void set_mem_table(GuestRam& ram);
  // SET_VRING_NUM, SET_VRING_BASE (the layout's fresh state), SET_VRING_ADDR
  // (the layout's three areas), kick and call eventfds.
  void setup_vring(uint16_t index, GuestRam& ram, GuestRing& ring);
  void set_vring_enable(uint16_t index, bool enable);
  // Stops a ring; returns the device's next avail index (packed: the whole
  // state, avail and used positions with their wrap counters).
  uint32_t get_vring_base(uint16_t index);

  // Guest-side notifications.
  void kick(uint16_t index);
  // Waits for the device's call on `index` (and clears it). False on timeout.
  bool wait_call(uint16_t index, std::chrono::milliseconds timeout);
  // Call eventfd for queue `index`, for the caller's own poll loop (-1 if unset).
  [[nodiscard]] int call_fd(uint16_t index) const;

  // Closes the socket: the backend sees the front-end go away.
  void disconnect();
  [[nodiscard]] bool connected() const { return socket_.valid(); }

  // Raw access. send_message() returns false if the socket write failed
  // (e.g. the backend closed it). `flags` is sent as-is (add kVhostUserVersion).
  bool send_message(uint32_t request, std::span<const uint8_t> payload, std::span<const int> fds = {},
                    uint32_t flags = kVhostUserVersion);
  // Next message from the backend; nullopt on timeout, EOF or a malformed header.
  std::optional<VhostUserReply> receive_reply(std::chrono::milliseconds timeout);
  // True once the backend has closed its end (checked without blocking).
  bool backend_closed();

  [[nodiscard]] uint64_t acked_features() const { return acked_features_; }
  [[nodiscard]] uint64_t acked_protocol_features() const { return acked_protocol_features_; }
  [[nodiscard]] int socket_fd() const { return socket_.get(); }

 private:
  // Sends a request that has no reply of its own, asking for (and checking) an
  // ack when REPLY_ACK is on and `want_ack`.
  void send_no_reply(uint32_t request, std::span<const uint8_t> payload, std::span<const int> fds = {},
                     bool want_ack = true);
  VhostUserReply call(uint32_t request, std::span<const uint8_t> payload, size_t expected_size);
  uint64_t call_u64(uint32_t request);

  FrontendOptions options_;
  base::UniqueFd socket_;
  base::UniqueFd kick_fds_[2];
  base::UniqueFd call_fds_[2];
  uint64_t acked_features_ = 0;
  uint64_t acked_protocol_features_ = 0;
};

}  // namespace vhost_vsock::testing
