#include "vsock/connection/tx_ring_buffer.h"

#include <algorithm>
#include <cstring>

namespace vhost_vsock::vsock {

void TxRingBuffer::ensure_storage() {
  if (!storage_) storage_ = std::make_unique_for_overwrite<uint8_t[]>(capacity_);
}

void TxRingBuffer::set_capacity(size_t capacity) {
  if (!storage_) {
    capacity_ = capacity;
    return;
  }
  if (capacity <= capacity_) return;
  auto larger = std::make_unique_for_overwrite<uint8_t[]>(capacity);
  iovec held[2];
  const size_t count = readable_iovecs(held);
  size_t copied = 0;
  for (size_t i = 0; i < count; ++i) {
    std::memcpy(larger.get() + copied, held[i].iov_base, held[i].iov_len);
    copied += held[i].iov_len;
  }
  storage_ = std::move(larger);
  capacity_ = capacity;
  head_ = 0;
}

size_t TxRingBuffer::append(std::span<const iovec> src, size_t offset, size_t max_bytes) {
  size_t want = std::min(max_bytes, free_space());
  if (want == 0) return 0;
  ensure_storage();
  size_t appended = 0;
  for (const auto& iov : src) {
    if (appended == want) break;
    if (offset >= iov.iov_len) {
      offset -= iov.iov_len;
      continue;
    }
    const auto* from = static_cast<const uint8_t*>(iov.iov_base) + offset;
    size_t chunk = std::min(iov.iov_len - offset, want - appended);
    offset = 0;
    while (chunk > 0) {
      size_t tail = (head_ + size_) % capacity_;
      size_t contiguous = std::min(chunk, capacity_ - tail);
      std::memcpy(storage_.get() + tail, from, contiguous);
      from += contiguous;
      chunk -= contiguous;
      size_ += contiguous;
      appended += contiguous;
    }
  }
  return appended;
}

size_t TxRingBuffer::append(std::span<const uint8_t> bytes) {
  iovec iov{const_cast<uint8_t*>(bytes.data()), bytes.size()};
  return append(std::span<const iovec>(&iov, 1), 0, bytes.size());
}

size_t TxRingBuffer::readable_iovecs(iovec (&out)[2]) const {
  if (size_ == 0) return 0;
  size_t first = std::min(size_, capacity_ - head_);
  out[0] = iovec{storage_.get() + head_, first};
  if (first == size_) return 1;
  out[1] = iovec{storage_.get(), size_ - first};
  return 2;
}

void TxRingBuffer::consume(size_t bytes) {
  bytes = std::min(bytes, size_);
  size_ -= bytes;
  head_ = size_ == 0 ? 0 : (head_ + bytes) % capacity_;
  if (size_ == 0) storage_.reset();
}

void TxRingBuffer::clear() {
  size_ = 0;
  head_ = 0;
  storage_.reset();
}

}  // namespace vhost_vsock::vsock
