// A bounded multi-producer single-consumer queue without locks, allocated
// once at construction.
//
// Design: Dmitry Vyukov's bounded MPMC ring of sequence-numbered cells,
// restricted to one consumer so the read position is a plain integer. A
// producer claims a slot with one CAS on the write position and publishes it
// with a release store of the cell's sequence; the consumer's acquire load of
// that sequence is what makes the element visible. No producer ever waits for
// another producer's element to be consumed: a full ring makes try_push()
// return false at once (lock-free, not wait-free: a CAS may retry under
// contention).
#pragma once

#include <atomic>
#include <bit>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <type_traits>

namespace vhost_vsock::base {

template <typename T>
class BoundedMpscQueue {
  static_assert(std::is_nothrow_move_assignable_v<T> && std::is_nothrow_default_constructible_v<T>);

 public:
  // `capacity` is rounded up to a power of two (at least 2).
  explicit BoundedMpscQueue(size_t capacity)
      : mask_(std::bit_ceil(capacity < 2 ? size_t{2} : capacity) - 1), cells_(new Cell[mask_ + 1]) {
    for (size_t i = 0; i <= mask_; ++i) cells_[i].sequence.store(i, std::memory_order_relaxed);
  }
  BoundedMpscQueue(const BoundedMpscQueue&) = delete;
  BoundedMpscQueue& operator=(const BoundedMpscQueue&) = delete;

  [[nodiscard]] size_t capacity() const { return mask_ + 1; }

  // Any thread. Moves from `value` only on success; false means full.
  bool try_push(T& value) {
    size_t pos = write_pos_.load(std::memory_order_relaxed);
    Cell* cell = nullptr;
    for (;;) {
      cell = &cells_[pos & mask_];
      size_t sequence = cell->sequence.load(std::memory_order_acquire);
      auto lag = static_cast<std::intptr_t>(sequence) - static_cast<std::intptr_t>(pos);
      if (lag == 0) {
        if (write_pos_.compare_exchange_weak(pos, pos + 1, std::memory_order_relaxed)) break;
      } else if (lag < 0) {
        return false;  // the consumer has not freed this cell yet: full
      } else {
        pos = write_pos_.load(std::memory_order_relaxed);  // another producer took it
      }
    }
    cell->value = std::move(value);
    cell->sequence.store(pos + 1, std::memory_order_release);
    return true;
  }

  // Consumer thread only.
  std::optional<T> try_pop() {
    Cell& cell = cells_[read_pos_ & mask_];
    if (cell.sequence.load(std::memory_order_acquire) != read_pos_ + 1) return std::nullopt;
    std::optional<T> value(std::move(cell.value));
    cell.value = T{};  // release the moved-from element's resources now, not when overwritten
    cell.sequence.store(read_pos_ + mask_ + 1, std::memory_order_release);
    ++read_pos_;
    return value;
  }

  // Consumer thread only: whether try_pop() would return an element.
  [[nodiscard]] bool ready() const {
    return cells_[read_pos_ & mask_].sequence.load(std::memory_order_acquire) == read_pos_ + 1;
  }

 private:
  static constexpr size_t kCacheLine = 64;
  struct alignas(kCacheLine) Cell {
    std::atomic<size_t> sequence;
    T value;
  };

  const size_t mask_;
  const std::unique_ptr<Cell[]> cells_;
  alignas(kCacheLine) std::atomic<size_t> write_pos_{0};  // shared by producers
  alignas(kCacheLine) size_t read_pos_ = 0;               // consumer only
};

}  // namespace vhost_vsock::base
