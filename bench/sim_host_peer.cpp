#include "sim_host_peer.h"

#include <fcntl.h>
#include <poll.h>
#include <sys/un.h>

#include <memory>

#include "base/errno_text.h"
#include "base/unix_socket_address.h"

namespace vhost_vsock::bench {

bool send_line(int fd, const std::string& line) {
  std::string text = line + "\n";
  return write_all(fd, text.data(), text.size());
}

bool read_line(int fd, std::string& line) {
  line.clear();
  char c = 0;
  while (line.size() < 4096) {
    ssize_t n = ::read(fd, &c, 1);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    if (c == '\n') return true;
    line.push_back(c);
  }
  return false;
}

namespace {

[[noreturn]] void peer_fail(int control, const std::string& message) {
  send_line(control, "error " + message);
  _exit(1);
}

// The peer runs in a forked child: a bad path ends it with a message, not an exception.
sockaddr_un unix_address(const std::string& path) {
  try {
    return base::unix_socket_address(path);
  } catch (const std::runtime_error& e) {
    fail(e.what());
  }
}

int unix_listen(const std::string& path, int type = SOCK_STREAM) {
  int fd = socket(AF_UNIX, type | SOCK_CLOEXEC, 0);
  sockaddr_un addr = unix_address(path);
  ::unlink(path.c_str());
  if (fd < 0 || bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0 || listen(fd, 4096) != 0) die("listen");
  return fd;
}

// Connects through the hybrid listener: "CONNECT <port>\n" then "OK <n>\n".
// Returns -1 (errno-free message in `error`) on failure.
int hybrid_connect(const std::string& uds, uint32_t port, std::string& error) {
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_un addr = unix_address(uds);
  if (fd < 0 || connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    error = "connect " + uds + ": " + base::errno_text(errno);
    if (fd >= 0) close(fd);
    return -1;
  }
  const std::string request = "CONNECT " + std::to_string(port) + "\n";
  char reply[64];
  size_t got = 0;
  if (!write_all(fd, request.data(), request.size())) {
    error = "sending CONNECT failed";
    close(fd);
    return -1;
  }
  // Nothing follows the OK line in these roles (the guest speaks only when
  // spoken to), so reading in chunks cannot swallow payload.
  while (got == 0 || reply[got - 1] != '\n') {
    ssize_t n = ::read(fd, reply + got, sizeof(reply) - got);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0 || got + static_cast<size_t>(n) >= sizeof(reply)) {
      error = "no OK line for CONNECT " + std::to_string(port) + (n == 0 ? " (closed)" : "");
      close(fd);
      return -1;
    }
    got += static_cast<size_t>(n);
  }
  if (got < 4 || std::memcmp(reply, "OK ", 3) != 0) {
    error = "bad handshake reply: " + std::string(reply, got - 1);
    close(fd);
    return -1;
  }
  return fd;
}

// <uds>_seqpacket: one message "CONNECT <port>\n", one message "OK <n>\n" back.
int hybrid_seqpacket_connect(const std::string& uds, uint32_t port, std::string& error) {
  const std::string path = uds + "_seqpacket";
  int fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
  sockaddr_un addr = unix_address(path);
  const std::string request = "CONNECT " + std::to_string(port) + "\n";
  char reply[64];
  if (fd < 0 || connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0 ||
      ::send(fd, request.data(), request.size(), MSG_NOSIGNAL) != static_cast<ssize_t>(request.size())) {
    error = "connect/CONNECT " + path + ": " + base::errno_text(errno);
  } else if (ssize_t n = ::recv(fd, reply, sizeof(reply), 0); n < 4 || std::memcmp(reply, "OK ", 3) != 0) {
    error = "no OK message for CONNECT " + std::to_string(port);
  } else {
    return fd;
  }
  if (fd >= 0) close(fd);
  return -1;
}

// One CONNECT handshake in flight on a non-blocking socket (connect_parallel).
struct PendingConnect {
  int fd = -1;
  size_t got = 0;
  char reply[64] = {};
};

// Starts a non-blocking connection to the hybrid listener and sends its
// CONNECT line (a dozen bytes: the socket buffer takes it whole).
int start_hybrid_connect(int control, const std::string& uds, uint32_t port) {
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  sockaddr_un addr = unix_address(uds);
  if (fd < 0 || connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0)
    peer_fail(control, "connect " + uds + ": " + base::errno_text(errno));
  const std::string request = "CONNECT " + std::to_string(port) + "\n";
  if (::send(fd, request.data(), request.size(), MSG_NOSIGNAL) != static_cast<ssize_t>(request.size()))
    peer_fail(control, "sending CONNECT failed: " + base::errno_text(errno));
  return fd;
}

// Reads what has arrived of the reply; true once the whole "OK <n>\n" line is
// in (checked as hybrid_connect checks it).
bool read_hybrid_reply(int control, PendingConnect& pending) {
  while (pending.got == 0 || pending.reply[pending.got - 1] != '\n') {
    ssize_t n = ::read(pending.fd, pending.reply + pending.got, sizeof(pending.reply) - pending.got);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && errno == EAGAIN) return false;
    if (n <= 0 || pending.got + static_cast<size_t>(n) >= sizeof(pending.reply))
      peer_fail(control, std::string("no OK line for CONNECT") + (n == 0 ? " (closed)" : ""));
    pending.got += static_cast<size_t>(n);
  }
  if (pending.got < 4 || std::memcmp(pending.reply, "OK ", 3) != 0)
    peer_fail(control, "bad handshake reply: " + std::string(pending.reply, pending.got - 1));
  return true;
}

