#include "virtio/queue.h"

#include <spdlog/spdlog.h>
#include <unistd.h>

#include <atomic>
#include <bit>
#include <cerrno>

#include "base/errno_text.h"

namespace vhost_vsock::virtio {

std::optional<NotifyTracker::Window> NotifyTracker::begin(uint32_t published) {
  std::atomic_thread_fence(std::memory_order_seq_cst);
  if (published == last_) return std::nullopt;
  const Window window{last_, published, decided_once_};
  last_ = published;
  decided_once_ = true;
  return window;
}

bool Queue::count_decision(bool wanted, bool has_call_fd, QueueStats& stats) {
  if (!wanted) {
    ++stats.notifications_suppressed;
  } else if (!has_call_fd) {
    ++stats.notifications_without_fd;
  } else {
    ++stats.notifications_sent;
  }
  return wanted && has_call_fd;
}

void Queue::write_call_fd(int call_fd, QueueStats& stats, std::string_view log_name) {
  const uint64_t one = 1;
  // EAGAIN: the counter is saturated, so the front-end has a signal pending anyway.
  if (::write(call_fd, &one, sizeof(one)) == sizeof(one) || errno == EAGAIN) return;
  const int error = errno;
  ++stats.call_fd_errors;
  // Rate-limited (1st, 2nd, 4th, ...): the front-end chose the fd.
  if (std::has_single_bit(stats.call_fd_errors)) {
    spdlog::warn("{}: writing the call eventfd failed: {} ({} so far)", log_name, base::errno_text(error),
                 stats.call_fd_errors);
  }
}

}  // namespace vhost_vsock::virtio
