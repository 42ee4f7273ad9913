// Test support for the split queue tests: the driver's side of a split ring,
// written straight into guest memory the way a guest would (independent of
// the code under test), and a fixture with 1 MiB of guest memory.
#pragma once

#include <endian.h>
#include <gtest/gtest.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <utility>

#include "virtio/features.h"
#include "virtio/split_queue.h"

namespace vhost_vsock::virtio::test {

constexpr uint16_t kNext = 1;
constexpr uint16_t kWrite = 2;
constexpr uint16_t kIndirect = 4;

// The driver's side of a split ring.
class DriverRing {
 public:
  DriverRing(std::shared_ptr<const memory::GuestMemory> memory, uint16_t size, uint64_t desc_gpa, uint64_t avail_gpa,
             uint64_t used_gpa)
      : memory_(std::move(memory)), size_(size), desc_gpa_(desc_gpa), avail_gpa_(avail_gpa), used_gpa_(used_gpa) {
    std::memset(at(desc_gpa_, 16 * size_t{size_}), 0, 16 * size_t{size_});
    std::memset(at(avail_gpa_, 6 + 2 * size_t{size_}), 0, 6 + 2 * size_t{size_});
    std::memset(at(used_gpa_, 6 + 8 * size_t{size_}), 0, 6 + 8 * size_t{size_});
  }

  uint8_t* at(uint64_t gpa, size_t len) {
    uint8_t* p = memory_->translate(gpa, len);
    if (p == nullptr) {
      ADD_FAILURE() << "test ring touches unmapped gpa " << gpa;
      std::abort();
    }
    return p;
  }

  static void write_desc(uint8_t* table, uint16_t i, uint64_t addr, uint32_t len, uint16_t flags, uint16_t next = 0) {
    const uint64_t a = htole64(addr);
    const uint32_t l = htole32(len);
    const uint16_t f = htole16(flags);
    const uint16_t n = htole16(next);
    uint8_t* d = table + 16 * size_t{i};
    std::memcpy(d, &a, 8);
    std::memcpy(d + 8, &l, 4);
    std::memcpy(d + 12, &f, 2);
    std::memcpy(d + 14, &n, 2);
  }
  void set_desc(uint16_t i, uint64_t addr, uint32_t len, uint16_t flags = 0, uint16_t next = 0) {
    write_desc(at(desc_gpa_, 16 * size_t{size_}), i, addr, len, flags, next);
  }
  void make_available(uint16_t head) {
    put16(avail_gpa_ + 4 + 2 * size_t(avail_idx_ % size_), head);
    set_avail_idx(static_cast<uint16_t>(avail_idx_ + 1));
  }
  void set_avail_idx(uint16_t idx) {
    avail_idx_ = idx;
    put16(avail_gpa_ + 2, idx);
  }
  void set_avail_flags(uint16_t flags) { put16(avail_gpa_, flags); }
  void set_used_event(uint16_t idx) { put16(avail_gpa_ + 4 + 2 * size_t{size_}, idx); }
  void set_used_idx(uint16_t idx) { put16(used_gpa_ + 2, idx); }

  uint16_t used_idx() { return get16(used_gpa_ + 2); }
  uint16_t used_flags() { return get16(used_gpa_); }
  uint16_t avail_event() { return get16(used_gpa_ + 4 + 8 * size_t{size_}); }
  std::pair<uint32_t, uint32_t> used_elem(uint16_t slot) {
    uint32_t id, len;
    std::memcpy(&id, at(used_gpa_ + 4 + 8 * size_t{slot}, 4), 4);
    std::memcpy(&len, at(used_gpa_ + 8 + 8 * size_t{slot}, 4), 4);
    return {le32toh(id), le32toh(len)};
  }

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
  uint64_t desc_gpa_, avail_gpa_, used_gpa_;
  uint16_t avail_idx_ = 0;
};

constexpr uint64_t kBase = 0x100000;
constexpr size_t kMemSize = 1 << 20;
constexpr uint64_t kDesc = kBase;
constexpr uint64_t kAvail = kBase + 0x10000;
constexpr uint64_t kUsed = kBase + 0x20000;
constexpr uint64_t kData = kBase + 0x40000;  // buffers from here to the end
constexpr uint64_t kEnd = kBase + kMemSize;

// 1 MiB of anonymous memory as guest memory at kBase.
class SplitQueueTest : public ::testing::Test {
 protected:
  void SetUp() override {
    host_ =
        static_cast<uint8_t*>(::mmap(nullptr, kMemSize, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
    ASSERT_NE(host_, MAP_FAILED);
    memory_ = memory::GuestMemory::wrap_existing(kBase, {host_, kMemSize});
    ASSERT_NE(memory_, nullptr);
  }
  void TearDown() override {
    queue_.reset();
    ring_.reset();
    memory_.reset();
    ::munmap(host_, kMemSize);
  }

  void start(uint16_t size, uint64_t features = kFeatureVersion1) {
    ring_ = std::make_unique<DriverRing>(memory_, size, kDesc, kAvail, kUsed);
    queue_.set_features(features);
    // As the vhost-user session does (SET_VRING_CALL): decisions count as sent.
    if (!queue_.has_call_fd()) queue_.set_call_fd(base::UniqueFd(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)));
    std::string error;
    ASSERT_TRUE(queue_.configure(memory_, size, kDesc, kAvail, kUsed, &error)) << error;
  }

  uint8_t* host(uint64_t gpa) { return host_ + (gpa - kBase); }

  // Expects `head` to come back as invalid, returned to the driver with len 0.
  void expect_invalid(uint16_t head) {
    const uint16_t used_before = ring_->used_idx();
    const uint64_t invalid_before = queue_.stats().invalid_chains;
    EXPECT_EQ(queue_.pop(chain_), PopStatus::kInvalidChain);
    EXPECT_EQ(ring_->used_idx(), static_cast<uint16_t>(used_before + 1));
    const auto [id, len] = ring_->used_elem(used_before % queue_.size());
    EXPECT_EQ(id, head);
    EXPECT_EQ(len, 0u);
    EXPECT_EQ(queue_.stats().invalid_chains, invalid_before + 1);
    EXPECT_TRUE(chain_.readable().empty());
    EXPECT_TRUE(chain_.writable().empty());
    EXPECT_FALSE(queue_.broken());
  }

  uint8_t* host_ = nullptr;
  std::shared_ptr<const memory::GuestMemory> memory_;
  std::unique_ptr<DriverRing> ring_;
  SplitQueue queue_;
  DescriptorChain chain_;
};

}  // namespace vhost_vsock::virtio::test
