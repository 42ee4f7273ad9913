// Test support for the packed queue tests: the driver's side of a packed ring,
// written straight into guest memory the way a guest would (independent of
// the code under test), and a fixture with 2 MiB of guest memory (a ring of
// 32768 descriptors takes 512 KiB).
#pragma once

#include <endian.h>
#include <gtest/gtest.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "virtio/features.h"
#include "virtio/packed_queue.h"

namespace vhost_vsock::virtio::test {

constexpr uint16_t kPackedNext = 1;
constexpr uint16_t kPackedWrite = 2;
constexpr uint16_t kPackedIndirect = 4;
constexpr uint16_t kPackedAvail = 1 << 7;
constexpr uint16_t kPackedUsed = 1 << 15;
constexpr uint16_t kEventEnable = 0;
constexpr uint16_t kEventDisable = 1;
constexpr uint16_t kEventDesc = 2;

struct Buffer {
  uint64_t addr;
  uint32_t len;
  bool writable = false;
};

struct UsedEntry {
  uint16_t id;
  uint32_t len;
};

// The driver's side of a packed ring: makes chains available (head flags
// last), reads used descriptors back in order, and owns the driver event
// suppression structure.
class PackedDriverRing {
 public:
  PackedDriverRing(std::shared_ptr<const memory::GuestMemory> memory, uint16_t size, uint64_t ring_gpa,
                   uint64_t driver_event_gpa, uint64_t device_event_gpa)
      : memory_(std::move(memory)),
        size_(size),
        ring_gpa_(ring_gpa),
        driver_event_gpa_(driver_event_gpa),
        device_event_gpa_(device_event_gpa),
        chain_length_(size, 0) {
    std::memset(at(ring_gpa_, 16 * size_t{size_}), 0, 16 * size_t{size_});
    std::memset(at(driver_event_gpa_, 4), 0, 4);
    std::memset(at(device_event_gpa_, 4), 0, 4);
  }

  uint8_t* at(uint64_t gpa, size_t len) {
    uint8_t* p = memory_->translate(gpa, len);
    if (p == nullptr) {
      ADD_FAILURE() << "test ring touches unmapped gpa " << gpa;
      std::abort();
    }
    return p;
  }

  static void write_desc(uint8_t* d, uint64_t addr, uint32_t len, uint16_t id, uint16_t flags) {
    const uint64_t a = htole64(addr);
    const uint32_t l = htole32(len);
    const uint16_t i = htole16(id);
    const uint16_t f = htole16(flags);
    std::memcpy(d, &a, 8);
    std::memcpy(d + 8, &l, 4);
    std::memcpy(d + 12, &i, 2);
    std::memcpy(d + 14, &f, 2);
  }

  [[nodiscard]] uint16_t free_descriptors() const { return static_cast<uint16_t>(size_ - in_flight_); }

  // Makes `buffers` available as one chain with buffer id `id`, each buffer in
  // its own ring descriptor; `extra_flags` are or-ed into every descriptor.
  void add_chain(const std::vector<Buffer>& buffers, uint16_t id, uint16_t extra_flags = 0) {
    std::vector<uint16_t> flags;
    for (size_t i = 0; i < buffers.size(); ++i) {
      uint16_t f = extra_flags | (buffers[i].writable ? kPackedWrite : 0);
      if (i + 1 < buffers.size()) f |= kPackedNext;
      flags.push_back(f);
    }
    add_descriptors(buffers, flags, id);
  }
  // One ring descriptor pointing at an indirect table of `entries` written at `table_gpa`.
  void add_indirect(uint64_t table_gpa, const std::vector<Buffer>& entries, uint16_t id, uint16_t table_flags = 0) {
    uint8_t* table = at(table_gpa, 16 * entries.size());
    for (size_t i = 0; i < entries.size(); ++i) {
      write_desc(table + 16 * i, entries[i].addr, entries[i].len, 0,
                 static_cast<uint16_t>(table_flags | (entries[i].writable ? kPackedWrite : 0)));
    }
    add_descriptors({{table_gpa, static_cast<uint32_t>(16 * entries.size())}}, {kPackedIndirect}, id);
  }
  // Raw: ring descriptors with exactly these flags (availability bits added).
  void add_descriptors(const std::vector<Buffer>& buffers, const std::vector<uint16_t>& flags, uint16_t id) {
    uint16_t head_flags = 0;
    uint8_t* head = nullptr;
    for (size_t i = 0; i < buffers.size(); ++i) {
      uint8_t* d = at(ring_gpa_ + 16 * size_t{avail_pos_}, 16);
      const uint16_t f = static_cast<uint16_t>(flags[i] | (avail_wrap_ ? kPackedAvail : kPackedUsed));
      if (i == 0) {
        head = d;
        head_flags = f;
        write_desc(d, buffers[i].addr, buffers[i].len, id, 0);
        const uint16_t not_yet = htole16(avail_wrap_ ? kPackedUsed : kPackedAvail);  // not available yet
        std::memcpy(d + 14, &not_yet, 2);
      } else {
        write_desc(d, buffers[i].addr, buffers[i].len, id, f);
      }
      if (++avail_pos_ == size_) {
        avail_pos_ = 0;
        avail_wrap_ = !avail_wrap_;
      }
    }
    if (id < size_) chain_length_[id] = static_cast<uint16_t>(buffers.size());
    in_flight_ += static_cast<uint16_t>(buffers.size());
    const uint16_t le = htole16(head_flags);
    __atomic_store_n(reinterpret_cast<uint16_t*>(head + 14), le, __ATOMIC_RELEASE);  // the head goes last
  }

