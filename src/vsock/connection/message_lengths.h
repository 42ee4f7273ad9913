// A FIFO of whole-message lengths (kSeqpacket TX buffering). Unlike
// std::deque, which allocates a map and a 512-byte node when it is merely
// constructed, it allocates nothing until the first push: every connection
// has one, and most are streams that never use it.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace vhost_vsock::vsock {

class MessageLengths {
 public:
  [[nodiscard]] bool empty() const { return head_ == lengths_.size(); }
  [[nodiscard]] size_t size() const { return lengths_.size() - head_; }
  [[nodiscard]] uint32_t front() const { return lengths_[head_]; }
  void push_back(uint32_t length) { lengths_.push_back(length); }
  void pop_front() {
    ++head_;
    if (empty()) {
      clear();
    } else if (head_ >= kCompactAfter && head_ * 2 >= lengths_.size()) {
      // Taken entries are at least half: drop them, so a queue that never
      // drains completely still stays within its live size.
      lengths_.erase(lengths_.begin(), lengths_.begin() + static_cast<std::ptrdiff_t>(head_));
      head_ = 0;
    }
  }
  void clear() {
    lengths_ = {};  // frees the storage too
    head_ = 0;
  }

 private:
  static constexpr size_t kCompactAfter = 64;
  std::vector<uint32_t> lengths_;
  size_t head_ = 0;
};

}  // namespace vhost_vsock::vsock
