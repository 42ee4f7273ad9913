// Shared by the benchmark programs: the verified data pattern, CPU pinning,
// blocking I/O helpers, option parsing and the one-line JSON result that
// bench/run aggregates. Header-only so each program stays one file.
#pragma once

#include <errno.h>
#include <sched.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <initializer_list>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "base/errno_text.h"

namespace vhost_vsock::bench {

inline double now_seconds() {
  timespec ts{};
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<double>(ts.tv_sec) + static_cast<double>(ts.tv_nsec) * 1e-9;
}

// Runs before a failing benchmark exits (e.g. to stop a daemon gracefully so
// that its own log explains what it saw).
inline void (*g_before_failure_exit)() = nullptr;

// Both end the process at once (no destructors: a benchmark may have threads
// running); child processes are started with PR_SET_PDEATHSIG and go too.
[[noreturn]] inline void die(const char* what) {
  std::fprintf(stderr, "bench: %s: %s\n", what, base::errno_text(errno).c_str());
  std::fflush(nullptr);
  if (auto hook = std::exchange(g_before_failure_exit, nullptr)) hook();
  std::_Exit(1);
}

[[noreturn]] inline void fail(const std::string& message) {
  std::fprintf(stderr, "bench: %s\n", message.c_str());
  std::fflush(nullptr);
  if (auto hook = std::exchange(g_before_failure_exit, nullptr)) hook();
  std::_Exit(1);
}

// A byte stream that depends on (seed, offset). The period is deliberately not
// a power of two, so a chunk delivered at the wrong offset (lost, duplicated or
// reordered data) never matches by accident of alignment.
class Pattern {
 public:
  static constexpr size_t kPeriod = (1u << 20) + 7;

  Pattern(uint64_t seed, size_t max_chunk) : table_(kPeriod + max_chunk), max_chunk_(max_chunk) {
    uint64_t state = seed * 0x9E3779B97F4A7C15ull + 1;
    for (size_t i = 0; i < kPeriod; ++i) table_[i] = static_cast<uint8_t>(splitmix(state) >> 32);
    for (size_t i = 0; i < max_chunk; ++i) table_[kPeriod + i] = table_[i];
  }

  // `len` bytes of the stream starting at `offset`; len <= max_chunk.
  [[nodiscard]] const uint8_t* at(uint64_t offset) const { return table_.data() + offset % kPeriod; }
  [[nodiscard]] size_t max_chunk() const { return max_chunk_; }

  [[nodiscard]] bool matches(uint64_t offset, const uint8_t* data, size_t len) const {
    while (len > 0) {
      size_t piece = std::min(len, max_chunk_);
      if (std::memcmp(at(offset), data, piece) != 0) return false;
      offset += piece;
      data += piece;
      len -= piece;
    }
    return true;
  }