// `count` CONNECT -> OK -> close handshakes with `parallel` of them in flight.
void connect_parallel(int control, const std::string& uds, int count, int parallel) {
  std::vector<PendingConnect> slots(static_cast<size_t>(std::min(parallel, count)));
  std::vector<pollfd> polls(slots.size());
  int started = 0, finished = 0;
  for (auto& slot : slots) {
    slot.fd = start_hybrid_connect(control, uds, kBasePort);
    ++started;
  }
  while (finished < count) {
    for (size_t i = 0; i < slots.size(); ++i) polls[i] = {slots[i].fd, POLLIN, 0};
    if (::poll(polls.data(), polls.size(), 20000) <= 0) peer_fail(control, "handshakes stalled");
    for (size_t i = 0; i < slots.size(); ++i) {
      if (slots[i].fd < 0 || polls[i].revents == 0 || !read_hybrid_reply(control, slots[i])) continue;
      close(slots[i].fd);
      ++finished;
      slots[i] = PendingConnect{};
      if (started < count) {
        slots[i].fd = start_hybrid_connect(control, uds, kBasePort);
        ++started;
      }
    }
  }
}

void wait_go(int control) {
  std::string line;
  if (!read_line(control, line) || line != "go") _exit(1);
}

// Until every fd has moved `bytes` (progress[i], advanced by `move(i)`):
// polls the unfinished fds for `events` (if `poll_first`) and calls `move(i)`
// on each ready one. Without poll_first each call may block (one blocking fd).
template <typename Move>
void drive_streams(int control, const std::vector<int>& fds, const std::vector<uint64_t>& progress, uint64_t bytes,
                   short events, bool poll_first, const char* stall_message, Move move) {
  size_t remaining = fds.size();
  std::vector<pollfd> polls;
  std::vector<size_t> index;
  while (remaining > 0) {
    polls.clear();
    index.clear();
    for (size_t i = 0; i < fds.size(); ++i)
      if (progress[i] < bytes) {
        polls.push_back({fds[i], events, 0});
        index.push_back(i);
      }
    if (poll_first && ::poll(polls.data(), polls.size(), 20000) <= 0) peer_fail(control, stall_message);
    for (size_t k = 0; k < polls.size(); ++k) {
      if (poll_first && !(polls[k].revents & (events | POLLERR | POLLHUP))) continue;
      const size_t i = index[k];
      move(i);
      if (progress[i] == bytes) --remaining;
    }
  }
}

// Reads and verifies `bytes` on every fd (stream i carries pattern 1+i).
void receive_streams(int control, const std::vector<int>& fds, uint64_t bytes, size_t read_size) {
  std::vector<std::unique_ptr<Pattern>> patterns;
  for (size_t i = 0; i < fds.size(); ++i) patterns.push_back(std::make_unique<Pattern>(1 + i, read_size));
  std::vector<uint8_t> buffer(read_size);
  std::vector<uint64_t> received(fds.size(), 0);
  if (fds.size() > 1)
    for (int fd : fds) fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
  drive_streams(control, fds, received, bytes, POLLIN, fds.size() > 1, "receive stalled", [&](size_t s) {
    while (received[s] < bytes) {
      ssize_t n = ::read(fds[s], buffer.data(), buffer.size());
      if (n < 0 && errno == EINTR) continue;
      if (n < 0 && errno == EAGAIN) break;
      if (n <= 0) peer_fail(control, "stream " + std::to_string(s) + " ended at byte " + std::to_string(received[s]));
      if (received[s] + static_cast<uint64_t>(n) > bytes ||
          !patterns[s]->matches(received[s], buffer.data(), static_cast<size_t>(n)))
        peer_fail(control, "stream " + std::to_string(s) + " data mismatch near byte " + std::to_string(received[s]));
      received[s] += static_cast<uint64_t>(n);
    }
  });
}