  // The next used descriptor, if the device has published it.
  std::optional<UsedEntry> take_used() {
    uint8_t* d = at(ring_gpa_ + 16 * size_t{used_pos_}, 16);
    const uint16_t flags = le16toh(__atomic_load_n(reinterpret_cast<uint16_t*>(d + 14), __ATOMIC_ACQUIRE));
    const bool avail = (flags & kPackedAvail) != 0;
    const bool used = (flags & kPackedUsed) != 0;
    if (avail != used_wrap_ || used != used_wrap_) return std::nullopt;
    uint16_t id;
    uint32_t len;
    std::memcpy(&len, d + 8, 4);
    std::memcpy(&id, d + 12, 2);
    UsedEntry entry{le16toh(id), le32toh(len)};
    const uint16_t skip = entry.id < size_ ? chain_length_[entry.id] : 1;
    in_flight_ = static_cast<uint16_t>(in_flight_ - skip);
    used_pos_ = static_cast<uint16_t>(used_pos_ + skip);
    if (used_pos_ >= size_) {
      used_pos_ = static_cast<uint16_t>(used_pos_ - size_);
      used_wrap_ = !used_wrap_;
    }
    return entry;
  }

  void set_driver_event(uint16_t off_wrap, uint16_t flags) {
    put16(driver_event_gpa_, off_wrap);
    put16(driver_event_gpa_ + 2, flags);
  }
  [[nodiscard]] uint16_t device_event_off_wrap() { return get16(device_event_gpa_); }
  [[nodiscard]] uint16_t device_event_flags() { return get16(device_event_gpa_ + 2); }
  [[nodiscard]] uint16_t avail_off_wrap() const {
    return static_cast<uint16_t>(avail_pos_ | (avail_wrap_ ? 0x8000 : 0));
  }
  [[nodiscard]] uint16_t used_off_wrap() const { return static_cast<uint16_t>(used_pos_ | (used_wrap_ ? 0x8000 : 0)); }
  [[nodiscard]] uint16_t avail_pos() const { return avail_pos_; }
  [[nodiscard]] bool avail_wrap() const { return avail_wrap_; }
  [[nodiscard]] uint16_t used_pos() const { return used_pos_; }

 private:
  void put16(uint64_t gpa, uint16_t v) {
    const uint16_t le = htole16(v);
    std::memcpy(at(gpa, 2), &le, 2);
  }
  uint16_t get16(uint64_t gpa) {
    uint16_t v;
    std::memcpy(&v, at(gpa, 2), 2);
    return le16toh(v);
  }

  std::shared_ptr<const memory::GuestMemory> memory_;
  uint16_t size_;
  uint64_t ring_gpa_, driver_event_gpa_, device_event_gpa_;
  uint16_t avail_pos_ = 0;
  bool avail_wrap_ = true;
  uint16_t used_pos_ = 0;
  bool used_wrap_ = true;
  uint16_t in_flight_ = 0;
  std::vector<uint16_t> chain_length_;  // ring descriptors per buffer id
};

constexpr uint64_t kPackedBase = 0x200000;
constexpr size_t kPackedMemSize = 2 << 20;
constexpr uint64_t kPackedRing = kPackedBase;
constexpr uint64_t kDriverEvent = kPackedBase + 0x80000;
constexpr uint64_t kDeviceEvent = kPackedBase + 0x80004;
constexpr uint64_t kTables = kPackedBase + 0x81000;  // indirect tables
constexpr uint64_t kPackedData = kPackedBase + 0x100000;

class PackedQueueTest : public ::testing::Test {
 protected:
  void SetUp() override {
    host_ = static_cast<uint8_t*>(
        ::mmap(nullptr, kPackedMemSize, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
    ASSERT_NE(host_, MAP_FAILED);
    memory_ = memory::GuestMemory::wrap_existing(kPackedBase, {host_, kPackedMemSize});
    ASSERT_NE(memory_, nullptr);
  }
  void TearDown() override {
    queue_.reset();
    ring_.reset();
    memory_.reset();
    ::munmap(host_, kPackedMemSize);
  }

  void start(uint16_t size, uint64_t features = kFeatureVersion1 | kFeatureRingPacked) {
    ring_ = std::make_unique<PackedDriverRing>(memory_, size, kPackedRing, kDriverEvent, kDeviceEvent);
    queue_.set_features(features);
    if (!queue_.has_call_fd()) queue_.set_call_fd(base::UniqueFd(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)));
    std::string error;
    ASSERT_TRUE(queue_.configure(memory_, size, kPackedRing, kDriverEvent, kDeviceEvent, &error)) << error;
    queue_.set_ring_state(PackedQueue::kInitialRingState);
  }

  // Expects the next chain to come back invalid, returned with length 0 under `id`.
  void expect_invalid(uint16_t id) {
    const uint64_t invalid_before = queue_.stats().invalid_chains;
    EXPECT_EQ(queue_.pop(chain_), PopStatus::kInvalidChain);
    EXPECT_EQ(queue_.stats().invalid_chains, invalid_before + 1);
    EXPECT_TRUE(chain_.readable().empty());
    EXPECT_TRUE(chain_.writable().empty());
    EXPECT_FALSE(queue_.broken());
    auto used = ring_->take_used();
    ASSERT_TRUE(used.has_value());
    EXPECT_EQ(used->id, id);
    EXPECT_EQ(used->len, 0u);
  }

  uint8_t* host_ = nullptr;
  std::shared_ptr<const memory::GuestMemory> memory_;
  std::unique_ptr<PackedDriverRing> ring_;
  PackedQueue queue_;
  DescriptorChain chain_;
};

}  // namespace vhost_vsock::virtio::test