 private:
  static uint64_t splitmix(uint64_t& state) {
    uint64_t z = (state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }

  std::vector<uint8_t> table_;
  size_t max_chunk_;
};

// Pins the calling process (all its threads created later) to `cpu`; -1 leaves it free.
inline void pin_to_cpu(int cpu) {
  if (cpu < 0) return;
  cpu_set_t set;
  CPU_ZERO(&set);
  CPU_SET(cpu, &set);
  if (sched_setaffinity(0, sizeof(set), &set) != 0) die("sched_setaffinity");
}

inline bool write_all(int fd, const void* data, size_t len) {
  const auto* p = static_cast<const uint8_t*>(data);
  while (len > 0) {
    ssize_t n = ::send(fd, p, len, MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    p += n;
    len -= static_cast<size_t>(n);
  }
  return true;
}

inline bool read_exact(int fd, void* data, size_t len) {
  auto* p = static_cast<uint8_t*>(data);
  while (len > 0) {
    ssize_t n = ::read(fd, p, len);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    p += n;
    len -= static_cast<size_t>(n);
  }
  return true;
}

// "64K", "1M", "2G", or plain bytes.
inline std::optional<uint64_t> parse_size(std::string_view text) {
  if (text.empty()) return std::nullopt;
  uint64_t multiplier = 1;
  switch (text.back()) {
    case 'K':
    case 'k':
      multiplier = 1ull << 10;
      break;
    case 'M':
    case 'm':
      multiplier = 1ull << 20;
      break;
    case 'G':
    case 'g':
      multiplier = 1ull << 30;
      break;
    default:
      break;
  }
  if (multiplier != 1) text.remove_suffix(1);
  uint64_t value = 0;
  for (char c : text) {
    if (c < '0' || c > '9' || value > (UINT64_MAX - 9) / 10) return std::nullopt;
    value = value * 10 + static_cast<uint64_t>(c - '0');
  }
  if (text.empty() || value > UINT64_MAX / multiplier) return std::nullopt;
  return value * multiplier;
}

// "--name value" options after a positional mode; every option takes a value.
class Options {
 public:
  Options(int argc, char** argv, int first) {
    for (int i = first; i < argc; i += 2) {
      std::string name = argv[i];
      if (name.rfind("--", 0) != 0 || i + 1 >= argc) fail("bad option '" + name + "' (every option takes a value)");
      values_[name.substr(2)] = argv[i + 1];
    }
  }
  [[nodiscard]] uint64_t size(const std::string& name, uint64_t fallback) const {
    auto it = values_.find(name);
    if (it == values_.end()) return fallback;
    auto parsed = parse_size(it->second);
    if (!parsed) fail("bad value for --" + name + ": " + it->second);
    return *parsed;
  }
  [[nodiscard]] int integer(const std::string& name, int fallback) const {
    auto it = values_.find(name);
    if (it == values_.end()) return fallback;
    char* end = nullptr;
    long value = std::strtol(it->second.c_str(), &end, 10);
    if (end == it->second.c_str() || *end != '\0') fail("bad value for --" + name + ": " + it->second);
    return static_cast<int>(value);
  }
  [[nodiscard]] std::string text(const std::string& name, const std::string& fallback) const {
    auto it = values_.find(name);
    return it == values_.end() ? fallback : it->second;
  }

 private:
  std::map<std::string, std::string> values_;
};

// The main() of a benchmark program run as `<program> MODE [--option value]...`:
// returns run(mode, options), or prints `usage` and returns 2 without a mode.
template <typename Run>
int run_mode(int argc, char** argv, const char* usage, Run run) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: %s\n", usage);
    return 2;
  }
  const std::string mode = argv[1];
  const Options options(argc, argv, 2);
  return run(mode, options);
}

// One mode of a benchmark program: its name on the command line and what runs it.
struct Mode {
  const char* name;
  int (*run)(const Options& options);
};

// The main() of a benchmark program whose modes are each one function: runs
// the one named by argv[1]. An exception from it (a simulator or daemon that
// cannot be set up) fails the run with its message; an unknown mode, like a
// missing one, prints `usage` and returns 2.
inline int run_modes(int argc, char** argv, const char* usage, std::initializer_list<Mode> modes) {
  return run_mode(argc, argv, usage, [&](const std::string& name, const Options& options) {
    for (const Mode& mode : modes) {
      if (name != mode.name) continue;
      try {
        return mode.run(options);
      } catch (const std::exception& e) {
        fail(std::string("setup failed: ") + e.what());
      }
    }
    std::fprintf(stderr, "unknown mode '%s'; usage: %s\n", name.c_str(), usage);
    return 2;
  });
}

// One flat JSON object on one stdout line: what bench/run parses.
class JsonLine {
 public:
  JsonLine& add(const std::string& key, double value) {
    char buf[64];
    std::snprintf(buf, sizeof(buf), "%.6g", value);
    return raw(key, buf);
  }
  JsonLine& add(const std::string& key, uint64_t value) { return raw(key, std::to_string(value)); }
  JsonLine& add(const std::string& key, int value) { return raw(key, std::to_string(value)); }
  JsonLine& add(const std::string& key, bool value) { return raw(key, value ? "true" : "false"); }
  JsonLine& add(const std::string& key, const char* value) {
    // Appending instead of "\"" + std::string(value) + "\"": gcc 12 -O3 reports a
    // false -Wrestrict overlap for that operator+ chain (GCC bug 105329).
    std::string quoted(1, '"');
    quoted.append(value).push_back('"');
    return raw(key, quoted);
  }
  JsonLine& add(const std::string& key, const std::string& value) { return add(key, value.c_str()); }
  void print() const {
    std::printf("{%s}\n", body_.c_str());
    std::fflush(stdout);
  }
  // A benchmark's last statement once it has checked every byte it moved:
  // adds "verified": true, prints, and returns main()'s 0.
  int print_verified() {
    add("verified", true).print();
    return 0;
  }

 private:
  JsonLine& raw(const std::string& key, const std::string& value) {
    if (!body_.empty()) body_.append(", ");
    body_.append(1, '"').append(key).append("\": ").append(value);
    return *this;
  }
  std::string body_;
};

// CPU seconds (user + system) used so far by this process (RUSAGE_SELF) or
// by its waited-for children (RUSAGE_CHILDREN).
inline double cpu_seconds(int who = RUSAGE_SELF) {
  rusage usage{};
  getrusage(who, &usage);
  auto seconds = [](const timeval& tv) {
    return static_cast<double>(tv.tv_sec) + static_cast<double>(tv.tv_usec) * 1e-6;
  };
  return seconds(usage.ru_utime) + seconds(usage.ru_stime);
}

inline double gbit_per_second(uint64_t bytes, double seconds) {
  return seconds > 0 ? static_cast<double>(bytes) * 8.0 / seconds / 1e9 : 0.0;
}

}  // namespace vhost_vsock::bench
