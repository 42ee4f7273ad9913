#include "host_socket.h"

#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <stdexcept>
#include <thread>

#include "base/errno_text.h"
#include "base/unix_socket_address.h"

namespace vhost_vsock::integration {

namespace {

using Clock = std::chrono::steady_clock;

int remaining_ms(Clock::time_point deadline) {
  const auto left = std::chrono::duration_cast<Millis>(deadline - Clock::now()).count();
  return left < 0 ? 0 : static_cast<int>(left);
}

bool wait_fd(int fd, short events, Clock::time_point deadline) {
  for (;;) {
    pollfd pfd{fd, events, 0};
    const int r = ::poll(&pfd, 1, remaining_ms(deadline));
    if (r < 0 && errno == EINTR) continue;
    return r > 0;
  }
}

uint64_t splitmix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

}  // namespace

HostListener::HostListener(std::string path, int backlog, int type) : path_(std::move(path)) {
  fd_.reset(::socket(AF_UNIX, type | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
  const sockaddr_un addr = base::unix_socket_address(path_);
  ::unlink(path_.c_str());
  if (!fd_ || ::bind(fd_.get(), reinterpret_cast<const sockaddr*>(&addr), sizeof(addr)) != 0 ||
      ::listen(fd_.get(), backlog) != 0) {
    throw std::runtime_error("cannot listen on " + path_ + ": " + base::errno_text(errno));
  }
}

HostListener::~HostListener() {
  ::unlink(path_.c_str());
}

UniqueFd HostListener::accept(Millis timeout) {
  const auto deadline = Clock::now() + timeout;
  for (;;) {
    UniqueFd conn(::accept4(fd_.get(), nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC));
    if (conn) return conn;
    if (errno != EAGAIN && errno != EINTR) return {};
    if (!wait_fd(fd_.get(), POLLIN, deadline)) return {};
  }
}

UniqueFd unix_connect(const std::string& path, Millis timeout, int type) {
  const auto deadline = Clock::now() + timeout;
  const sockaddr_un addr = base::unix_socket_address(path);
  for (;;) {
    UniqueFd fd(::socket(AF_UNIX, type | SOCK_CLOEXEC, 0));
    if (::connect(fd.get(), reinterpret_cast<const sockaddr*>(&addr), sizeof(addr)) == 0) {
      const int flags = ::fcntl(fd.get(), F_GETFL);
      ::fcntl(fd.get(), F_SETFL, flags | O_NONBLOCK);
      return fd;
    }
    if ((errno != ENOENT && errno != ECONNREFUSED && errno != EAGAIN) || Clock::now() >= deadline) return {};
    std::this_thread::sleep_for(Millis(5));
  }
}

UniqueFd hybrid_connect(const std::string& uds_path, uint32_t port, std::string* ok_line, Millis timeout) {
  UniqueFd fd = unix_connect(uds_path, timeout);
  if (!fd) return {};
  if (!write_all(fd.get(), "CONNECT " + std::to_string(port) + "\n", timeout)) return {};
  auto line = read_line(fd.get(), 64, timeout);
  if (!line || line->rfind("OK ", 0) != 0) return {};
  if (ok_line != nullptr) *ok_line = line->substr(0, line->size() - 1);
  return fd;
}

bool write_all(int fd, std::span<const uint8_t> data, Millis timeout) {
  const auto deadline = Clock::now() + timeout;
  size_t done = 0;
  while (done < data.size()) {
    const ssize_t n = ::send(fd, data.data() + done, data.size() - done, MSG_NOSIGNAL);
    if (n > 0) {
      done += static_cast<size_t>(n);
      continue;
    }
    if (n < 0 && errno != EAGAIN && errno != EINTR) return false;
    if (!wait_fd(fd, POLLOUT, deadline)) return false;
  }
  return true;
}

bool write_all(int fd, std::string_view data, Millis timeout) {
  return write_all(fd, std::span(reinterpret_cast<const uint8_t*>(data.data()), data.size()), timeout);
}

std::string read_some(int fd, size_t max, Millis timeout, bool* eof) {
  const auto deadline = Clock::now() + timeout;
  if (eof != nullptr) *eof = false;
  std::string out(max, '\0');
  for (;;) {
    const ssize_t n = ::recv(fd, out.data(), max, 0);
    if (n > 0) {
      out.resize(static_cast<size_t>(n));
      return out;
    }
    if (n == 0 || (errno != EAGAIN && errno != EINTR)) {
      if (eof != nullptr) *eof = true;
      return {};
    }
    if (!wait_fd(fd, POLLIN, deadline)) return {};
  }
}

std::string read_exactly(int fd, size_t n, Millis timeout) {
  const auto deadline = Clock::now() + timeout;
  std::string out;
  while (out.size() < n) {
    bool eof = false;
    std::string chunk = read_some(fd, n - out.size(), Millis(remaining_ms(deadline)), &eof);
    if (chunk.empty()) break;
    out += chunk;
  }
  return out;
}

std::optional<std::string> read_line(int fd, size_t max, Millis timeout) {
  const auto deadline = Clock::now() + timeout;
  std::string line;
  while (line.size() < max) {
    char c;
    const ssize_t n = ::recv(fd, &c, 1, 0);
    if (n == 1) {
      line.push_back(c);
      if (c == '\n') return line;
      continue;
    }
    if (n == 0 || (errno != EAGAIN && errno != EINTR)) return std::nullopt;
    if (!wait_fd(fd, POLLIN, deadline)) return std::nullopt;
  }
  return std::nullopt;
}

std::string read_until_eof(int fd, Millis timeout, size_t max) {
  const auto deadline = Clock::now() + timeout;
  std::string out;
  while (out.size() < max) {
    bool eof = false;
    std::string chunk = read_some(fd, std::min<size_t>(65536, max - out.size()), Millis(remaining_ms(deadline)), &eof);
    if (chunk.empty()) break;
    out += chunk;
  }
  return out;
}

bool wait_peer_closed(int fd, Millis timeout) {
  const auto deadline = Clock::now() + timeout;
  char buf[4096];
  for (;;) {
    const ssize_t n = ::recv(fd, buf, sizeof(buf), 0);
    if (n == 0) return true;
    if (n < 0 && errno != EAGAIN && errno != EINTR) return true;  // ECONNRESET and friends
    if (n > 0) continue;
    if (!wait_fd(fd, POLLIN, deadline)) return false;
  }
}

uint16_t free_loopback_port() {
  UniqueFd fd(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t length = sizeof(address);
  if (!fd.valid() || ::bind(fd.get(), reinterpret_cast<sockaddr*>(&address), sizeof(address)) != 0 ||
      ::getsockname(fd.get(), reinterpret_cast<sockaddr*>(&address), &length) != 0) {
    return 0;
  }
  return ntohs(address.sin_port);
}

void raise_fd_limit() {
  rlimit limit{};
  if (::getrlimit(RLIMIT_NOFILE, &limit) == 0 && limit.rlim_cur < limit.rlim_max) {
    limit.rlim_cur = limit.rlim_max;
    ::setrlimit(RLIMIT_NOFILE, &limit);
  }
}

void fill_pattern(std::span<uint8_t> out, uint64_t seed, uint64_t offset) {
  // Byte i of the stream is byte (i % 8) of splitmix64(seed ^ i / 8): any
  // chunking yields the same stream.
  size_t i = 0;
  while (i < out.size()) {
    const uint64_t pos = offset + i;
    const uint64_t word = splitmix64(seed * 0x100000001b3ULL ^ (pos / 8));
    const size_t in_word = pos % 8;
    const size_t n = std::min<size_t>(8 - in_word, out.size() - i);
    std::memcpy(out.data() + i, reinterpret_cast<const uint8_t*>(&word) + in_word, n);
    i += n;
  }
}

void Checksum::update(std::span<const uint8_t> data) {
  // FNV-1a: byte-serial, so the result does not depend on chunking.
  uint64_t h = state_;
  for (uint8_t b : data) {
    h ^= b;
    h *= 0x100000001b3ULL;
  }
  state_ = h;
  bytes_ += data.size();
}

uint64_t Checksum::value() const {
  return state_ ^ bytes_;
}

bool send_message(int fd, std::string_view message, Millis timeout) {
  const auto deadline = Clock::now() + timeout;
  for (;;) {
    const ssize_t n = ::send(fd, message.data(), message.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n >= 0) return static_cast<size_t>(n) == message.size();
    if (errno != EAGAIN && errno != EINTR) return false;
    if (!wait_fd(fd, POLLOUT, deadline)) return false;
  }
}

std::optional<std::string> receive_message(int fd, Millis timeout, bool* eof, size_t max) {
  const auto deadline = Clock::now() + timeout;
  if (eof != nullptr) *eof = false;
  std::string out(max, '\0');
  for (;;) {
    iovec iov{out.data(), out.size()};
    msghdr msg{};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    const ssize_t n = ::recvmsg(fd, &msg, MSG_DONTWAIT);
    if (n > 0 || (n == 0 && (msg.msg_flags & MSG_EOR) != 0)) {
      if (msg.msg_flags & MSG_TRUNC) return std::nullopt;
      out.resize(static_cast<size_t>(n));
      return out;
    }
    if (n == 0) {
      // A zero-length message and EOF look alike: tell them apart by POLLHUP.
      pollfd pfd{fd, POLLIN, 0};
      if (::poll(&pfd, 1, 0) == 1 && (pfd.revents & POLLHUP) != 0) {
        if (eof != nullptr) *eof = true;
        return std::nullopt;
      }
      return std::string();
    }
    if (errno != EAGAIN && errno != EINTR) {
      if (eof != nullptr) *eof = errno == ECONNRESET;
      return std::nullopt;
    }
    if (!wait_fd(fd, POLLIN, deadline)) return std::nullopt;
  }
}

}  // namespace vhost_vsock::integration
