// vhost-user wire format (QEMU docs/interop/vhost-user.rst): request ids,
// flags, feature bits, framing of a byte stream into messages, and payload
// decoding/encoding. No I/O here, so it can be unit tested and fuzzed alone.
#pragma once

#include <array>
#include <bit>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "base/unique_fd.h"

namespace vhost_vsock::vhost_user {

// The protocol uses the machine's byte order; every supported host is little-endian.
static_assert(std::endian::native == std::endian::little, "vhost-user payloads are decoded as native little-endian");

enum class Request : uint32_t {
  kGetFeatures = 1,
  kSetFeatures = 2,
  kSetOwner = 3,
  kResetOwner = 4,
  kSetMemTable = 5,
  kSetLogBase = 6,
  kSetLogFd = 7,
  kSetVringNum = 8,
  kSetVringAddr = 9,
  kSetVringBase = 10,
  kGetVringBase = 11,
  kSetVringKick = 12,
  kSetVringCall = 13,
  kSetVringErr = 14,
  kGetProtocolFeatures = 15,
  kSetProtocolFeatures = 16,
  kGetQueueNum = 17,
  kSetVringEnable = 18,
  kGetConfig = 24,
  kSetConfig = 25,
  kGetMaxMemSlots = 36,
};

[[nodiscard]] std::string_view request_name(uint32_t request);

inline constexpr uint32_t kFlagVersionMask = 0x3;
inline constexpr uint32_t kFlagVersion = 0x1;
inline constexpr uint32_t kFlagReply = 0x4;
inline constexpr uint32_t kFlagNeedReply = 0x8;

// Virtio feature bit 30, reused by vhost-user to announce protocol features.
inline constexpr uint64_t kFeatureProtocolFeatures = 1ULL << 30;

inline constexpr uint64_t kProtocolFeatureMq = 1ULL << 0;
inline constexpr uint64_t kProtocolFeatureReplyAck = 1ULL << 3;
inline constexpr uint64_t kProtocolFeatureConfig = 1ULL << 9;

// SET_VRING_KICK/CALL/ERR u64 payload: ring index in bits 0-7, bit 8 = no fd.
inline constexpr uint64_t kVringIndexMask = 0xff;
inline constexpr uint64_t kVringNoFdFlag = 1ULL << 8;

inline constexpr size_t kHeaderSize = 12;
// Largest payload we accept. The biggest legitimate one is SET_CONFIG with a
// 256-byte config space (12 + 256); a full memory table is 8 + 8 * 32.
inline constexpr size_t kMaxPayloadSize = 4096;
// SCM_RIGHTS fds accepted per message (one per memory region at most).
inline constexpr size_t kMaxFdsPerMessage = 8;
// VHOST_MEMORY_BASELINE_NREGIONS: the most regions SET_MEM_TABLE may carry.
inline constexpr uint32_t kMaxMemoryRegions = 8;
inline constexpr size_t kMemoryRegionSize = 32;
inline constexpr size_t kConfigHeaderSize = 12;
// VHOST_USER_MAX_CONFIG_SIZE in QEMU.
inline constexpr uint32_t kMaxConfigSize = 256;

struct MessageHeader {
  uint32_t request = 0;
  uint32_t flags = 0;
  uint32_t size = 0;

  [[nodiscard]] bool need_reply() const { return (flags & kFlagNeedReply) != 0; }
};

struct Message {
  MessageHeader header;
  std::vector<uint8_t> payload;
  std::vector<base::UniqueFd> fds;
};

// Reassembles messages from a stream that may deliver them in pieces. The
// caller reads at most next_read_area().size() bytes at a time, so it never
// consumes bytes (or SCM_RIGHTS fds) of the following message.
class MessageAssembler {
 public:
  enum class Status { kNeedMore, kComplete, kError };

