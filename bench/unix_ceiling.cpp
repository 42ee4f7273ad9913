// The ceiling: what two host processes get from a plain AF_UNIX stream
// socketpair on this machine. The daemon's data path is one AF_UNIX socket
// plus the guest ring, so its throughput is reported as a fraction of this.
//
//   unix_ceiling stream --write-size 64K --bytes 1G [--streams N] [--reader-cpu C] [--writer-cpu C]
//   unix_ceiling rtt --count 20000 [--msg 1] [--reader-cpu C] [--writer-cpu C]
//   unix_ceiling seqpacket --message-size 4K --count 100000 [--reader-cpu C] [--writer-cpu C]
//                          (an AF_UNIX SOCK_SEQPACKET socketpair: the seqpacket ceiling)
//
// The writer is a forked child; the parent reads and checks every byte
// against the pattern. Prints one JSON line; exits 1 on any mismatch.
#include <fcntl.h>
#include <poll.h>
#include <sys/wait.h>

#include <memory>

#include "bench_common.h"

namespace vhost_vsock::bench {
namespace {

struct StreamConfig {
  uint64_t write_size;
  uint64_t bytes_per_stream;
  int streams;
  uint64_t read_size;
  int reader_cpu;
  int writer_cpu;
};

void set_nonblocking(int fd) {
  if (fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK) != 0) die("fcntl");
}

// Child: waits for the go byte, then writes every stream's pattern.
[[noreturn]] void run_writer(const StreamConfig& config, const std::vector<int>& fds, int go_fd) {
  pin_to_cpu(config.writer_cpu);
  std::vector<std::unique_ptr<Pattern>> patterns;
  patterns.reserve(static_cast<size_t>(config.streams));
  for (int i = 0; i < config.streams; ++i)
    patterns.push_back(std::make_unique<Pattern>(1 + static_cast<uint64_t>(i), config.write_size));
  char go = 0;
  if (!read_exact(go_fd, &go, 1)) _exit(1);
  if (config.streams == 1) {
    for (uint64_t off = 0; off < config.bytes_per_stream;) {
      size_t len = static_cast<size_t>(std::min<uint64_t>(config.write_size, config.bytes_per_stream - off));
      if (!write_all(fds[0], patterns[0]->at(off), len)) _exit(1);
      off += len;
    }
    _exit(0);
  }
  std::vector<uint64_t> sent(fds.size(), 0);
  std::vector<pollfd> polls;
  size_t remaining = fds.size();
  while (remaining > 0) {
    polls.clear();
    for (size_t i = 0; i < fds.size(); ++i)
      if (sent[i] < config.bytes_per_stream) polls.push_back({fds[i], POLLOUT, 0});
    if (::poll(polls.data(), polls.size(), 10000) <= 0) _exit(1);
    for (const auto& p : polls) {
      if (!(p.revents & POLLOUT)) {
        if (p.revents) _exit(1);
        continue;
      }
      size_t i = static_cast<size_t>(std::find(fds.begin(), fds.end(), p.fd) - fds.begin());
      while (sent[i] < config.bytes_per_stream) {
        size_t len = static_cast<size_t>(std::min<uint64_t>(config.write_size, config.bytes_per_stream - sent[i]));
        ssize_t n = ::send(fds[i], patterns[i]->at(sent[i]), len, MSG_NOSIGNAL);
        if (n < 0 && (errno == EAGAIN || errno == EINTR)) break;
        if (n <= 0) _exit(1);
        sent[i] += static_cast<uint64_t>(n);
      }
      if (sent[i] == config.bytes_per_stream) --remaining;
    }
  }
  _exit(0);
}

int run_stream(const Options& options) {
  StreamConfig config{};
  config.write_size = options.size("write-size", uint64_t{64} * 1024);
  config.bytes_per_stream = options.size("bytes", 1ull << 30);
  config.streams = options.integer("streams", 1);
  config.read_size = options.size("read-size", config.write_size);
  config.reader_cpu = options.integer("reader-cpu", -1);
  config.writer_cpu = options.integer("writer-cpu", -1);
  if (config.write_size == 0 || config.write_size > (16u << 20) || config.read_size == 0 ||
      config.read_size > (16u << 20) || config.streams < 1 || config.streams > 1024)
    fail("option out of range");

  std::vector<int> reader_fds, writer_fds;
  for (int i = 0; i < config.streams; ++i) {
    int pair[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, pair) != 0) die("socketpair");
    reader_fds.push_back(pair[0]);
    writer_fds.push_back(pair[1]);
    if (config.streams > 1) {
      set_nonblocking(pair[0]);
      set_nonblocking(pair[1]);
    }
  }
  int go_pipe[2];
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, go_pipe) != 0) die("socketpair");
  pid_t child = fork();
  if (child < 0) die("fork");
  if (child == 0) {
    for (int fd : reader_fds) close(fd);
    close(go_pipe[1]);
    run_writer(config, writer_fds, go_pipe[0]);
  }
  for (int fd : writer_fds) close(fd);
  close(go_pipe[0]);
  pin_to_cpu(config.reader_cpu);

  std::vector<std::unique_ptr<Pattern>> patterns;
  patterns.reserve(static_cast<size_t>(config.streams));
  for (int i = 0; i < config.streams; ++i)
    patterns.push_back(std::make_unique<Pattern>(1 + static_cast<uint64_t>(i), config.read_size));
  std::vector<uint8_t> buffer(config.read_size);
  std::vector<uint64_t> received(reader_fds.size(), 0);
  bool ok = true;
  std::string error;

  const double cpu_start = cpu_seconds();
  const double start = now_seconds();
  if (!write_all(go_pipe[1], "g", 1)) die("go pipe");
  size_t remaining = reader_fds.size();
  std::vector<pollfd> polls;
  while (ok && remaining > 0) {
    polls.clear();
    for (size_t i = 0; i < reader_fds.size(); ++i)
      if (received[i] < config.bytes_per_stream) polls.push_back({reader_fds[i], POLLIN, 0});
    if (config.streams > 1 && ::poll(polls.data(), polls.size(), 10000) <= 0) {
      ok = false;
      error = "poll timed out";
      break;
    }
    for (const auto& p : polls) {
      if (config.streams > 1 && !(p.revents & (POLLIN | POLLHUP | POLLERR))) continue;
      size_t i = static_cast<size_t>(std::find(reader_fds.begin(), reader_fds.end(), p.fd) - reader_fds.begin());
      while (received[i] < config.bytes_per_stream) {
        ssize_t n = ::read(reader_fds[i], buffer.data(), buffer.size());
        if (n < 0 && errno == EINTR) continue;
        if (n < 0 && errno == EAGAIN) break;
        if (n <= 0) {
          ok = false;
          error = "stream " + std::to_string(i) + " ended early at byte " + std::to_string(received[i]);
          break;
        }
        if (received[i] + static_cast<uint64_t>(n) > config.bytes_per_stream ||
            !patterns[i]->matches(received[i], buffer.data(), static_cast<size_t>(n))) {
          ok = false;
          error = "stream " + std::to_string(i) + " data mismatch near byte " + std::to_string(received[i]);
          break;
        }
        received[i] += static_cast<uint64_t>(n);
      }
      if (!ok) break;
      if (received[i] == config.bytes_per_stream) --remaining;
    }
  }
  const double elapsed = now_seconds() - start;
  const double reader_cpu = cpu_seconds() - cpu_start;
  for (int fd : reader_fds) close(fd);
  int status = 0;
  waitpid(child, &status, 0);
  const double writer_cpu = cpu_seconds(RUSAGE_CHILDREN);  // includes its pattern setup (~1 ms)
  if (ok && !(WIFEXITED(status) && WEXITSTATUS(status) == 0)) {
    ok = false;
    error = "writer process failed";
  }
  if (!ok) fail(error);
  const uint64_t total = config.bytes_per_stream * static_cast<uint64_t>(config.streams);
  return JsonLine()
      .add("bench", "ceiling_stream")
      .add("write_size", config.write_size)
      .add("streams", config.streams)
      .add("bytes", total)
      .add("seconds", elapsed)
      .add("gbit_per_s", gbit_per_second(total, elapsed))
      .add("cpu_reader_s", reader_cpu)
      .add("cpu_writer_s", writer_cpu)
      .print_verified();
}

