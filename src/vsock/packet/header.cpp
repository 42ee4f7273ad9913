#include "vsock/packet/header.h"

#include <endian.h>
#include <fmt/format.h>

#include <cstring>

namespace vhost_vsock::vsock {
namespace {

// memcpy plus a byte-order swap that is the identity on little-endian hosts
// (and its own inverse, so loads and stores share it): GCC does not merge the
// byte-at-a-time loop this replaced (137 instructions per header).
template <typename T>
T swap_le(T value) {
  if constexpr (sizeof(T) == 8) {
    return le64toh(value);
  } else if constexpr (sizeof(T) == 4) {
    return le32toh(value);
  } else {
    static_assert(sizeof(T) == 2);
    return le16toh(value);
  }
}

template <typename T>
T load_le(const uint8_t* p) {
  T value;
  std::memcpy(&value, p, sizeof(T));
  return swap_le(value);
}

template <typename T>
void store_le(uint8_t* p, T value) {
  const T wire = swap_le(value);
  std::memcpy(p, &wire, sizeof(T));
}

// Wire offsets (virtio 1.2 §5.10.6).
constexpr size_t kSrcCid = 0, kDstCid = 8, kSrcPort = 16, kDstPort = 20, kLen = 24, kType = 28, kOp = 30, kFlags = 32,
                 kBufAlloc = 36, kFwdCnt = 40;

}  // namespace

PacketHeader decode_header(std::span<const uint8_t, kHeaderSize> b) {
  PacketHeader h;
  h.src_cid = load_le<uint64_t>(&b[kSrcCid]);
  h.dst_cid = load_le<uint64_t>(&b[kDstCid]);
  h.src_port = load_le<uint32_t>(&b[kSrcPort]);
  h.dst_port = load_le<uint32_t>(&b[kDstPort]);
  h.len = load_le<uint32_t>(&b[kLen]);
  h.type = load_le<uint16_t>(&b[kType]);
  h.op = load_le<uint16_t>(&b[kOp]);
  h.flags = load_le<uint32_t>(&b[kFlags]);
  h.buf_alloc = load_le<uint32_t>(&b[kBufAlloc]);
  h.fwd_cnt = load_le<uint32_t>(&b[kFwdCnt]);
  return h;
}

void encode_header(const PacketHeader& h, std::span<uint8_t, kHeaderSize> b) {
  store_le(&b[kSrcCid], h.src_cid);
  store_le(&b[kDstCid], h.dst_cid);
  store_le(&b[kSrcPort], h.src_port);
  store_le(&b[kDstPort], h.dst_port);
  store_le(&b[kLen], h.len);
  store_le(&b[kType], h.type);
  store_le(&b[kOp], h.op);
  store_le(&b[kFlags], h.flags);
  store_le(&b[kBufAlloc], h.buf_alloc);
  store_le(&b[kFwdCnt], h.fwd_cnt);
}

const char* op_name(uint16_t op) {
  switch (static_cast<Op>(op)) {
    case Op::kRequest:
      return "REQUEST";
    case Op::kResponse:
      return "RESPONSE";
    case Op::kRst:
      return "RST";
    case Op::kShutdown:
      return "SHUTDOWN";
    case Op::kRw:
      return "RW";
    case Op::kCreditUpdate:
      return "CREDIT_UPDATE";
    case Op::kCreditRequest:
      return "CREDIT_REQUEST";
    case Op::kInvalid:
      break;
  }
  return "UNKNOWN";
}

std::string describe(const PacketHeader& h) {
  return fmt::format("{} {}:{} -> {}:{} len={} type={} flags={:#x} buf_alloc={} fwd_cnt={}", op_name(h.op), h.src_cid,
                     h.src_port, h.dst_cid, h.dst_port, h.len, h.type, h.flags, h.buf_alloc, h.fwd_cnt);
}

}  // namespace vhost_vsock::vsock
