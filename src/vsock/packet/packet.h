// Packets as they sit in descriptor chains: a TX packet is parsed out of a
// chain's device-readable buffers, an RX packet is written into a chain's
// device-writable buffers. The header is copied out of (or into) guest memory
// exactly once; the payload stays in guest memory and is described by iovecs.
#pragma once

#include <sys/uio.h>

#include <cstddef>
#include <cstdint>
#include <span>

#include "base/iovec_list.h"
#include "vsock/packet/header.h"

namespace vhost_vsock::vsock {

enum class TxParseStatus {
  kOk,
  kShortHeader,       // fewer than 44 readable bytes
  kPayloadTooLarge,   // header.len > kMaxPacketPayload
  kTruncatedPayload,  // header.len > bytes present after the header
};

const char* to_string(TxParseStatus status);

struct TxPacket {
  PacketHeader header;
  // Exactly header.len bytes, pointing into guest memory. Bytes the chain
  // carries beyond header.len are ignored.
  base::IovecList payload;
};

// Parses the chain's readable buffers. `out.payload` is cleared first; on
// error, `out.header` holds the decoded header when at least 44 bytes were
// present (so the caller can answer the sender), and the payload is empty.
TxParseStatus parse_tx_packet(std::span<const iovec> readable, TxPacket& out);

// Bytes of payload an RX chain can take: its writable size minus the header,
// capped at kMaxPacketPayload. Zero when the chain cannot even hold a header.
size_t rx_payload_capacity(size_t writable_bytes);

// Appends to `out` the iovecs of the chain's payload area (after the header),
// at most `max_bytes` of it.
void rx_payload_area(std::span<const iovec> writable, size_t max_bytes, base::IovecList& out);

// Writes the header into the first 44 writable bytes (which may span
// buffers). Returns false, writing nothing, if the chain is too small.
bool write_rx_header(std::span<const iovec> writable, const PacketHeader& header);

}  // namespace vhost_vsock::vsock
