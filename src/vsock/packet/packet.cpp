#include "vsock/packet/packet.h"

#include <algorithm>
#include <cstring>

namespace vhost_vsock::vsock {

namespace {

// Where the header lies when the first buffer holds all of it, as it does in
// every chain a Linux guest posts: a fixed-size copy instead of an iovec
// walk. Null otherwise.
uint8_t* header_in_first_buffer(std::span<const iovec> iovs) {
  if (iovs.empty() || iovs[0].iov_len < kHeaderSize) return nullptr;
  return static_cast<uint8_t*>(iovs[0].iov_base);
}

}  // namespace

const char* to_string(TxParseStatus status) {
  switch (status) {
    case TxParseStatus::kOk:
      return "ok";
    case TxParseStatus::kShortHeader:
      return "short header";
    case TxParseStatus::kPayloadTooLarge:
      return "payload too large";
    case TxParseStatus::kTruncatedPayload:
      return "payload truncated";
  }
  return "unknown";
}

TxParseStatus parse_tx_packet(std::span<const iovec> readable, TxPacket& out) {
  out.payload.clear();
  out.header = PacketHeader{};
  // One copy out of guest memory; every decision below uses this copy only.
  HeaderBytes bytes{};
  if (const uint8_t* whole = header_in_first_buffer(readable)) {
    std::memcpy(bytes.data(), whole, kHeaderSize);
  } else if (base::copy_from_iovecs(readable, 0, bytes) != kHeaderSize) {
    return TxParseStatus::kShortHeader;
  }
  out.header = decode_header(bytes);
  const uint32_t len = out.header.len;
  if (len > kMaxPacketPayload) return TxParseStatus::kPayloadTooLarge;
  if (len == 0) return TxParseStatus::kOk;
  base::slice_iovecs(readable, kHeaderSize, len, out.payload);
  if (out.payload.total_bytes() != len) {
    out.payload.clear();
    return TxParseStatus::kTruncatedPayload;
  }
  return TxParseStatus::kOk;
}

size_t rx_payload_capacity(size_t writable_bytes) {
  if (writable_bytes < kHeaderSize) return 0;
  return std::min<size_t>(writable_bytes - kHeaderSize, kMaxPacketPayload);
}

void rx_payload_area(std::span<const iovec> writable, size_t max_bytes, base::IovecList& out) {
  base::slice_iovecs(writable, kHeaderSize, std::min<size_t>(max_bytes, kMaxPacketPayload), out);
}

bool write_rx_header(std::span<const iovec> writable, const PacketHeader& header) {
  if (uint8_t* whole = header_in_first_buffer(writable)) {
    encode_header(header, std::span<uint8_t, kHeaderSize>(whole, kHeaderSize));
    return true;
  }
  const HeaderBytes bytes = encode_header(header);
  // Measure first so a too-small chain is left untouched.
  size_t available = 0;
  for (const auto& iov : writable) {
    available += iov.iov_len;
    if (available >= kHeaderSize) break;
  }
  if (available < kHeaderSize) return false;
  return base::copy_to_iovecs(writable, 0, bytes) == kHeaderSize;
}

}  // namespace vhost_vsock::vsock
