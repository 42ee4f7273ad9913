#include "base/iovec_list.h"

#include <algorithm>
#include <cstring>

namespace vhost_vsock::base {


size_t copy_from_iovecs(std::span<const iovec> src, size_t offset, std::span<uint8_t> dst) {
  size_t copied = 0;
  for (const auto& iov : src) {
    if (copied == dst.size()) break;
    if (offset >= iov.iov_len) {
      offset -= iov.iov_len;
      continue;
    }
    size_t n = std::min(iov.iov_len - offset, dst.size() - copied);
    std::memcpy(dst.data() + copied, static_cast<const uint8_t*>(iov.iov_base) + offset, n);
    copied += n;
    offset = 0;
  }
  return copied;
}

size_t copy_to_iovecs(std::span<const iovec> dst, size_t offset, std::span<const uint8_t> src) {
  size_t copied = 0;
  for (const auto& iov : dst) {
    if (copied == src.size()) break;
    if (offset >= iov.iov_len) {
      offset -= iov.iov_len;
      continue;
    }
    size_t n = std::min(iov.iov_len - offset, src.size() - copied);
    std::memcpy(static_cast<uint8_t*>(iov.iov_base) + offset, src.data() + copied, n);
    copied += n;
    offset = 0;
  }
  return copied;
}

void slice_iovecs(std::span<const iovec> src, size_t offset, size_t max_bytes, IovecList& out) {
  for (const auto& iov : src) {
    if (max_bytes == 0) break;
    if (offset >= iov.iov_len) {
      offset -= iov.iov_len;
      continue;
    }
    size_t n = std::min(iov.iov_len - offset, max_bytes);
    out.push_back(static_cast<uint8_t*>(iov.iov_base) + offset, n);
    max_bytes -= n;
    offset = 0;
  }
}

}  // namespace vhost_vsock::base
