// A minimal intrusive FIFO: elements carry their own hook, so linking and
// unlinking never allocate and an element can leave every list in O(1) when it
// is destroyed. Used for the RX scheduler's "owes a control packet" and "has data"
// lists.
#pragma once

namespace vhost_vsock::vsock {

template <typename T>
struct ListHook {
  T* owner = nullptr;
  ListHook* prev = nullptr;
  ListHook* next = nullptr;
  [[nodiscard]] bool linked() const { return prev != nullptr; }
  void unlink() {
    if (!linked()) return;
    prev->next = next;
    next->prev = prev;
    prev = next = nullptr;
  }
};

template <typename T>
class IntrusiveList {
 public:
  IntrusiveList() { head_.prev = head_.next = &head_; }
  IntrusiveList(const IntrusiveList&) = delete;
  IntrusiveList& operator=(const IntrusiveList&) = delete;
  ~IntrusiveList() { clear(); }

  [[nodiscard]] bool empty() const { return head_.next == &head_; }
  void push_back(ListHook<T>& hook) {
    if (hook.linked()) return;
    hook.prev = head_.prev;
    hook.next = &head_;
    head_.prev->next = &hook;
    head_.prev = &hook;
  }
  [[nodiscard]] T* front() const { return empty() ? nullptr : head_.next->owner; }
  T* pop_front() {
    if (empty()) return nullptr;
    ListHook<T>* hook = head_.next;
    hook->unlink();
    return hook->owner;
  }
  void clear() {
    while (!empty()) head_.next->unlink();
  }

 private:
  ListHook<T> head_;
};

}  // namespace vhost_vsock::vsock
