// A reusable list of iovecs that describe guest or host memory, with the few
// operations the data path needs: append, count bytes, drop a prefix, clip.
// Capacity is reserved once and reused, so steady-state use does not allocate.
#pragma once

#include <sys/uio.h>

#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

namespace vhost_vsock::base {

class IovecList {
 public:
  IovecList() = default;
  explicit IovecList(size_t reserve) { iovs_.reserve(reserve); }

  void clear() { iovs_.clear(); }
  void reserve(size_t n) { iovs_.reserve(n); }
  void push_back(void* base, size_t len) {
    if (len == 0) return;
    iovs_.push_back(iovec{base, len});
  }
  void push_back(const iovec& iov) { push_back(iov.iov_base, iov.iov_len); }

  [[nodiscard]] size_t size() const { return iovs_.size(); }
  [[nodiscard]] bool empty() const { return iovs_.empty(); }
  [[nodiscard]] iovec* data() { return iovs_.data(); }
  [[nodiscard]] const iovec* data() const { return iovs_.data(); }
  [[nodiscard]] std::span<const iovec> span() const { return iovs_; }
  const iovec& operator[](size_t i) const { return iovs_[i]; }

  [[nodiscard]] size_t total_bytes() const {
    size_t total = 0;
    for (const auto& iov : iovs_) total += iov.iov_len;
    return total;
  }

  // Removes the first `bytes` bytes (e.g. after a partial writev).
  void consume_front(size_t bytes) {
    size_t drop = 0;
    while (drop < iovs_.size() && bytes >= iovs_[drop].iov_len) {
      bytes -= iovs_[drop].iov_len;
      ++drop;
    }
    iovs_.erase(iovs_.begin(), iovs_.begin() + static_cast<std::ptrdiff_t>(drop));
    if (bytes > 0 && !iovs_.empty()) {
      iovs_.front().iov_base = static_cast<uint8_t*>(iovs_.front().iov_base) + bytes;
      iovs_.front().iov_len -= bytes;
    }
  }

  // Keeps at most the first `bytes` bytes.
  void clip(size_t bytes) {
    size_t keep = 0;
    while (keep < iovs_.size() && bytes > 0) {
      if (iovs_[keep].iov_len > bytes) iovs_[keep].iov_len = bytes;
      bytes -= iovs_[keep].iov_len;
      ++keep;
    }
    iovs_.resize(keep);
  }

 private:
  std::vector<iovec> iovs_;
};

// Copies up to dst.size() bytes out of an iovec sequence, starting `offset`
// bytes in. Returns the number of bytes copied.
size_t copy_from_iovecs(std::span<const iovec> src, size_t offset, std::span<uint8_t> dst);
// Copies src into an iovec sequence starting `offset` bytes in. Returns bytes copied.
size_t copy_to_iovecs(std::span<const iovec> dst, size_t offset, std::span<const uint8_t> src);
// Appends to `out` the iovecs covering [offset, offset+max_bytes) of `src`.
void slice_iovecs(std::span<const iovec> src, size_t offset, size_t max_bytes, IovecList& out);

}  // namespace vhost_vsock::base