int run_rtt(const Options& options) {
  const int count = options.integer("count", 20000);
  const uint64_t msg = options.size("msg", 1);
  const int reader_cpu = options.integer("reader-cpu", -1);
  const int writer_cpu = options.integer("writer-cpu", -1);
  if (count < 1 || msg < 1 || msg > (1u << 20)) fail("option out of range");
  int pair[2];
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, pair) != 0) die("socketpair");
  pid_t child = fork();
  if (child < 0) die("fork");
  if (child == 0) {  // echo server
    close(pair[0]);
    pin_to_cpu(writer_cpu);
    std::vector<uint8_t> buf(msg);
    while (read_exact(pair[1], buf.data(), buf.size()))
      if (!write_all(pair[1], buf.data(), buf.size())) _exit(1);
    _exit(0);
  }
  close(pair[1]);
  pin_to_cpu(reader_cpu);
  Pattern pattern(7, msg);
  std::vector<uint8_t> reply(msg);
  std::vector<double> samples;
  samples.reserve(static_cast<size_t>(count));
  // A few untimed round trips first, so both processes are scheduled and warm.
  for (int i = -100; i < count; ++i) {
    const uint64_t offset = static_cast<uint64_t>(i + 100) * msg;
    const double t0 = now_seconds();
    if (!write_all(pair[0], pattern.at(offset), msg) || !read_exact(pair[0], reply.data(), msg))
      fail("round trip " + std::to_string(i) + " failed");
    const double t1 = now_seconds();
    if (!pattern.matches(offset, reply.data(), msg)) fail("echoed data differs");
    if (i >= 0) samples.push_back(t1 - t0);
  }
  close(pair[0]);
  waitpid(child, nullptr, 0);
  double sum = 0;
  for (double s : samples) sum += s;
  std::sort(samples.begin(), samples.end());
  return JsonLine()
      .add("bench", "ceiling_rtt")
      .add("msg", msg)
      .add("count", count)
      .add("mean_us", sum / count * 1e6)
      .add("p50_us", samples[samples.size() / 2] * 1e6)
      .add("p99_us", samples[samples.size() * 99 / 100] * 1e6)
      .print_verified();
}

