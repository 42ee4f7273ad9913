#include "raw_guest.h"

#include <cstring>
#include <stdexcept>
#include <thread>

#include "testing/guest_header.h"

namespace vhost_vsock::hostile {
namespace {

using Clock = std::chrono::steady_clock;
using testing::kDescFlagNext;
using testing::kDescFlagWrite;

constexpr size_t kTxSlotBytes = vsock::kHeaderSize + vsock::kMaxPacketPayload;
constexpr uint32_t kBufAlloc = 256 * 1024;

}  // namespace

RawGuest::RawGuest(const std::string& vhost_socket, bool post_rx_buffers) {
  ram_ = std::make_unique<testing::GuestRam>(4 << 20);
  rx_ = std::make_unique<testing::DriverVring>(*ram_, kQueueSize, false);
  tx_ = std::make_unique<testing::DriverVring>(*ram_, kQueueSize, false);
  for (uint16_t i = 0; i < kRxBuffers; ++i) rx_buffers_.push_back(ram_->alloc(vsock::kHeaderSize + kRxPayload));
  for (uint16_t i = 0; i < kTxSlots; ++i) tx_buffers_.push_back(ram_->alloc(kTxSlotBytes));
  tx_busy_.assign(kTxSlots, false);

  testing::FrontendOptions options;
  options.event_idx = false;
  options.indirect_desc = true;
  frontend_ = std::make_unique<testing::VhostUserFrontend>(vhost_socket, options);
  cid_ = frontend_->start(*ram_, *rx_, *tx_);
  if (post_rx_buffers) post_ordinary_rx();
}

void RawGuest::post_ordinary_rx() {
  for (uint16_t i = 0; i < kRxBuffers; ++i) post_rx(i);
  kick(kRx);
}

vsock::PacketHeader RawGuest::header(vsock::Op op, uint32_t src_port, uint32_t dst_port, uint32_t len) const {
  return testing::guest_stream_header({.guest_cid = cid_, .buf_alloc = kBufAlloc}, op, src_port, dst_port, len);
}

void RawGuest::post_rx(uint16_t index) {
  rx_->write_descriptor(index, rx_buffers_[index], static_cast<uint32_t>(vsock::kHeaderSize + kRxPayload),
                        kDescFlagWrite, 0);
  rx_->publish_head(index);
}

void RawGuest::write_descriptor(uint16_t queue, uint16_t index, uint64_t addr, uint32_t len, uint16_t flags,
                                uint16_t next) {
  ring(queue).write_descriptor(index, addr, len, flags, next);
}

void RawGuest::publish(uint16_t queue, uint16_t head) {
  ring(queue).publish_head(head);
  kick(queue);
}

bool RawGuest::send(const vsock::PacketHeader& header, std::span<const uint8_t> payload,
                    std::chrono::milliseconds timeout) {
  if (payload.size() > vsock::kMaxPacketPayload) return false;
  const auto deadline = Clock::now() + timeout;
  for (;;) {
    pump();
    for (uint16_t slot = 0; slot < kTxSlots; ++slot) {
      if (tx_busy_[slot]) continue;
      const uint64_t base = tx_buffers_[slot];
      uint8_t* host = ram_->host(base, kTxSlotBytes);
      vsock::encode_header(header, std::span<uint8_t, vsock::kHeaderSize>(host, vsock::kHeaderSize));
      if (!payload.empty()) std::memcpy(host + vsock::kHeaderSize, payload.data(), payload.size());
      const auto head = static_cast<uint16_t>(2 * slot);
      if (payload.empty()) {
        tx_->write_descriptor(head, base, vsock::kHeaderSize, 0, 0);
      } else {
        tx_->write_descriptor(head, base, vsock::kHeaderSize, kDescFlagNext, static_cast<uint16_t>(head + 1));
        tx_->write_descriptor(static_cast<uint16_t>(head + 1), base + vsock::kHeaderSize,
                              static_cast<uint32_t>(payload.size()), 0, 0);
      }
      tx_busy_[slot] = true;
      publish(kTx, head);
      return true;
    }
    if (Clock::now() >= deadline) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
}

void RawGuest::pump() {
  for (uint16_t queue : {kRx, kTx}) {
    testing::DriverVring& r = ring(queue);
    bool reposted = false;
    // Bounded: at most one ring's worth per call.
    for (int budget = kQueueSize; budget > 0; --budget) {
      auto used = r.pop_used_raw();
      if (!used) break;
      used_log_[queue].push_back({used->id, used->len});
      if (queue == kTx) {
        if (used->id < 2 * kTxSlots && used->id % 2 == 0) tx_busy_[used->id / 2] = false;
        continue;
      }
      if (used->id >= kRxBuffers) continue;  // an attack buffer: the test inspects it
      const uint8_t* base = ram_->host(rx_buffers_[used->id], vsock::kHeaderSize + kRxPayload);
      if (used->len >= vsock::kHeaderSize && used->len <= vsock::kHeaderSize + kRxPayload) {
        RawPacket packet;
        packet.header = vsock::decode_header(std::span<const uint8_t, vsock::kHeaderSize>(base, vsock::kHeaderSize));
        const size_t payload = std::min<size_t>(packet.header.len, used->len - vsock::kHeaderSize);
        packet.payload.assign(reinterpret_cast<const char*>(base + vsock::kHeaderSize), payload);
        packets_.push_back(std::move(packet));
      } else {
        ++malformed_rx_;
      }
      post_rx(used->id);
      reposted = true;
    }
    if (reposted) kick(kRx);
  }
}

std::optional<uint32_t> RawGuest::wait_used(uint16_t queue, uint16_t head, std::chrono::milliseconds timeout) {
  const auto deadline = Clock::now() + timeout;
  for (;;) {
    pump();
    for (const UsedRecord& record : used_log_[queue]) {
      if (record.id == head) return record.len;
    }
    if (Clock::now() >= deadline) return std::nullopt;
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
}

std::optional<RawPacket> RawGuest::wait_packet(const std::function<bool(const RawPacket&)>& match,
                                               std::chrono::milliseconds timeout) {
  const auto deadline = Clock::now() + timeout;
  for (;;) {
    pump();
    for (const RawPacket& packet : packets_) {
      if (match(packet)) return packet;
    }
    if (Clock::now() >= deadline) return std::nullopt;
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
}

bool RawGuest::connect(uint32_t local_port, uint32_t peer_port, std::chrono::milliseconds timeout) {
  if (!send(header(vsock::Op::kRequest, local_port, peer_port))) return false;
  auto reply = wait_packet(
      [&](const RawPacket& p) {
        return p.header.dst_port == local_port && p.header.src_port == peer_port &&
               (p.header.operation() == vsock::Op::kResponse || p.header.operation() == vsock::Op::kRst);
      },
      timeout);
  return reply && reply->header.operation() == vsock::Op::kResponse;
}

}  // namespace vhost_vsock::hostile
