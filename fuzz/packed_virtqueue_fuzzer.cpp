// Fuzzes the device side of the packed virtqueue against a hostile driver:
// the input is the guest's memory (descriptor ring, event structures,
// indirect tables) plus a script of device operations and guest writes
// interleaved with them. Beside ASan's bounds, it checks that the device
// writes guest memory only inside the descriptor ring, its device event
// structure and the writable buffers of chains it popped.
//
// Input layout (little-endian):
//   [0]      log2 of the queue size (mod 11: 1..1024)
//   [1]      features: bit0 INDIRECT_DESC, bit1 EVENT_IDX, bit2 NOTIFY_ON_EMPTY,
//            bit3 place memory just below 2^64 (wrap-around checks),
//            bit4 give the queue a call eventfd (else notify() has none)
//   [2..5]   initial ring state (SET_VRING_BASE: avail and used positions,
//            each with its wrap counter in bit 15)
//   [6..7]   descriptor ring offset in guest memory (rounded down to 16)
//   [8..9]   driver event structure offset (rounded down to 4)
//   [10..11] device event structure offset (rounded down to 4)
//   [12..13] length N of the memory image that follows
//   [14..]   N bytes copied to the start of guest memory, then the op script.
#include <endian.h>
#include <spdlog/spdlog.h>
#include <sys/eventfd.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <vector>

#include "memory/guest_memory.h"
#include "virtio/features.h"
#include "virtio/packed_queue.h"

namespace {

using vhost_vsock::memory::GuestMemory;
using vhost_vsock::virtio::DescriptorChain;
using vhost_vsock::virtio::PackedQueue;
using vhost_vsock::virtio::PopStatus;

constexpr size_t kMemorySize = size_t{64} * 1024;
constexpr uint64_t kLowBase = 0x100000;
constexpr uint64_t kHighBase = UINT64_MAX - kMemorySize;  // ends one byte below 2^64
constexpr size_t kHeaderSize = 14;

class Reader {
 public:
  Reader(const uint8_t* data, size_t size) : data_(data), size_(size) {}
  bool empty() const { return pos_ >= size_; }
  uint8_t u8() { return pos_ < size_ ? data_[pos_++] : 0; }
  uint16_t u16() {
    const uint16_t lo = u8();
    return static_cast<uint16_t>(lo | (u8() << 8));
  }
  uint32_t u32() {
    const uint32_t lo = u16();
    return lo | (uint32_t{u16()} << 16);
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

// The guest's memory and what it should hold if the device only wrote where
// it may: the driver's own writes and the chains' writable buffers go to both.
struct Guest {
  std::vector<uint8_t> memory = std::vector<uint8_t>(kMemorySize, 0);
  std::vector<uint8_t> expected = std::vector<uint8_t>(kMemorySize, 0);

  void write(size_t offset, uint8_t value) { memory[offset] = expected[offset] = value; }
  // Reads every readable byte and fills every writable one, so ASan checks
  // that the device only hands out in-bounds memory.
  uint32_t touch(const DescriptorChain& chain) {
    uint32_t checksum = 0;
    for (const iovec& iov : chain.readable()) {
      const auto* p = static_cast<const uint8_t*>(iov.iov_base);
      for (size_t i = 0; i < iov.iov_len; ++i) checksum += p[i];
    }
    for (const iovec& iov : chain.writable()) {
      std::memset(iov.iov_base, 0xa5, iov.iov_len);
      const auto offset = static_cast<size_t>(static_cast<uint8_t*>(iov.iov_base) - memory.data());
      std::memset(expected.data() + offset, 0xa5, iov.iov_len);
    }
    return checksum;
  }
  // Traps if the device wrote guest memory outside the ring and the device
  // event structure (which it owns: they are copied over before comparing).
  void check_device_writes(size_t ring, size_t ring_bytes, size_t device_event) {
    const size_t ring_end = std::min(ring + ring_bytes, kMemorySize);
    const size_t event_end = std::min(device_event + 4, kMemorySize);
    std::copy(memory.begin() + ring, memory.begin() + ring_end, expected.begin() + ring);
    std::copy(memory.begin() + device_event, memory.begin() + event_end, expected.begin() + device_event);
    if (memory != expected) __builtin_trap();
  }
};

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
  const uint32_t ring_state = in.u32();
  const uint64_t ring_offset = in.u16() & ~uint64_t{15};
  const uint64_t driver_event_offset = in.u16() & ~uint64_t{3};
  const uint64_t device_event_offset = in.u16() & ~uint64_t{3};
  const size_t image_length = in.u16();

  Guest guest;
  size_t got = 0;
  const uint8_t* image = in.take(image_length, &got);
  std::memcpy(guest.memory.data(), image, got);
  std::memcpy(guest.expected.data(), image, got);

  const uint64_t base = (feature_bits & 8) ? kHighBase : kLowBase;
  auto memory = GuestMemory::wrap_existing(base, guest.memory);
  if (!memory) return 0;

  uint64_t features = vhost_vsock::virtio::kFeatureVersion1 | vhost_vsock::virtio::kFeatureRingPacked;
  if (feature_bits & 1) features |= vhost_vsock::virtio::kFeatureIndirectDesc;
  if (feature_bits & 2) features |= vhost_vsock::virtio::kFeatureEventIdx;
  if (feature_bits & 4) features |= vhost_vsock::virtio::kFeatureNotifyOnEmpty;

  PackedQueue queue;
  queue.set_features(features);
  if (feature_bits & 16) queue.set_call_fd(vhost_vsock::base::UniqueFd(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)));
  std::string error;
  auto configure = [&] {
    return queue.configure(memory, queue_size, base + ring_offset, base + driver_event_offset,
                           base + device_event_offset, &error);
  };
  if (!configure()) return 0;
  queue.set_ring_state(ring_state);

