// Host-side AF_UNIX helpers for integration tests: every call is bounded by a
// timeout (sockets are non-blocking underneath), so a broken daemon fails a
// test instead of hanging it.
#pragma once

#include <sys/socket.h>

#include <chrono>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>

#include "base/unique_fd.h"

namespace vhost_vsock::integration {

using Millis = std::chrono::milliseconds;
using base::UniqueFd;

// A listening socket at `path` (e.g. "<uds>_1234" for guest connects);
// `type` SOCK_STREAM or SOCK_SEQPACKET.
class HostListener {
 public:
  explicit HostListener(std::string path, int backlog = 4096, int type = SOCK_STREAM);
  ~HostListener();
  UniqueFd accept(Millis timeout = Millis(5000));
  [[nodiscard]] int fd() const { return fd_.get(); }
  [[nodiscard]] const std::string& path() const { return path_; }

 private:
  std::string path_;
  UniqueFd fd_;
};

// Connects to a Unix socket; invalid fd on failure.
UniqueFd unix_connect(const std::string& path, Millis timeout = Millis(5000), int type = SOCK_STREAM);
// SOCK_SEQPACKET: one whole message each. send_message: false on timeout or
// error. receive_message: nullopt on timeout, EOF (*eof set) or error; a
// message cut short by `max` is an error (MSG_TRUNC), never returned.
bool send_message(int fd, std::string_view message, Millis timeout = Millis(10000));
std::optional<std::string> receive_message(int fd, Millis timeout, bool* eof = nullptr, size_t max = 1 << 20);
// Connects to the hybrid listener and completes "CONNECT <port>\n" / "OK <n>\n".
// Returns the fd and sets *ok_line (without the newline); invalid fd if the
// daemon closes the socket or sends something else.
UniqueFd hybrid_connect(const std::string& uds_path, uint32_t port, std::string* ok_line,
                        Millis timeout = Millis(5000));

bool write_all(int fd, std::span<const uint8_t> data, Millis timeout = Millis(10000));
bool write_all(int fd, std::string_view data, Millis timeout = Millis(10000));
// Up to `max` bytes once readable; empty on timeout or EOF (see `eof`).
std::string read_some(int fd, size_t max, Millis timeout, bool* eof = nullptr);
std::string read_exactly(int fd, size_t n, Millis timeout = Millis(10000));
// One byte at a time up to and including '\n', so nothing after it is consumed.
std::optional<std::string> read_line(int fd, size_t max, Millis timeout = Millis(5000));
// Everything until EOF (or error, timeout, `max`).
std::string read_until_eof(int fd, Millis timeout = Millis(10000), size_t max = 64 << 20);
// True once the peer has closed (EOF or ECONNRESET), discarding any data.
bool wait_peer_closed(int fd, Millis timeout);
// A TCP port on 127.0.0.1 the kernel just handed out and took back: free
// unless something races us; 0 if none could be had.
uint16_t free_loopback_port();
// Raises RLIMIT_NOFILE to its hard limit (children inherit it).
void raise_fd_limit();

// Deterministic test data and a fast 64-bit checksum over it.
void fill_pattern(std::span<uint8_t> out, uint64_t seed, uint64_t offset);
class Checksum {
 public:
  void update(std::span<const uint8_t> data);
  [[nodiscard]] uint64_t value() const;
  [[nodiscard]] uint64_t bytes() const { return bytes_; }

 private:
  uint64_t state_ = 0xcbf29ce484222325ULL;
  uint64_t bytes_ = 0;
};

}  // namespace vhost_vsock::integration