// Writes `bytes` of pattern 1+i on every fd, `write_size` per call.
void send_streams(int control, const std::vector<int>& fds, uint64_t bytes, size_t write_size) {
  std::vector<std::unique_ptr<Pattern>> patterns;
  for (size_t i = 0; i < fds.size(); ++i) patterns.push_back(std::make_unique<Pattern>(1 + i, write_size));
  if (fds.size() == 1) {
    for (uint64_t off = 0; off < bytes;) {
      size_t len = static_cast<size_t>(std::min<uint64_t>(write_size, bytes - off));
      if (!write_all(fds[0], patterns[0]->at(off), len))
        peer_fail(control, "write failed at byte " + std::to_string(off));
      off += len;
    }
    return;
  }
  for (int fd : fds) fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
  std::vector<uint64_t> sent(fds.size(), 0);
  drive_streams(control, fds, sent, bytes, POLLOUT, true, "send stalled", [&](size_t i) {
    while (sent[i] < bytes) {
      size_t len = static_cast<size_t>(std::min<uint64_t>(write_size, bytes - sent[i]));
      ssize_t n = ::send(fds[i], patterns[i]->at(sent[i]), len, MSG_NOSIGNAL);
      if (n < 0 && (errno == EAGAIN || errno == EINTR)) break;
      if (n <= 0) peer_fail(control, "stream " + std::to_string(i) + " write failed: " + base::errno_text(errno));
      sent[i] += static_cast<uint64_t>(n);
    }
  });
}

// Message i is `size` bytes of pattern 5 from offset i * size (sim_bench's guest uses the same).
void send_messages(int control, int fd, int count, size_t size) {
  const Pattern pattern(5, size);
  for (int i = 0; i < count; ++i)
    if (::send(fd, pattern.at(static_cast<uint64_t>(i) * size), size, MSG_NOSIGNAL) != static_cast<ssize_t>(size))
      peer_fail(control, "message " + std::to_string(i) + " not sent: " + base::errno_text(errno));
}

// Every message whole (the buffer is one byte larger, so a merge shows), in order, intact.
void receive_messages(int control, int fd, int count, size_t size) {
  const Pattern pattern(5, size);
  std::vector<uint8_t> buffer(size + 1);
  for (int i = 0; i < count; ++i) {
    ssize_t n = 0;
    do n = ::recv(fd, buffer.data(), buffer.size(), 0);
    while (n < 0 && errno == EINTR);
    if (n != static_cast<ssize_t>(size) || !pattern.matches(static_cast<uint64_t>(i) * size, buffer.data(), size))
      peer_fail(control, "message " + std::to_string(i) + ": " + std::to_string(n) + " bytes or different content");
  }
}

}  // namespace