  // Where the next bytes go; never empty while no complete message is pending.
  [[nodiscard]] std::span<uint8_t> next_read_area();
  // Accounts for `count` bytes written into next_read_area(). On kError the
  // stream is out of sync and the connection must be dropped.
  Status commit(size_t count, std::string* error);
  // Attaches an fd received with the current message. False (fd closed) if
  // the message would carry more than kMaxFdsPerMessage.
  bool add_fd(base::UniqueFd fd, std::string* error);
  // After kComplete: hands out the message and starts the next one.
  Message take();
  // True while part of a message (or its fds) has been received.
  [[nodiscard]] bool mid_message() const { return filled_ > 0 || !fds_.empty(); }

 private:
  std::array<uint8_t, kHeaderSize> header_bytes_{};
  MessageHeader header_;
  std::vector<uint8_t> payload_;
  std::vector<base::UniqueFd> fds_;
  size_t filled_ = 0;  // bytes of header + payload received so far
  bool complete_ = false;
};

// Payload structures (all fields native-endian, packed as on the wire).
struct VringState {
  uint32_t index = 0;
  uint32_t num = 0;
};

struct VringAddress {
  uint32_t index = 0;
  uint32_t flags = 0;
  uint64_t desc_user_addr = 0;
  uint64_t used_user_addr = 0;
  uint64_t avail_user_addr = 0;
  uint64_t log_guest_addr = 0;
};
inline constexpr size_t kVringAddressSize = 40;

struct MemoryRegionDescription {
  uint64_t guest_phys_addr = 0;
  uint64_t size = 0;
  uint64_t user_addr = 0;
  uint64_t mmap_offset = 0;
};

struct ConfigAccess {
  uint32_t offset = 0;
  uint32_t size = 0;
  uint32_t flags = 0;
  std::span<const uint8_t> data;  // SET_CONFIG bytes (or the GET_CONFIG placeholder)
};

// Decoders return nullopt when the payload does not have the exact expected size.
[[nodiscard]] std::optional<uint64_t> decode_u64(std::span<const uint8_t> payload);
[[nodiscard]] std::optional<VringState> decode_vring_state(std::span<const uint8_t> payload);
[[nodiscard]] std::optional<VringAddress> decode_vring_address(std::span<const uint8_t> payload);
// Also rejects 0 or more than kMaxMemoryRegions regions.
[[nodiscard]] std::optional<std::vector<MemoryRegionDescription>> decode_memory_table(std::span<const uint8_t> payload,
                                                                                      std::string* error);
// Requires size == kConfigHeaderSize + config.size and config.size <= kMaxConfigSize.
[[nodiscard]] std::optional<ConfigAccess> decode_config_access(std::span<const uint8_t> payload, std::string* error);

// Reply serialisation: header with flags VERSION|REPLY (QEMU insists on
// exactly that value) followed by the payload.
void append_reply(std::vector<uint8_t>& out, uint32_t request, std::span<const uint8_t> payload);
void append_reply_u64(std::vector<uint8_t>& out, uint32_t request, uint64_t value);
void append_reply_vring_state(std::vector<uint8_t>& out, uint32_t request, VringState state);
// GET_CONFIG reply: the request's offset/size/flags followed by the bytes;
// an empty `bytes` produces the zero-size payload that signals failure.
void append_reply_config(std::vector<uint8_t>& out, const ConfigAccess& access, std::span<const uint8_t> bytes);

// Request serialisation, used by tests, fuzz seeds and front-end simulators.
[[nodiscard]] std::vector<uint8_t> encode_message(uint32_t request, uint32_t flags, std::span<const uint8_t> payload);
[[nodiscard]] std::vector<uint8_t> encode_u64(uint64_t value);
[[nodiscard]] std::vector<uint8_t> encode_vring_state(VringState state);
[[nodiscard]] std::vector<uint8_t> encode_vring_address(const VringAddress& address);
[[nodiscard]] std::vector<uint8_t> encode_memory_table(std::span<const MemoryRegionDescription> regions);
[[nodiscard]] std::vector<uint8_t> encode_config_access(uint32_t offset, uint32_t size, uint32_t flags,
                                                        std::span<const uint8_t> data);
// Parses a reply/message header from exactly kHeaderSize bytes.
[[nodiscard]] MessageHeader decode_header(std::span<const uint8_t, kHeaderSize> bytes);

}  // namespace vhost_vsock::vhost_user