  DescriptorChain chain;
  std::vector<uint16_t> outstanding;  // popped, not yet used: what a device would hold
  outstanding.reserve(queue_size);
  uint32_t sink = 0;

  // Drains the ring the way the device's worker does, with a hard bound: a
  // correct queue never yields more chains than the ring has descriptors.
  auto drain = [&] {
    queue.disable_notifications();
    for (size_t round = 0; round < 2 * size_t{queue_size} + 2; ++round) {
      const PopStatus status = queue.pop(chain);
      if (status == PopStatus::kEmpty || status == PopStatus::kBroken) break;
      if (status == PopStatus::kInvalidChain) continue;
      if (chain.id() >= queue_size) __builtin_trap();
      sink += guest.touch(chain);
      queue.add_used(chain.id(), static_cast<uint32_t>(chain.writable_bytes()));
    }
    queue.notify();
    queue.enable_notifications();
    (void)queue.has_available();
  };

  // Op script: interleave device steps with guest writes to its own memory.
  for (size_t step = 0; step < 256 && !in.empty(); ++step) {
    switch (in.u8() % 9) {
      case 0:
        drain();
        break;
      case 1:  // pop one and hold it, like an RX buffer reserved for later
        if (queue.pop(chain) == PopStatus::kChain) {
          sink += guest.touch(chain);
          outstanding.push_back(chain.id());
        }
        break;
      case 2: {  // give back some of the held chains
        const uint16_t count = static_cast<uint16_t>(std::min<size_t>(in.u8(), outstanding.size()));
        queue.unpop(count);
        outstanding.resize(outstanding.size() - count);
        break;
      }
      case 3:  // complete the held chains (and a duplicate or stray id now and then)
        for (uint16_t id : outstanding) queue.add_used(id, in.u8());
        if (!outstanding.empty() && (in.u8() & 1)) queue.add_used(outstanding.front(), 0);
        outstanding.clear();
        queue.flush_used();
        (void)queue.should_notify();  // the decision alone, as notify() takes it
        break;
      case 4: {  // guest writes 2 bytes anywhere (flags, event structures, ...)
        const size_t offset = in.u16() % (kMemorySize - 1);
        guest.write(offset, in.u8());
        guest.write(offset + 1, in.u8());
        break;
      }
      case 5: {  // the driver makes one descriptor available in its current lap
        const size_t slot = ring_offset + 16 * size_t{static_cast<uint16_t>(in.u16() % queue_size)};
        const uint8_t flags = in.u8();  // NEXT / WRITE / INDIRECT, bit 7 picks the wrap counter
        const uint8_t desc[16] = {in.u8(),
                                  in.u8(),
                                  0,
                                  0,
                                  0,
                                  0,
                                  0,
                                  0,
                                  in.u8(),
                                  0,
                                  0,
                                  0,
                                  in.u8(),
                                  0,
                                  static_cast<uint8_t>((flags & 7) | (flags & 0x80)),
                                  static_cast<uint8_t>((flags & 0x80) ? 0 : 0x80)};
        // Addresses land in guest memory (base + a 16-bit offset).
        uint64_t addr = 0;
        std::memcpy(&addr, desc, 8);
        addr = htole64(base + le64toh(addr));
        for (size_t i = 0; i < 16 && slot + i < kMemorySize; ++i) {
          guest.write(slot + i, i < 8 ? reinterpret_cast<const uint8_t*>(&addr)[i] : desc[i]);
        }
        break;
      }
      case 6:
        queue.set_ring_state(in.u32());
        outstanding.clear();
        break;
      case 7:  // front-end re-sends the ring addresses
        if (!configure()) return 0;
        break;
      default:
        queue.disable_notifications();
        queue.enable_notifications();
        break;
    }
  }
  drain();
  guest.check_device_writes(ring_offset, 16 * size_t{queue_size}, device_event_offset);
  // Keep the reads from being optimised away.
  if (sink == 0x12345678 && queue.stats().chains_popped == 0x12345678) __builtin_trap();
  return 0;
}
