// Fuzzes the vhost-user backend as a hostile front-end would see it: message
// bytes, in arbitrary pieces, with arbitrary numbers of memfds and eventfds
// attached, sent over a real socketpair into FrontendConnection (framing,
// SCM_RIGHTS handling, Session protocol state, ring start/stop). A fake device
// drains kicked queues, so descriptor chains over fuzzed guest RAM are walked.
//
// Seeds: fuzz/corpus/vhost_user/ (QEMU's start-up sequence, stop, hotplug, ...).
// Input: a sequence of records, each starting with a control byte c.
//   c >> 6 == 0 or 1: a stream chunk. Next byte + 1 = chunk length, then the
//       bytes. c & 7 = fds sent with it (c & 8: eventfds, else memfds of the
//       guest RAM); c & 16: afterwards kick every eventfd and run the loop.
//   c >> 6 == 2: write guest RAM. Next two bytes * 16 = offset, next byte + 1
//       = length, then the bytes.
//   c >> 6 == 3: kick every eventfd, run the loop, notify on ring c & 1 (if
//       started: Queue::notify() writes whatever call fd the ring has now).
#include <fcntl.h>
#include <spdlog/spdlog.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "base/event_loop.h"
#include "base/unique_fd.h"
#include "testing/fd_passing.h"
#include "vhost_user/connection.h"
#include "vhost_user/device.h"

namespace {

using namespace vhost_vsock;

constexpr size_t kRamSize = 1 << 20;
constexpr size_t kMaxFdsPerRun = 96;

class FuzzDevice : public vhost_user::Device {
 public:
  uint64_t device_features() const override { return 1ULL << 0; }
  uint16_t queue_count() const override { return 2; }
  std::vector<uint8_t> config_space() const override { return {3, 0, 0, 0, 0, 0, 0, 0}; }
  void on_features_negotiated(uint64_t) override {}
  void on_queue_started(uint16_t index, virtio::Queue& queue, vhost_user::RingStart /*how*/) override {
    queues_[index] = &queue;
  }
  void on_queue_stopped(uint16_t index) override { queues_[index] = nullptr; }
  void on_queue_kicked(uint16_t index) override {
    virtio::Queue* queue = queues_[index];
    if (queue == nullptr) __builtin_trap();  // kicked while stopped: a lifecycle bug
    // Bounded: at most one pass over the ring per kick.
    for (uint32_t i = 0; i < queue->size(); ++i) {
      auto status = queue->pop(chain_);
      if (status == virtio::PopStatus::kEmpty || status == virtio::PopStatus::kBroken) break;
      if (status == virtio::PopStatus::kChain) {
        queue->add_used(chain_.id(), static_cast<uint32_t>(std::min<size_t>(chain_.writable_bytes(), 1)));
      }
    }
    queue->notify();
  }
  void on_frontend_disconnected() override {
    if (queues_[0] != nullptr || queues_[1] != nullptr) __builtin_trap();  // must be stopped first
  }
  void notify(uint16_t index) {
    if (queues_[index] != nullptr) queues_[index]->notify();
  }

 private:
  virtio::Queue* queues_[2] = {nullptr, nullptr};
  virtio::DescriptorChain chain_;
};

class Input {
 public:
  Input(const uint8_t* data, size_t size) : data_(data), size_(size) {}
  bool empty() const { return offset_ >= size_; }
  uint8_t byte() { return empty() ? 0 : data_[offset_++]; }
  std::pair<const uint8_t*, size_t> take(size_t count) {
    count = std::min(count, size_ - offset_);
    const uint8_t* start = data_ + offset_;
    offset_ += count;
    return {start, count};
  }

