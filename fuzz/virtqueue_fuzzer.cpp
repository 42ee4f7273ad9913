// Fuzzes the device side of the split virtqueue against a hostile driver:
// the input is the guest's memory (rings, descriptors, indirect tables) plus a
// script of device operations and guest writes interleaved with them.
//
// Input layout (little-endian):
//   [0]      log2 of the queue size (mod 11: 1..1024)
//   [1]      features: bit0 INDIRECT_DESC, bit1 EVENT_IDX, bit2 NOTIFY_ON_EMPTY,
//            bit3 place memory just below 2^64 (wrap-around checks),
//            bit4 give the queue a call eventfd (else notify() has none)
//   [2..3]   initial next_avail (SET_VRING_BASE)
//   [4..5]   descriptor table offset in guest memory (rounded down to 16)
//   [6..7]   avail ring offset (rounded down to 2)
//   [8..9]   used ring offset (rounded down to 4)
//   [10..11] length N of the memory image that follows
//   [12..]   N bytes copied to the start of guest memory, then the op script.
// Guest memory is a heap buffer of exactly kMemorySize bytes, so ASan reports
// any iovec that strays outside it.
#include <spdlog/spdlog.h>
#include <sys/eventfd.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <vector>

#include "memory/guest_memory.h"
#include "virtio/features.h"
#include "virtio/split_queue.h"

namespace {

using vhost_vsock::memory::GuestMemory;
using vhost_vsock::virtio::DescriptorChain;
using vhost_vsock::virtio::PopStatus;
using vhost_vsock::virtio::SplitQueue;

constexpr size_t kMemorySize = size_t{64} * 1024;
constexpr uint64_t kLowBase = 0x100000;
constexpr uint64_t kHighBase = UINT64_MAX - kMemorySize;  // ends one byte below 2^64
constexpr size_t kHeaderSize = 12;

class Reader {
 public:
  Reader(const uint8_t* data, size_t size) : data_(data), size_(size) {}
  bool empty() const { return pos_ >= size_; }
  uint8_t u8() { return pos_ < size_ ? data_[pos_++] : 0; }
  uint16_t u16() {
    const uint16_t lo = u8();
    return static_cast<uint16_t>(lo | (u8() << 8));
  }
  const uint8_t* take(size_t n, size_t* got) {
    *got = std::min(n, size_ - std::min(pos_, size_));
    const uint8_t* p = data_ + std::min(pos_, size_);
    pos_ += *got;
    return p;
  }

 private:
  const uint8_t* data_;
  size_t size_;
  size_t pos_ = 0;
};

// Reads every readable byte and writes every writable byte of a chain, so
// ASan checks that the device only ever hands out in-bounds memory.
uint32_t touch_chain(const DescriptorChain& chain) {
  uint32_t checksum = 0;
  for (const iovec& iov : chain.readable()) {
    const auto* p = static_cast<const uint8_t*>(iov.iov_base);
    for (size_t i = 0; i < iov.iov_len; ++i) checksum += p[i];
  }
  for (const iovec& iov : chain.writable()) std::memset(iov.iov_base, 0xa5, iov.iov_len);
  return checksum;
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  spdlog::set_level(spdlog::level::off);  // invalid chains are the normal case here
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < kHeaderSize) return 0;
  Reader in(data, size);
  const uint16_t queue_size = static_cast<uint16_t>(1u << (in.u8() % 11));
  const uint8_t feature_bits = in.u8();
  const uint16_t next_avail = in.u16();
  const uint64_t desc_offset = in.u16() & ~uint64_t{15};
  const uint64_t avail_offset = in.u16() & ~uint64_t{1};
  const uint64_t used_offset = in.u16() & ~uint64_t{3};
  const size_t image_length = in.u16();

  std::vector<uint8_t> guest(kMemorySize, 0);
  size_t got = 0;
  const uint8_t* image = in.take(image_length, &got);
  std::memcpy(guest.data(), image, got);

  const uint64_t base = (feature_bits & 8) ? kHighBase : kLowBase;
  auto memory = GuestMemory::wrap_existing(base, guest);
  if (!memory) return 0;

  uint64_t features = vhost_vsock::virtio::kFeatureVersion1;
  if (feature_bits & 1) features |= vhost_vsock::virtio::kFeatureIndirectDesc;
  if (feature_bits & 2) features |= vhost_vsock::virtio::kFeatureEventIdx;
  if (feature_bits & 4) features |= vhost_vsock::virtio::kFeatureNotifyOnEmpty;

  SplitQueue queue;
  queue.set_features(features);
  if (feature_bits & 16) queue.set_call_fd(vhost_vsock::base::UniqueFd(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)));
  queue.set_next_avail(next_avail);
  std::string error;
  if (!queue.configure(memory, queue_size, base + desc_offset, base + avail_offset, base + used_offset, &error)) {
    return 0;
  }

  DescriptorChain chain;
  std::vector<uint16_t> outstanding;  // popped, not yet used: what a device would hold
  outstanding.reserve(queue_size);
  uint32_t sink = 0;

  // Drains the ring the way the device's worker does, with a hard bound: a
  // correct queue never yields more than queue_size chains per available idx.
  auto drain = [&] {
    queue.disable_notifications();
    for (size_t round = 0; round < 2 * size_t{queue_size} + 2; ++round) {
      const PopStatus status = queue.pop(chain);
      if (status == PopStatus::kEmpty || status == PopStatus::kBroken) break;
      if (status == PopStatus::kInvalidChain) continue;
      if (chain.id() >= queue_size) __builtin_trap();
      sink += touch_chain(chain);
      queue.add_used(chain.id(), static_cast<uint32_t>(chain.writable_bytes()));
    }
    queue.notify();
    queue.enable_notifications();
    (void)queue.has_available();
  };

  // Op script: interleave device steps with guest writes to its own memory.
  for (size_t step = 0; step < 256 && !in.empty(); ++step) {
    switch (in.u8() % 8) {
      case 0:
        drain();
        break;
      case 1: {  // pop one and hold it, like an RX buffer reserved for later
        if (queue.pop(chain) == PopStatus::kChain) {
          sink += touch_chain(chain);
          outstanding.push_back(chain.id());
        }
        break;
      }
      case 2: {  // give back some of the held chains
        const uint16_t count = static_cast<uint16_t>(std::min<size_t>(in.u8(), outstanding.size()));
        queue.unpop(count);
        outstanding.resize(outstanding.size() - count);
        break;
      }
      case 3: {  // complete the held chains
        for (uint16_t head : outstanding) queue.add_used(head, in.u8());
        outstanding.clear();
        queue.flush_used();
        (void)queue.should_notify();  // the decision alone, as notify() takes it
        break;
      }
      case 4: {  // guest writes 2 bytes anywhere (e.g. avail idx, descriptors)
        const size_t offset = in.u16() % (kMemorySize - 1);
        guest[offset] = in.u8();
        guest[offset + 1] = in.u8();
        break;
      }
      case 5:
        queue.set_next_avail(in.u16());
        outstanding.clear();
        break;
      case 6: {  // front-end re-sends the ring addresses
        if (!queue.configure(memory, queue_size, base + desc_offset, base + avail_offset, base + used_offset, &error)) {
          return 0;
        }
        break;
      }
      default:
        queue.disable_notifications();
        queue.enable_notifications();
        break;
    }
  }
  drain();
  // Keep the reads from being optimised away.
  if (sink == 0x12345678 && queue.stats().chains_popped == 0x12345678) __builtin_trap();
  return 0;
}
