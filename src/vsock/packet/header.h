// The virtio-vsock packet header (virtio 1.2 §5.10.6): 44 bytes, little-endian,
// packed. Kept as a plain host-endian struct; encode/decode are the only places
// that know the wire layout.
#pragma once

#include <array>
#include <cstdint>
#include <span>
#include <string>

namespace vhost_vsock::vsock {

inline constexpr size_t kHeaderSize = 44;
inline constexpr uint64_t kCidHypervisor = 0;
inline constexpr uint64_t kCidLocal = 1;
inline constexpr uint64_t kCidHost = 2;
inline constexpr uint64_t kCidAny = 0xFFFFFFFFULL;
// Linux caps a single packet's payload at 64 KiB (VIRTIO_VSOCK_MAX_PKT_BUF_SIZE).
inline constexpr uint32_t kMaxPacketPayload = 64 * 1024;

enum class Op : uint16_t {
  kInvalid = 0,
  kRequest = 1,
  kResponse = 2,
  kRst = 3,
  kShutdown = 4,
  kRw = 5,
  kCreditUpdate = 6,
  kCreditRequest = 7,
};

enum class SocketType : uint16_t {
  kStream = 1,
  kSeqpacket = 2,
};

inline constexpr uint32_t kShutdownRcv = 1;   // peer will receive no more
inline constexpr uint32_t kShutdownSend = 2;  // peer will send no more
inline constexpr uint32_t kSeqEom = 1;
inline constexpr uint32_t kSeqEor = 2;

// Virtio feature bits of the vsock device.
inline constexpr uint64_t kFeatureStream = 1ULL << 0;
inline constexpr uint64_t kFeatureSeqpacket = 1ULL << 1;

struct PacketHeader {
  uint64_t src_cid = 0;
  uint64_t dst_cid = 0;
  uint32_t src_port = 0;
  uint32_t dst_port = 0;
  uint32_t len = 0;
  uint16_t type = 0;
  uint16_t op = 0;
  uint32_t flags = 0;
  uint32_t buf_alloc = 0;
  uint32_t fwd_cnt = 0;

  [[nodiscard]] Op operation() const { return static_cast<Op>(op); }
  bool operator==(const PacketHeader&) const = default;
};

using HeaderBytes = std::array<uint8_t, kHeaderSize>;

PacketHeader decode_header(std::span<const uint8_t, kHeaderSize> bytes);
void encode_header(const PacketHeader& header, std::span<uint8_t, kHeaderSize> bytes);
inline HeaderBytes encode_header(const PacketHeader& header) {
  HeaderBytes bytes{};
  encode_header(header, bytes);
  return bytes;
}

const char* op_name(uint16_t op);
// "REQUEST 3:1234 -> 2:5000 len=0 ..." for logs.
std::string describe(const PacketHeader& header);

}  // namespace vhost_vsock::vsock
