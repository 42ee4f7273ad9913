#include "base/event_loop.h"

#include <sys/eventfd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <limits>
#include <stdexcept>
#include <system_error>

namespace vhost_vsock::base {
namespace {

[[noreturn]] void throw_errno(const char* what) {
  throw std::system_error(errno, std::generic_category(), what);
}

uint64_t pack(uint32_t slot, uint32_t generation) {
  return (static_cast<uint64_t>(generation) << 32) | slot;
}

}  // namespace

EventLoop::EventLoop(size_t post_capacity) : events_(256), posted_(post_capacity) {
  constexpr size_t kDeferredReserve = 64;
  deferred_.reserve(kDeferredReserve);
  deferred_running_.reserve(kDeferredReserve);
  epoll_fd_.reset(::epoll_create1(EPOLL_CLOEXEC));
  if (!epoll_fd_) throw_errno("epoll_create1");
  wake_fd_.reset(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  if (!wake_fd_) throw_errno("eventfd");
  add(wake_fd_.get(), EPOLLIN, [this](uint32_t) {
    uint64_t value = 0;
    [[maybe_unused]] auto n = ::read(wake_fd_.get(), &value, sizeof(value));
  });
}

void EventLoop::add(int fd, uint32_t events, FdCallback callback) {
  register_fd(fd, events, std::move(callback), false);
}

void EventLoop::take_over(int fd, uint32_t events, FdCallback callback) {
  register_fd(fd, events, std::move(callback), watching(fd));
}

void EventLoop::register_fd(int fd, uint32_t events, FdCallback callback, bool replace) {
  // A new slot even when replacing: the old callback may be the one running.
  const uint32_t slot = take_handler_slot();
  Handler& handler = handlers_[slot];
  ++handler.generation;
  epoll_event ev{};
  ev.events = events;
  ev.data.u64 = pack(slot, handler.generation);
  const bool modified = replace && ::epoll_ctl(epoll_fd_.get(), EPOLL_CTL_MOD, fd, &ev) == 0;
  if (!modified && ::epoll_ctl(epoll_fd_.get(), EPOLL_CTL_ADD, fd, &ev) != 0) {
    const int error = errno;
    free_handlers_.push_back(slot);
    errno = error;
    throw_errno("epoll_ctl(ADD)");
  }
  drop_entry(handler_slots_.erase(fd));  // handed over, or closed without remove()
  handler_slots_.insert(fd, slot);
  handler.live = true;
  handler.callback = std::move(callback);
}

uint32_t EventLoop::take_handler_slot() {
  if (!free_handlers_.empty()) {
    const uint32_t slot = free_handlers_.back();
    free_handlers_.pop_back();
    return slot;
  }
  if (handlers_.size() >= kHandedOver) throw std::length_error("EventLoop: fds");
  handlers_.emplace_back();
  return static_cast<uint32_t>(handlers_.size() - 1);
}

void EventLoop::modify(int fd, uint32_t events) {
  const uint32_t slot = handler_slots_.find(fd);
  if (slot == FdSlotMap::kNoSlot || slot == kHandedOver) return;
  epoll_event ev{};
  ev.events = events;
  ev.data.u64 = pack(slot, handlers_[slot].generation);
  if (::epoll_ctl(epoll_fd_.get(), EPOLL_CTL_MOD, fd, &ev) != 0) throw_errno("epoll_ctl(MOD)");
}

void EventLoop::remove(int fd) {
  const uint32_t slot = handler_slots_.erase(fd);
  if (slot == FdSlotMap::kNoSlot) return;
  drop_entry(slot);
  // The fd may already be closed by its owner; that removes it from epoll too.
  ::epoll_ctl(epoll_fd_.get(), EPOLL_CTL_DEL, fd, nullptr);
}

void EventLoop::forget(int fd) {
  drop_entry(handler_slots_.erase(fd));
}

void EventLoop::hand_over(int fd) {
  const uint32_t slot = handler_slots_.find(fd);
  if (slot == FdSlotMap::kNoSlot || slot == kHandedOver) return;
  handler_slots_.erase(fd);
  drop_handler(slot);  // epoll's events carry this slot's generation: once reused, they match nothing
  handler_slots_.insert(fd, kHandedOver);
}

void EventLoop::drop_entry(uint32_t slot) {
  if (slot != FdSlotMap::kNoSlot && slot != kHandedOver) drop_handler(slot);
}

void EventLoop::drop_handler(uint32_t slot) {
  handlers_[slot].live = false;  // its events still in this batch are skipped
  if (dispatching_) {
    retired_handlers_.push_back(slot);  // the callback stays where it is
  } else {
    recycle(slot);
  }
}

void EventLoop::recycle(uint32_t slot) {
  FdCallback dropped;
  dropped.swap(handlers_[slot].callback);
  free_handlers_.push_back(slot);
  // `dropped` releases its captures last: their destructors may call back into the loop.
}

EventLoop::TimerId EventLoop::add_timer(std::chrono::milliseconds delay, TimerCallback callback) {
  uint32_t index = 0;
  if (free_timer_slots_.empty()) {
    if (timer_slots_.size() > std::numeric_limits<uint32_t>::max()) throw std::length_error("EventLoop: timers");
    index = static_cast<uint32_t>(timer_slots_.size());
    timer_slots_.emplace_back();
  } else {
    index = free_timer_slots_.back();
    free_timer_slots_.pop_back();
  }
  TimerSlot& slot = timer_slots_[index];
  if (++slot.generation == 0) slot.generation = 1;  // an id is never 0
  slot.armed = true;
  slot.callback = std::move(callback);
  ++armed_timers_;
  const TimerId id = (uint64_t{slot.generation} << 32) | index;
  timers_.push_back(Timer{Clock::now() + delay, next_timer_sequence_++, id});
  std::push_heap(timers_.begin(), timers_.end(), std::greater<>{});
  return id;
}

EventLoop::TimerSlot* EventLoop::armed_timer(TimerId id) {
  const uint64_t index = id & 0xffffffffU;
  if (index >= timer_slots_.size()) return nullptr;
  TimerSlot& slot = timer_slots_[index];
  return slot.armed && slot.generation == static_cast<uint32_t>(id >> 32) ? &slot : nullptr;
}

void EventLoop::release_timer(TimerSlot& slot, TimerId id) {
  slot.armed = false;
  free_timer_slots_.push_back(static_cast<uint32_t>(id & 0xffffffffU));
  --armed_timers_;
}

void EventLoop::cancel_timer(TimerId id) {
  TimerSlot* slot = armed_timer(id);
  if (slot == nullptr) return;
  TimerCallback dropped = std::move(slot->callback);
  release_timer(*slot, id);
  // A cancelled entry stays in the heap until due. Timers that are set and
  // cancelled per connection (request, handshake) would otherwise pile up for
  // a whole timeout under churn; compacting at 2x keeps the cost amortised O(1).
  constexpr size_t kCompactAbove = 64;
  if (timers_.size() > kCompactAbove && timers_.size() > 2 * armed_timers_) compact_timers();
}

void EventLoop::compact_timers() {
  std::erase_if(timers_, [this](const Timer& timer) { return armed_timer(timer.id) == nullptr; });
  std::make_heap(timers_.begin(), timers_.end(), std::greater<>{});
}

void EventLoop::defer(InlineTask callback) {
  deferred_.push_back(std::move(callback));
}

bool EventLoop::post(InlineTask&& task) {
  if (stopping() || !posted_.try_push(task)) return false;
  if (!wake_pending_.exchange(true, std::memory_order_acq_rel)) {
    uint64_t one = 1;
    [[maybe_unused]] auto n = ::write(wake_fd_.get(), &one, sizeof(one));
  }
  return true;
}

void EventLoop::run_posted() {
  // Before draining: a post() that finds the flag set relies on this drain.
  wake_pending_.exchange(false, std::memory_order_acq_rel);
  for (size_t budget = kPostedTasksPerIteration; budget > 0; --budget) {
    std::optional<InlineTask> task = posted_.try_pop();
    if (!task) return;
    (*task)();
  }
}

int EventLoop::next_timeout_ms(std::chrono::milliseconds max_wait) const {
  if (!deferred_.empty() || !scheduled_tasks_.empty() || posted_.ready()) return 0;
  int wait = max_wait.count() < 0 ? -1 : static_cast<int>(max_wait.count());
  if (!timers_.empty()) {
    // Rounded up: a timer due in under a millisecond must not make the wait 0,
    // or the loop would spin until it is due.
    const auto left = timers_.front().due - Clock::now();
    const int timer_wait = left <= Clock::duration::zero()
                               ? 0
                               : static_cast<int>(std::chrono::ceil<std::chrono::milliseconds>(left).count());
    if (wait < 0 || timer_wait < wait) wait = timer_wait;
  }
  return wait;
}

void EventLoop::run_due_timers() {
  auto now = Clock::now();
  // Bounded by the number of timers present now; timers added by callbacks wait.
  size_t budget = timers_.size();
  while (budget-- > 0 && !timers_.empty() && timers_.front().due <= now) {
    TimerId id = timers_.front().id;
    std::pop_heap(timers_.begin(), timers_.end(), std::greater<>{});
    timers_.pop_back();
    TimerSlot* slot = armed_timer(id);
    if (slot == nullptr) continue;  // cancelled
    TimerCallback callback = std::move(slot->callback);
    release_timer(*slot, id);
    callback();
  }
}

void EventLoop::run_deferred() {
  // Work deferred or scheduled by these callbacks runs in the next round, so
  // each round is bounded. The swapped-out vectors keep their capacity.
  running_tasks_.swap(scheduled_tasks_);
  for (size_t i = 0; i < running_tasks_.size(); ++i) {
    DeferredTask* task = running_tasks_[i];
    if (task == nullptr) continue;  // destroyed by an earlier task of this round
    task->scheduled_ = false;
    task->callback_();
  }
  running_tasks_.clear();

  deferred_running_.swap(deferred_);
  for (auto& callback : deferred_running_) callback();
  deferred_running_.clear();
}

void DeferredTask::schedule() {
  if (scheduled_) return;
  scheduled_ = true;
  loop_.scheduled_tasks_.push_back(this);
}

DeferredTask::~DeferredTask() {
  // Rare (teardown), so a scan is fine; the running batch may hold us too.
  for (auto* list : {&loop_.scheduled_tasks_, &loop_.running_tasks_}) {
    for (auto& task : *list) {
      if (task == this) task = nullptr;
    }
  }
}

void EventLoop::dispatch_fd_events(int count) {
  // Callbacks run in place, not copied (a copy can allocate): a handler
  // dropped meanwhile is retired, not destroyed, until the batch is over.
  struct Batch {
    EventLoop& loop;
    explicit Batch(EventLoop& owner) : loop(owner) { loop.dispatching_ = true; }
    ~Batch() {
      loop.dispatching_ = false;
      for (const uint32_t slot : loop.retired_handlers_) loop.recycle(slot);
      loop.retired_handlers_.clear();
    }
  } batch(*this);
  for (int i = 0; i < count; ++i) {
    const auto slot = static_cast<uint32_t>(events_[i].data.u64);
    const auto generation = static_cast<uint32_t>(events_[i].data.u64 >> 32);
    if (slot >= handlers_.size()) continue;
    Handler& handler = handlers_[slot];
    if (!handler.live || handler.generation != generation) continue;  // removed this round
    handler.callback(events_[i].events);
  }
}

void EventLoop::run_once(std::chrono::milliseconds max_wait) {
  int timeout = next_timeout_ms(max_wait);
  if (timeout != 0 && idle_hook_ && idle_hook_()) timeout = 0;
  int n = ::epoll_wait(epoll_fd_.get(), events_.data(), static_cast<int>(events_.size()), timeout);
  if (n < 0) {
    if (errno == EINTR) return;
    throw_errno("epoll_wait");
  }
  dispatch_fd_events(n);
  run_due_timers();
  run_posted();
  run_deferred();
}

void EventLoop::run() {
  while (!stop_requested_.load(std::memory_order_acquire)) run_once();
}

void EventLoop::stop() {
  stop_requested_.store(true, std::memory_order_release);
  uint64_t one = 1;
  [[maybe_unused]] auto n = ::write(wake_fd_.get(), &one, sizeof(one));
}

}  // namespace vhost_vsock::base
