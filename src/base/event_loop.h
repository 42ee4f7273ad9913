// One epoll loop per VM worker: fd readiness callbacks, one-shot timers, a
// cross-thread mailbox (post) and a thread-safe stop. Everything registered
// or posted here runs on the loop's thread.
#pragma once

#include <sys/epoll.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <vector>

#include "base/bounded_mpsc_queue.h"
#include "base/fd_slot_map.h"
#include "base/inline_task.h"
#include "base/unique_fd.h"

namespace vhost_vsock::base {

class DeferredTask;

class EventLoop {
 public:
  using FdCallback = std::function<void(uint32_t epoll_events)>;
  // Inline storage: arming a timer allocates nothing (captures up to
  // InlineTask::kCapacity bytes; a larger capture fails to compile).
  using TimerCallback = InlineTask;
  using Clock = std::chrono::steady_clock;
  using TimerId = uint64_t;

  // Bounded so that a stalled worker pushes back on its producers instead of
  // growing without limit; 4096 tasks of 64 bytes each is 256 KiB per loop.
  static constexpr size_t kDefaultPostCapacity = 4096;
  // At most this many posted tasks run per loop iteration, so a flood of
  // posts cannot starve fd events and timers.
  static constexpr size_t kPostedTasksPerIteration = 256;

  // `post_capacity` is rounded up to a power of two.
  explicit EventLoop(size_t post_capacity = kDefaultPostCapacity);
  EventLoop(const EventLoop&) = delete;
  EventLoop& operator=(const EventLoop&) = delete;

  // Registers `fd` for `events` (EPOLLIN, EPOLLOUT, EPOLLET, ...). The loop
  // does not own the fd; call remove() before closing it. Throws
  // std::system_error on failure.
  void add(int fd, uint32_t events, FdCallback callback);
  void modify(int fd, uint32_t events);
  // Safe to call from inside any callback, including the fd's own: a removed
  // fd's pending events from the current batch are not delivered.
  void remove(int fd);
  // Passing a watched fd to a new owner without a DEL and an ADD (the hybrid
  // listener to a connection's endpoint): hand_over() drops the callback (its
  // events still in this batch are not delivered) but leaves the fd in epoll,
  // delivering nothing, until the new owner calls take_over(), forget() or
  // remove(). Register such an fd with EPOLLET: a level-triggered one that
  // stays ready would wake every epoll_wait meanwhile. Safe from inside the
  // fd's own callback.
  void hand_over(int fd);
  // add() for an fd handed over (or still watched by its previous owner): one
  // EPOLL_CTL_MOD replaces the registration, reporting the fd's current
  // readiness as ADD would. Not in epoll: the same as add().
  void take_over(int fd, uint32_t events, FdCallback callback);
  // remove() for an fd the caller closes right after, holding the only
  // reference to its open file: close() takes it out of epoll, so this skips
  // the EPOLL_CTL_DEL and only forgets the callback.
  void forget(int fd);
  // In epoll through this loop: watched, or handed over and not yet taken.
  [[nodiscard]] bool watching(int fd) const { return handler_slots_.find(fd) != FdSlotMap::kNoSlot; }
  // Handler slots and fd-table entries held: they follow this loop's own
  // high-water mark of registrations, whatever the fd numbers (for tests and
  // diagnostics).
  [[nodiscard]] size_t handler_slots() const { return handlers_.size(); }
  [[nodiscard]] size_t fd_table_capacity() const { return handler_slots_.capacity(); }

  // One-shot timer. Cancelling an expired or unknown id is a no-op. Ids are
  // never 0.
  TimerId add_timer(std::chrono::milliseconds delay, TimerCallback callback);
  void cancel_timer(TimerId id);
  // Entries in the timer heap, cancelled ones included (bounded at about
  // twice the live timers; exposed for tests and diagnostics).
  [[nodiscard]] size_t timer_heap_size() const { return timers_.size(); }

  // Runs callbacks for ready fds and due timers, waiting at most `max_wait`
  // (negative: until something happens).
  void run_once(std::chrono::milliseconds max_wait = std::chrono::milliseconds(-1));
  // Loops until stop() is called (from any thread).
  void run();
  // Busy polling (--poll-us): called on the loop thread whenever the loop is
  // about to sleep in epoll_wait. Returning true makes that wait non-blocking:
  // the hook watches something no fd signals (a virtqueue's avail ring), or
  // it scheduled work. One hook per loop; an empty one removes it.
  using IdleHook = std::function<bool()>;
  void set_idle_hook(IdleHook hook) { idle_hook_ = std::move(hook); }
  void stop();
  [[nodiscard]] bool stopping() const { return stop_requested_.load(std::memory_order_acquire); }

  // Loop thread only: queues a callback to run after the current batch of
  // events. Allocation-free once the queue has reached its high-water mark.
  void defer(InlineTask callback);