 private:
  const uint8_t* data_;
  size_t size_;
  size_t offset_ = 0;
};

bool send_chunk(int socket, const uint8_t* bytes, size_t length, const std::vector<int>& fds) {
  const iovec iov{const_cast<uint8_t*>(bytes), length};
  return testing::send_with_fds(socket, {&iov, 1}, fds, MSG_NOSIGNAL | MSG_DONTWAIT) == static_cast<ssize_t>(length);
}

void drain_replies(int socket) {
  uint8_t buffer[4096];
  while (::recv(socket, buffer, sizeof(buffer), MSG_DONTWAIT) > 0) {
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const bool quiet = [] {
    // VUV_FUZZ_LOG=1 shows what the backend made of an input (e.g. a seed).
    spdlog::set_level(std::getenv("VUV_FUZZ_LOG") != nullptr ? spdlog::level::debug : spdlog::level::off);
    return true;
  }();
  (void)quiet;

  base::UniqueFd ram(::memfd_create("fuzz-ram", MFD_CLOEXEC));
  if (!ram || ::ftruncate(ram.get(), kRamSize) != 0) return 0;
  void* ram_mapping = ::mmap(nullptr, kRamSize, PROT_READ | PROT_WRITE, MAP_SHARED, ram.get(), 0);
  if (ram_mapping == MAP_FAILED) return 0;
  auto* ram_bytes = static_cast<uint8_t*>(ram_mapping);

  int pair[2];
  if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, pair) != 0) {
    ::munmap(ram_mapping, kRamSize);
    return 0;
  }
  base::UniqueFd frontend(pair[0]);
  base::EventLoop loop;
  FuzzDevice device;
  vhost_user::ServerStats stats;
  {
    base::UniqueFd backend(pair[1]);
    int flags = ::fcntl(backend.get(), F_GETFL);
    ::fcntl(backend.get(), F_SETFL, flags | O_NONBLOCK);
    vhost_user::FrontendConnection connection(loop, std::move(backend), device, stats, "fuzz");
    std::vector<base::UniqueFd> kick_writers;  // our ends of every eventfd sent
    size_t fds_created = 0;
    bool alive = true;

    auto kick_all_and_run = [&] {
      uint64_t one = 1;
      for (auto& fd : kick_writers) [[maybe_unused]] auto n = ::write(fd.get(), &one, sizeof(one));
      loop.run_once(std::chrono::milliseconds(0));
    };

    Input input(data, size);
    while (alive && !input.empty()) {
      uint8_t control = input.byte();
      switch (control >> 6) {
        case 0:
        case 1: {
          size_t length = size_t{input.byte()} + 1;
          auto [bytes, count] = input.take(length);
          if (count == 0) break;
          std::vector<base::UniqueFd> owned;
          std::vector<int> fds;
          for (int i = 0; i < (control & 7) && fds_created < kMaxFdsPerRun; ++i, ++fds_created) {
            if ((control & 8) != 0) {
              base::UniqueFd event(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
              kick_writers.emplace_back(::dup(event.get()));
              owned.push_back(std::move(event));
            } else {
              owned.emplace_back(::fcntl(ram.get(), F_DUPFD_CLOEXEC, 0));
            }
            fds.push_back(owned.back().get());
          }
          if (!send_chunk(frontend.get(), bytes, count, fds)) {
            alive = false;
            break;
          }
          alive = connection.on_socket_event(EPOLLIN);
          drain_replies(frontend.get());
          if (alive && (control & 16) != 0) kick_all_and_run();
          break;
        }
        case 2: {
          size_t offset = ((size_t{input.byte()} << 8) | input.byte()) * 16;
          size_t length = size_t{input.byte()} + 1;
          auto [bytes, count] = input.take(length);
          count = std::min(count, kRamSize - std::min(offset, kRamSize));
          if (count > 0) std::memcpy(ram_bytes + offset, bytes, count);
          break;
        }
        default:
          kick_all_and_run();
          device.notify(control & 1);
          break;
      }
    }
  }  // the connection shuts the session down before the loop goes away
  ::munmap(ram_mapping, kRamSize);
  return 0;
}
