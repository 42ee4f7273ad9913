#include "process_stats.h"

#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <sstream>
#include <string>
#include <system_error>

namespace vhost_vsock::bench {

double process_cpu_seconds(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/stat");
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  const auto close_paren = text.rfind(')');
  if (close_paren == std::string::npos) return 0;
  std::istringstream fields(text.substr(close_paren + 2));
  std::string field;
  unsigned long long utime = 0, stime = 0;
  for (int i = 3; fields >> field; ++i) {  // field 3 is the state
    if (i == 14) utime = std::strtoull(field.c_str(), nullptr, 10);
    if (i == 15) {
      stime = std::strtoull(field.c_str(), nullptr, 10);
      break;
    }
  }
  return static_cast<double>(utime + stime) / static_cast<double>(sysconf(_SC_CLK_TCK));
}

// Read-type and write-type syscalls (read/readv/recvmsg..., write/writev/
// sendmsg...) of a whole process, from /proc/<pid>/io; eventfd kicks and
// interrupts count too.
std::pair<uint64_t, uint64_t> process_syscalls(pid_t pid) {
  std::ifstream io("/proc/" + std::to_string(pid) + "/io");
  uint64_t reads = 0, writes = 0;
  for (std::string line; std::getline(io, line);) {
    if (line.rfind("syscr:", 0) == 0) reads = std::strtoull(line.c_str() + 6, nullptr, 10);
    if (line.rfind("syscw:", 0) == 0) writes = std::strtoull(line.c_str() + 6, nullptr, 10);
  }
  return {reads, writes};
}

namespace {

// A "name: N" line of /proc/<pid>/task/*/status, summed over the threads.
uint64_t sum_over_threads(pid_t pid, const std::string& key) {
  uint64_t total = 0;
  const std::string task_dir = "/proc/" + std::to_string(pid) + "/task";
  std::error_code error;  // no such process: no tasks, 0
  for (const auto& task : std::filesystem::directory_iterator(task_dir, error)) {
    std::ifstream status(task.path() / "status");
    for (std::string line; std::getline(status, line);)
      if (line.rfind(key, 0) == 0) total += std::strtoull(line.c_str() + key.size(), nullptr, 10);
  }
  return total;
}

}  // namespace

uint64_t process_voluntary_switches(pid_t pid) {
  return sum_over_threads(pid, "voluntary_ctxt_switches:");
}

uint64_t process_preemptions(pid_t pid) {
  return sum_over_threads(pid, "nonvoluntary_ctxt_switches:");
}

uint64_t vm_rss_kib(pid_t pid) {
  std::ifstream status("/proc/" + std::to_string(pid) + "/status");
  for (std::string line; std::getline(status, line);)
    if (line.rfind("VmRSS:", 0) == 0) return std::strtoull(line.c_str() + 6, nullptr, 10);
  return 0;
}

}  // namespace vhost_vsock::bench