  // Any thread: hands `task` to the loop thread, which runs it within its next
  // iteration (posts from one thread run in the order they were posted). No
  // lock and no allocation. Returns false, leaving `task` untouched for the
  // caller to retry or handle, when the mailbox is full (backpressure) or
  // stop() has been called. A task accepted just before stop() may never run;
  // it is destroyed, releasing its captures, with the loop. The loop must
  // outlive every post() call.
  bool post(InlineTask&& task);
  [[nodiscard]] size_t post_capacity() const { return posted_.capacity(); }

 private:
  friend class DeferredTask;
  // Handlers and timer callbacks live in slots reused from connection to
  // connection, so registering an fd or arming a timer allocates only while
  // the loop reaches a new high-water mark of its own live ones. An fd's
  // epoll_event carries (slot generation << 32) | slot index, not the fd.
  struct Handler {
    uint32_t generation = 0;  // bumped on every reuse, so a stale event never matches
    bool live = false;        // false: free, or removed while its batch runs
    FdCallback callback;
  };
  struct Timer {
    Clock::time_point due;
    uint64_t sequence;  // ties on `due` fire in the order they were armed
    TimerId id;
    bool operator>(const Timer& other) const {
      return due > other.due || (due == other.due && sequence > other.sequence);
    }
  };
  struct TimerSlot {
    uint32_t generation = 0;  // bumped on every reuse, so a stale id never matches
    bool armed = false;
    TimerCallback callback;
  };

  // handler_slots_'s entry for an fd handed over: in epoll, no handler.
  static constexpr uint32_t kHandedOver = FdSlotMap::kNoSlot - 1;

  // add() and take_over(): EPOLL_CTL_MOD when `replace` (ADD if the fd was
  // closed without remove() and its number reused), else EPOLL_CTL_ADD.
  void register_fd(int fd, uint32_t events, FdCallback callback, bool replace);
  // Drops what handler_slots_ held for an fd: a handler, or nothing.
  void drop_entry(uint32_t slot);
  uint32_t take_handler_slot();
  // Frees a slot; while fd callbacks run it is kept (callback and all) until
  // the batch ends: it may hold the callback running.
  void drop_handler(uint32_t slot);
  void recycle(uint32_t slot);
  // The armed slot of `id`, or nullptr if it fired, was cancelled or never existed.
  TimerSlot* armed_timer(TimerId id);
  void release_timer(TimerSlot& slot, TimerId id);
  void dispatch_fd_events(int count);
  int next_timeout_ms(std::chrono::milliseconds max_wait) const;
  void run_due_timers();
  void compact_timers();
  void run_deferred();
  void run_posted();

  UniqueFd epoll_fd_;
  UniqueFd wake_fd_;
  std::deque<Handler> handlers_;            // a deque: a running callback stays put while others are added
  FdSlotMap handler_slots_;                 // fd -> slot in handlers_, live registrations only
  std::vector<uint32_t> free_handlers_;     // callback reset, ready for reuse
  bool dispatching_ = false;                // fd callbacks are running
  std::vector<uint32_t> retired_handlers_;  // dropped while dispatching_
  std::vector<Timer> timers_;               // min-heap on due time (std::greater), cancelled entries included
  std::vector<TimerSlot> timer_slots_;      // a TimerId is (slot generation << 32) | slot index
  std::vector<uint32_t> free_timer_slots_;
  size_t armed_timers_ = 0;
  uint64_t next_timer_sequence_ = 0;
  std::vector<InlineTask> deferred_;
  std::vector<InlineTask> deferred_running_;  // kept to reuse its capacity
  std::vector<DeferredTask*> scheduled_tasks_;
  std::vector<DeferredTask*> running_tasks_;  // kept to reuse its capacity
  std::vector<epoll_event> events_;
  IdleHook idle_hook_;
  std::atomic<bool> stop_requested_{false};  // written by stop() from any thread
  BoundedMpscQueue<InlineTask> posted_;
  // Set by the first post() after a drain began: later posts skip the eventfd
  // write because the loop is already due to wake. RMW on both sides, so a
  // post either sees the flag cleared (and writes) or the drain sees its task.
  std::atomic<bool> wake_pending_{false};
};

// Work coalesced to once per event batch ("process RX after this round of
// kicks and socket events"), scheduled any number of times without
// allocating. Destroying a scheduled task unschedules it.
class DeferredTask {
 public:
  DeferredTask(EventLoop& loop, InlineTask callback) : loop_(loop), callback_(std::move(callback)) {}
  ~DeferredTask();
  DeferredTask(const DeferredTask&) = delete;
  DeferredTask& operator=(const DeferredTask&) = delete;

  // Runs the callback once after the current batch, however often this is called before then.
  void schedule();
  [[nodiscard]] bool scheduled() const { return scheduled_; }

 private:
  friend class EventLoop;
  EventLoop& loop_;
  InlineTask callback_;
  bool scheduled_ = false;
};

}  // namespace vhost_vsock::base
