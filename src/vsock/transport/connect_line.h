// The hybrid-vsock handshake line a host program sends on uds-path:
// "CONNECT <port>\n". Pure code (no sockets) so it can be unit-tested and fuzzed.
//
// Accepted: the word CONNECT in any letter case, one space, a decimal port
// that fits in u32 (at most 10 digits), an optional '\r', then '\n'. The limit
// counts every byte up to and including the newline. Bytes after the newline
// are payload and are kept for the guest.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string_view>
#include <vector>

namespace vhost_vsock::vsock {

// Parses one line without its '\n' (a trailing '\r' is allowed).
std::optional<uint32_t> parse_connect_line(std::string_view line);

class ConnectLineReader {
 public:
  enum class Status { kNeedMore, kDone, kMalformed, kTooLong };

  explicit ConnectLineReader(size_t max_line_bytes) : max_line_(max_line_bytes) { line_.reserve(max_line_bytes); }

  // How many bytes the next read may take without passing the limit; reading
  // no more than this keeps us from swallowing more than a line's worth.
  [[nodiscard]] size_t room() const { return max_line_ > line_.size() ? max_line_ - line_.size() : 0; }

  // Feeds the next bytes read from the peer (any split). Once kDone,
  // kMalformed or kTooLong is returned, further feeds return the same status.
  Status feed(std::span<const uint8_t> bytes);

  [[nodiscard]] Status status() const { return status_; }
  [[nodiscard]] uint32_t port() const { return port_; }
  // Bytes that followed the newline in what was fed.
  [[nodiscard]] std::span<const uint8_t> leftover() const { return leftover_; }

 private:
  size_t max_line_;
  std::vector<uint8_t> line_;
  std::vector<uint8_t> leftover_;
  Status status_ = Status::kNeedMore;
  uint32_t port_ = 0;
};

}  // namespace vhost_vsock::vsock