int run_host_peer(const Options& options) {
  const int control = options.integer("control-fd", -1);
  const std::string role = options.text("role", "");
  const std::string uds = options.text("uds", "");
  const int streams = options.integer("streams", 1);
  const uint64_t bytes = options.size("bytes", 0);
  const size_t io_size = static_cast<size_t>(options.size("io-size", uint64_t{64} * 1024));
  const int count = options.integer("count", 0);
  if (control < 0 || uds.empty() || streams < 1 || streams > 1024 || io_size == 0 || io_size > (16u << 20))
    fail("host-peer: bad options");
  std::string error;
  std::vector<int> fds;

  if (role == "recv") {
    std::vector<int> listeners;
    listeners.reserve(static_cast<size_t>(streams));
    for (int i = 0; i < streams; ++i) listeners.push_back(unix_listen(uds + "_" + std::to_string(kBasePort + i)));
    send_line(control, "ready");
    for (int l : listeners) {
      int fd = accept4(l, nullptr, nullptr, SOCK_CLOEXEC);
      if (fd < 0) peer_fail(control, "accept failed");
      fds.push_back(fd);
    }
    const double cpu_start = cpu_seconds();
    receive_streams(control, fds, bytes, io_size);
    send_line(control, "done {\"cpu_s\": " + std::to_string(cpu_seconds() - cpu_start) + "}");
  } else if (role == "send") {
    for (int i = 0; i < streams; ++i) {
      int fd = hybrid_connect(uds, kBasePort + static_cast<uint32_t>(i), error);
      if (fd < 0) peer_fail(control, error);
      fds.push_back(fd);
    }
    send_line(control, "ready");
    wait_go(control);
    const double cpu_start = cpu_seconds();
    send_streams(control, fds, bytes, io_size);
    send_line(control, "done {\"cpu_s\": " + std::to_string(cpu_seconds() - cpu_start) + "}");
  } else if (role == "seq-recv") {
    const int listener = unix_listen(uds + "_" + std::to_string(kBasePort), SOCK_SEQPACKET);
    send_line(control, "ready");
    const int fd = accept4(listener, nullptr, nullptr, SOCK_CLOEXEC);
    if (fd < 0) peer_fail(control, "accept failed");
    fds.push_back(fd);
    receive_messages(control, fd, count, io_size);
    send_line(control, "done {}");
  } else if (role == "seq-send") {
    const int fd = hybrid_seqpacket_connect(uds, kBasePort, error);
    if (fd < 0) peer_fail(control, error);
    fds.push_back(fd);
    send_line(control, "ready");
    wait_go(control);
    send_messages(control, fd, count, io_size);
    send_line(control, "done {}");
  } else if (role == "rtt") {
    int fd = hybrid_connect(uds, kBasePort, error);
    if (fd < 0) peer_fail(control, error);
    send_line(control, "ready");
    wait_go(control);
    Pattern pattern(7, 1);
    std::vector<double> samples;
    char reply = 0;
    for (int i = -100; i < count; ++i) {
      const int offset = i + 100;  // 0 in the first warm-up round
      const double t0 = now_seconds();
      if (!write_all(fd, pattern.at(static_cast<uint64_t>(offset)), 1) || !read_exact(fd, &reply, 1))
        peer_fail(control, "round trip " + std::to_string(i) + " failed");
      const double t1 = now_seconds();
      if (!pattern.matches(static_cast<uint64_t>(offset), reinterpret_cast<uint8_t*>(&reply), 1))
        peer_fail(control, "echoed byte differs");
      if (i >= 0) samples.push_back(t1 - t0);
    }
    double sum = 0;
    for (double s : samples) sum += s;
    std::sort(samples.begin(), samples.end());
    char json[256];
    std::snprintf(json, sizeof(json), "{\"mean_us\": %.4f, \"p50_us\": %.4f, \"p99_us\": %.4f}",
                  sum / static_cast<double>(samples.size()) * 1e6, samples[samples.size() / 2] * 1e6,
                  samples[samples.size() * 99 / 100] * 1e6);
    send_line(control, std::string("done ") + json);
  } else if (role == "connect") {
    send_line(control, "ready");
    wait_go(control);
    const int parallel = options.integer("parallel", 1);
    if (parallel < 1 || parallel > 4096) fail("host-peer: --parallel takes 1..4096");
    const double t0 = now_seconds();
    if (parallel == 1) {
      for (int i = 0; i < count; ++i) {
        int fd = hybrid_connect(uds, kBasePort, error);
        if (fd < 0) peer_fail(control, "connect " + std::to_string(i) + ": " + error);
        close(fd);
      }
    } else {
      connect_parallel(control, uds, count, parallel);
    }
    const double elapsed = now_seconds() - t0;
    char json[128];
    std::snprintf(json, sizeof(json), "{\"per_second\": %.1f, \"seconds\": %.4f}", count / elapsed, elapsed);
    send_line(control, std::string("done ") + json);
  } else if (role == "accept") {
    int l = unix_listen(uds + "_" + std::to_string(kBasePort));
    send_line(control, "ready");
    for (int i = 0; i < count; ++i) {
      int fd = accept4(l, nullptr, nullptr, SOCK_CLOEXEC);
      if (fd < 0) peer_fail(control, "accept failed");
      close(fd);
    }
    send_line(control, "done {}");
  } else if (role == "idle") {
    send_line(control, "ready");
    wait_go(control);
    for (int i = 0; i < count; ++i) {
      int fd = hybrid_connect(uds, kBasePort, error);
      if (fd < 0) peer_fail(control, "connection " + std::to_string(i) + ": " + error);
      fds.push_back(fd);
    }
    send_line(control, "done {}");
    std::string line;
    read_line(control, line);  // hold everything open until the parent is done measuring
  } else {
    fail("host-peer: unknown role '" + role + "'");
  }
  for (int fd : fds) close(fd);
  return 0;
}

}  // namespace vhost_vsock::bench