// Message i is `size` bytes of the pattern from offset i * size; the reader
// checks every message's length (nothing merged, nothing cut) and bytes.
int run_seqpacket(const Options& options) {
  const uint64_t size = options.size("message-size", 4096);
  const int count = options.integer("count", 100000);
  if (size == 0 || size > (1u << 20) || count < 1) fail("option out of range");
  int pair[2];
  if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, pair) != 0) die("socketpair");
  const Pattern pattern(3, size);
  pid_t child = fork();
  if (child < 0) die("fork");
  if (child == 0) {
    close(pair[0]);
    pin_to_cpu(options.integer("writer-cpu", -1));
    for (int i = 0; i < count; ++i)
      if (::send(pair[1], pattern.at(static_cast<uint64_t>(i) * size), size, MSG_NOSIGNAL) !=
          static_cast<ssize_t>(size))
        _exit(1);
    _exit(0);
  }
  close(pair[1]);
  pin_to_cpu(options.integer("reader-cpu", -1));
  std::vector<uint8_t> buffer(size + 1);  // one byte more: a merged message would show
  const double start = now_seconds();
  for (int i = 0; i < count; ++i) {
    ssize_t n = 0;
    do n = ::recv(pair[0], buffer.data(), buffer.size(), 0);
    while (n < 0 && errno == EINTR);
    if (n != static_cast<ssize_t>(size)) fail("message " + std::to_string(i) + " has " + std::to_string(n) + " bytes");
    if (!pattern.matches(static_cast<uint64_t>(i) * size, buffer.data(), size))
      fail("message " + std::to_string(i) + " differs");
  }
  const double elapsed = now_seconds() - start;
  close(pair[0]);
  int status = 0;
  waitpid(child, &status, 0);
  if (!(WIFEXITED(status) && WEXITSTATUS(status) == 0)) fail("writer process failed");
  return JsonLine()
      .add("bench", "ceiling_seqpacket")
      .add("message_size", size)
      .add("count", count)
      .add("seconds", elapsed)
      .add("messages_per_s", count / elapsed)
      .add("gbit_per_s", gbit_per_second(size * static_cast<uint64_t>(count), elapsed))
      .print_verified();
}

}  // namespace
}  // namespace vhost_vsock::bench

int main(int argc, char** argv) {
  using vhost_vsock::bench::run_modes;
  return run_modes(argc, argv, "unix_ceiling stream|rtt|seqpacket [--option value]...",
                   {{"stream", vhost_vsock::bench::run_stream},
                    {"rtt", vhost_vsock::bench::run_rtt},
                    {"seqpacket", vhost_vsock::bench::run_seqpacket}});
}
