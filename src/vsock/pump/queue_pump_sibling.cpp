// Packets from sibling VMs into our guest's RX ring. Each was copied out of
// the sender's guest memory into its SiblingPacket; this is the second and
// last copy, into our guest's RX buffers. A packet larger than one RX buffer
// is split over several chains with the same header and each piece's own
// len; on a seqpacket RW only the last piece keeps EOM/EOR, as Linux's
// vhost-vsock does. A packet the RX ring cannot finish waits, with what was
// written, for the guest's next RX kick.
#include <algorithm>

#include "vsock/pump/queue_pump.h"

namespace vhost_vsock::vsock {
namespace {

// Packets per turn: the host's connections get their turns in between.
constexpr size_t kSiblingPacketsPerTurn = 64;

}  // namespace

bool QueuePump::deliver_sibling_packets(RxPass& pass) {
  for (size_t i = 0; i < kSiblingPacketsPerTurn; ++i) {
    SiblingHub::Channel* channel = router_.next_sibling_packet();
    if (channel == nullptr) return false;
    if (!write_sibling_packet(pass, *channel)) return false;
    router_.finish_sibling_packet(*channel);
  }
  return router_.next_sibling_packet() != nullptr;
}

bool QueuePump::write_sibling_packet(RxPass& pass, SiblingHub::Channel& channel) {
  const SiblingPacket& packet = *channel.head;
  const size_t len = packet.header.len;
  const bool message_part =
      packet.header.type == static_cast<uint16_t>(SocketType::kSeqpacket) && packet.header.operation() == Op::kRw;
  do {
    if (!take_control_chain(pass)) return false;  // out of RX chains or budget: resumed later
    const virtio::DescriptorChain& chain = rx_chains_[0];
    const size_t left = len - channel.head_offset;
    const size_t take = std::min(left, rx_payload_capacity(chain.writable_bytes()));
    if (left > 0 && take == 0) {  // room for a header only: no use for data
      pass.queue.add_used(chain.id(), 0);
      rx_used_any_ = true;
      ++stats_.rx_chains_too_small;
      continue;
    }
    PacketHeader piece = packet.header;
    piece.len = static_cast<uint32_t>(take);
    if (message_part && take < left) piece.flags &= ~(kSeqEom | kSeqEor);
    write_rx_header(chain.writable(), piece);
    if (take > 0) {
      rx_iovecs_.clear();
      rx_payload_area(chain.writable(), take, rx_iovecs_);
      base::copy_to_iovecs(rx_iovecs_.span(), 0,
                           std::span<const uint8_t>(packet.payload.get() + channel.head_offset, take));
    }
    pass.queue.add_used(chain.id(), static_cast<uint32_t>(kHeaderSize + take));
    rx_used_any_ = true;
    ++stats_.packets_to_guest;
    channel.head_offset += take;
  } while (channel.head_offset < len);
  return true;
}

}  // namespace vhost_vsock::vsock
