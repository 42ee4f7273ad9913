// Test-only helpers shared by the vhost_user unit tests: a Device that records
// what the server tells it, and memfd-backed guest RAM with a ring layout.
#pragma once

#include <fcntl.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <unistd.h>

#include <array>
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

#include "base/unique_fd.h"
#include "vhost_user/device.h"
#include "vhost_user/message.h"
#include "virtio/queue.h"

namespace vhost_vsock::vhost_user::test {

inline constexpr uint64_t kDeviceFeature = 1ULL << 1;  // any device-specific bit

class FakeDevice : public Device {
 public:
  [[nodiscard]] uint64_t device_features() const override { return kDeviceFeature; }
  [[nodiscard]] uint16_t queue_count() const override { return 2; }
  [[nodiscard]] std::vector<uint8_t> config_space() const override { return config; }
  [[nodiscard]] uint16_t max_queue_size() const override { return max_size; }

  void on_features_negotiated(uint64_t features) override {
    negotiated = features;
    events.push_back("features");
  }
  void on_queue_started(uint16_t index, virtio::Queue& queue, RingStart how) override {
    queues.at(index) = &queue;
    starts.at(index) = how;
    events.push_back("started " + std::to_string(index));
  }
  void on_queue_stopped(uint16_t index) override {
    queues.at(index) = nullptr;
    events.push_back("stopped " + std::to_string(index));
  }
  void on_queue_kicked(uint16_t index) override {
    ++kicks.at(index);
    events.push_back("kicked " + std::to_string(index));
  }
  void on_frontend_disconnected() override { events.push_back("disconnected"); }

  [[nodiscard]] size_t count(const std::string& event) const {
    size_t n = 0;
    for (const auto& e : events) n += e == event ? 1 : 0;
    return n;
  }

  std::vector<uint8_t> config = {3, 0, 0, 0, 0, 0, 0, 0};  // le64 guest_cid = 3
  std::vector<std::string> events;
  std::array<virtio::Queue*, 2> queues{};
  std::array<int, 2> kicks{};
  std::array<RingStart, 2> starts{};
  uint64_t negotiated = 0;
  uint16_t max_size = virtio::kMaxQueueSize;
};

// Guest RAM in a memfd, mapped here as the front-end would map it.
class GuestRam {
 public:
  explicit GuestRam(size_t size) : size_(size) {
    fd_.reset(::memfd_create("vhost-user-test-ram", MFD_CLOEXEC));
    if (!fd_ || ::ftruncate(fd_.get(), static_cast<off_t>(size)) != 0) throw std::runtime_error("memfd");
    void* mapping = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd_.get(), 0);
    if (mapping == MAP_FAILED) throw std::runtime_error("mmap");
    host_ = static_cast<uint8_t*>(mapping);
  }
  ~GuestRam() { ::munmap(host_, size_); }
  GuestRam(const GuestRam&) = delete;
  GuestRam& operator=(const GuestRam&) = delete;

  [[nodiscard]] base::UniqueFd dup_fd() const { return base::UniqueFd(::fcntl(fd_.get(), F_DUPFD_CLOEXEC, 0)); }
  [[nodiscard]] uint8_t* host() const { return host_; }
  [[nodiscard]] size_t size() const { return size_; }

 private:
  base::UniqueFd fd_;
  uint8_t* host_ = nullptr;
  size_t size_;
};

// One region at guest-physical 0 and front-end address kUserBase, with two
// rings of kRingSize entries laid out inside it.
// A back-end reply as the tests read it off the socket.
struct Reply {
  MessageHeader header;
  std::vector<uint8_t> payload;
};

inline constexpr uint64_t kUserBase = 0x7f0000000000;
inline constexpr uint32_t kRingSize = 8;
inline constexpr size_t kRamSize = 1 << 20;

inline VringAddress ring_address(uint32_t index) {
  uint64_t base = kUserBase + 0x10000 + index * 0x4000ULL;
  return VringAddress{index, 0, base, base + 0x2000, base + 0x1000, 0};  // desc, used, avail
}

inline base::UniqueFd make_eventfd() {
  return base::UniqueFd(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
}

// Reads and clears an eventfd's counter; 0 when it was not signalled.
inline uint64_t drain_eventfd(int fd) {
  uint64_t value = 0;
  if (::read(fd, &value, sizeof(value)) != sizeof(value)) return 0;
  return value;
}

}  // namespace vhost_vsock::vhost_user::test
