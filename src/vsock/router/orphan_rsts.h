// RSTs owed for guest packets that matched no connection (refused REQUESTs
// included), waiting for RX buffers. A fixed ring: when it is full the TX
// pass stops taking guest packets (each one can owe at most one reply) until
// the RX pass has drained some, so a reply is never dropped and a guest that
// never posts RX buffers only stalls its own TX ring.
#pragma once

#include <cstddef>
#include <vector>

#include "vsock/packet/header.h"

namespace vhost_vsock::vsock {

class OrphanRstQueue {
 public:
  static constexpr size_t kCapacity = 1024;

  [[nodiscard]] bool empty() const { return count_ == 0; }
  [[nodiscard]] bool full() const { return count_ == kCapacity; }
  [[nodiscard]] size_t size() const { return count_; }

  // The RST answering `to` (addresses swapped, same socket type: Linux matches
  // the RST to its socket by type too; from the CID `to` was sent to, the
  // host or a sibling VM). False, and nothing queued, if full.
  bool push_reply_to(const PacketHeader& to, uint64_t guest_cid) {
    if (full()) return false;
    if (ring_.empty()) ring_.resize(kCapacity);  // allocated on first need
    PacketHeader& rst = ring_[(head_ + count_) % kCapacity];
    rst = PacketHeader{};
    rst.src_cid = to.dst_cid;
    rst.dst_cid = guest_cid;
    rst.src_port = to.dst_port;
    rst.dst_port = to.src_port;
    rst.type = to.type;
    rst.op = static_cast<uint16_t>(Op::kRst);
    ++count_;
    return true;
  }
  [[nodiscard]] const PacketHeader& front() const { return ring_[head_]; }
  void pop() {
    head_ = (head_ + 1) % kCapacity;
    --count_;
  }
  void clear() { head_ = count_ = 0; }

 private:
  std::vector<PacketHeader> ring_;
  size_t head_ = 0;
  size_t count_ = 0;
};

}  // namespace vhost_vsock::vsock
