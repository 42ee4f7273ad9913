// Guest->host bytes a connection holds while its host socket would block.
// The connection sizes it to the credit it has promised (plus room for the
// handshake reply) before each append; storage is allocated at that size on
// first use, grows only if the promise grows while bytes are held, and is
// freed once drained, so idle connections cost nothing here.
#pragma once

#include <sys/uio.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>

namespace vhost_vsock::vsock {

class TxRingBuffer {
 public:
  explicit TxRingBuffer(size_t capacity) : capacity_(capacity) {}

  [[nodiscard]] size_t capacity() const { return capacity_; }
  [[nodiscard]] size_t size() const { return size_; }
  [[nodiscard]] size_t free_space() const { return capacity_ - size_; }
  [[nodiscard]] bool empty() const { return size_ == 0; }
  [[nodiscard]] bool allocated() const { return storage_ != nullptr; }
  // Sets the capacity while nothing is allocated; while bytes are held it
  // only grows (moving them into larger storage), never below what is held.
  void set_capacity(size_t capacity);

  // Copies up to free_space() bytes from `src`, starting `offset` bytes in.
  // Returns the number of bytes appended.
  size_t append(std::span<const iovec> src, size_t offset, size_t max_bytes);
  size_t append(std::span<const uint8_t> bytes);

  // Fills `out` (2 entries) with the buffered bytes in order; returns the count used.
  size_t readable_iovecs(iovec (&out)[2]) const;
  // Drops `bytes` from the front (after they reached the socket). Frees the
  // storage when the buffer becomes empty.
  void consume(size_t bytes);
  void clear();

 private:
  void ensure_storage();

  size_t capacity_;
  std::unique_ptr<uint8_t[]> storage_;
  size_t head_ = 0;  // index of the oldest byte
  size_t size_ = 0;
};

}  // namespace vhost_vsock::vsock
