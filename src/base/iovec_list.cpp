#include "base/iovec_list.h"

#include <algorithm>
#include <cstring>

namespace vhost_vsock::base {

namespace {

// The one walk behind the copies and the slice: calls visit(bytes, length,
// done) for each piece of the first `max_bytes` bytes from `offset` on, where
// `done` counts the bytes of the earlier pieces. Returns the bytes visited.
template <typename Visit>
size_t for_each_piece(std::span<const iovec> iovs, size_t offset, size_t max_bytes, Visit visit) {
  size_t done = 0;
  for (const auto& iov : iovs) {
    if (done == max_bytes) break;
    if (offset >= iov.iov_len) {
      offset -= iov.iov_len;
      continue;
    }
    size_t n = std::min(iov.iov_len - offset, max_bytes - done);
    visit(static_cast<uint8_t*>(iov.iov_base) + offset, n, done);
    done += n;
    offset = 0;
  }
  return done;
}

}  // namespace

size_t copy_from_iovecs(std::span<const iovec> src, size_t offset, std::span<uint8_t> dst) {
  return for_each_piece(src, offset, dst.size(),
                        [&](const uint8_t* piece, size_t n, size_t done) { std::memcpy(dst.data() + done, piece, n); });
}

size_t copy_to_iovecs(std::span<const iovec> dst, size_t offset, std::span<const uint8_t> src) {
  return for_each_piece(dst, offset, src.size(),
                        [&](uint8_t* piece, size_t n, size_t done) { std::memcpy(piece, src.data() + done, n); });
}

void slice_iovecs(std::span<const iovec> src, size_t offset, size_t max_bytes, IovecList& out) {
  for_each_piece(src, offset, max_bytes, [&](uint8_t* piece, size_t n, size_t) { out.push_back(piece, n); });
}

}  // namespace vhost_vsock::base
