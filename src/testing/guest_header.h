// The packet header a simulated guest sends: STREAM, from the guest to the
// host, carrying the guest's receive buffer size (fwd_cnt 0: callers that
// track credit set it themselves).
#pragma once

#include <cstdint>

#include "vsock/packet/header.h"

namespace vhost_vsock::testing {

struct GuestHeaderFields {
  uint64_t guest_cid = 0;
  uint32_t buf_alloc = 0;
};

inline vsock::PacketHeader guest_stream_header(const GuestHeaderFields& guest, vsock::Op op, uint32_t src_port,
                                               uint32_t dst_port, uint32_t len = 0, uint32_t flags = 0) {
  vsock::PacketHeader h;
  h.src_cid = guest.guest_cid;
  h.dst_cid = vsock::kCidHost;
  h.src_port = src_port;
  h.dst_port = dst_port;
  h.len = len;
  h.type = static_cast<uint16_t>(vsock::SocketType::kStream);
  h.op = static_cast<uint16_t>(op);
  h.flags = flags;
  h.buf_alloc = guest.buf_alloc;
  return h;
}

}  // namespace vhost_vsock::testing
