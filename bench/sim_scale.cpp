// One daemon serving many simulated VMs (issue 14, "scale"): this process
// starts build/vhost-user-vsock with one --vm per VM, drives every VM with its
// own simulated guest (src/testing), opens `conns` guest->host connections per
// VM to AF_UNIX listeners it holds itself, and then measures
//   - the daemon's own memory (VmRSS - RssShmem: the guests' RAM it maps is
//     theirs, not ours) and what each connection adds to it;
//   - its CPU and wake-ups while every VM sits idle (the goal is none);
//   - the total guest->host throughput while `active` VMs move data at once,
//     every byte checked on the host side.
//
//   bench_scale --vms 64 --conns 250 --active 8 --bytes 256M [--idle-seconds 5]
//               [--write-size 64K] [--daemon PATH] [--groups same|own]
// --groups same puts every VM in the default group (the default config: all
// VMs are siblings); own gives each VM a group of its own.
// Prints one JSON line; exits 1 on a failed connect, a byte mismatch, a
// protocol violation or a daemon exit.
#include <fcntl.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <atomic>
#include <fstream>
#include <memory>
#include <thread>

#include "bench_common.h"
#include "process_stats.h"
#include "testing/daemon_process.h"
#include "testing/vsock_driver.h"

namespace vhost_vsock::bench {
namespace {

using testing::GuestVsockDriver;
using testing::Millis;
using testing::Stream;

constexpr uint32_t kPort = 5000;
constexpr uint64_t kFirstCid = 3;

uint64_t status_kib(pid_t pid, const std::string& field) {
  std::ifstream status("/proc/" + std::to_string(pid) + "/status");
  for (std::string line; std::getline(status, line);)
    if (line.rfind(field + ":", 0) == 0) return std::strtoull(line.c_str() + field.size() + 1, nullptr, 10);
  return 0;
}

// The daemon's own memory: VmRSS without the guest RAM pages it touched.
uint64_t own_rss_kib(pid_t pid) {
  const uint64_t rss = status_kib(pid, "VmRSS");
  const uint64_t shmem = status_kib(pid, "RssShmem");
  return rss > shmem ? rss - shmem : 0;
}

int listen_unix(const std::string& path) {
  const int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_un address{};
  address.sun_family = AF_UNIX;
  if (fd < 0 || path.size() >= sizeof(address.sun_path)) die("socket");
  std::memcpy(address.sun_path, path.c_str(), path.size() + 1);
  if (::bind(fd, reinterpret_cast<sockaddr*>(&address), sizeof(address)) != 0 || ::listen(fd, 4096) != 0)
    die(("listen " + path).c_str());
  return fd;
}

// Every connection costs this process one host fd and the daemon one more:
// the hard RLIMIT_NOFILE bounds how many the run can hold.
void check_fd_budget(uint64_t connections) {
  rlimit limit{};
  getrlimit(RLIMIT_NOFILE, &limit);
  limit.rlim_cur = limit.rlim_max;
  setrlimit(RLIMIT_NOFILE, &limit);
  if (connections + 1024 > limit.rlim_cur)
    fail("vms x conns = " + std::to_string(connections) + " connections need as many host sockets per process; " +
         "RLIMIT_NOFILE here is " + std::to_string(limit.rlim_cur) + " (hard); use fewer --conns");
}

struct Vm {
  std::unique_ptr<GuestVsockDriver> guest;
  int listener = -1;
  std::vector<Stream> streams;
  std::vector<int> host_fds;
};

// Guest->host on `stream`, read and checked on `host_fd`: true if every byte arrived in order.
bool transfer(Stream stream, int host_fd, uint64_t bytes, size_t write_size, uint64_t seed) {
  const Pattern pattern(seed, write_size);
  std::atomic<bool> sent_ok{true};
  std::thread sender([&] {
    for (uint64_t offset = 0; offset < bytes && sent_ok;) {
      const size_t n = static_cast<size_t>(std::min<uint64_t>(write_size, bytes - offset));
      if (!stream.send(std::span(pattern.at(offset), n), Millis(30000))) sent_ok = false;
      offset += n;
    }
  });
  std::vector<uint8_t> buffer(write_size);
  uint64_t received = 0;
  bool intact = true;
  while (received < bytes) {
    const ssize_t n = ::read(host_fd, buffer.data(), std::min<uint64_t>(buffer.size(), bytes - received));
    if (n <= 0) break;
    intact = intact && pattern.matches(received, buffer.data(), static_cast<size_t>(n));
    received += static_cast<uint64_t>(n);
  }
  sender.join();
  return sent_ok && intact && received == bytes;
}

testing::DaemonOptions daemon_options(int vms, int conns, bool own_groups) {
  testing::DaemonOptions options;
  options.guest_cid = kFirstCid;
  options.log_level = "warn";
  options.groups = own_groups ? "g3" : "default";
  for (int i = 1; i < vms; ++i) {
    const uint64_t cid = kFirstCid + static_cast<uint64_t>(i);
    options.extra_vms.push_back({cid, own_groups ? "g" + std::to_string(cid) : "default"});
  }
  options.extra_args = {"--max-connections", std::to_string(conns + 64)};
  options.startup_timeout = Millis(30000);
  return options;
}

int run(const Options& options) {
  signal(SIGPIPE, SIG_IGN);
  const int vms = options.integer("vms", 64);
  const int conns = options.integer("conns", 250);
  const int active = std::min(options.integer("active", 8), vms);
  const uint64_t bytes = options.size("bytes", 256ull << 20);
  const auto write_size = static_cast<size_t>(options.size("write-size", uint64_t{64} * 1024));
  const int idle_seconds = options.integer("idle-seconds", 5);
  const std::string groups = options.text("groups", "same");
  if (vms < 1 || conns < 1 || (groups != "same" && groups != "own")) fail("bad --vms, --conns or --groups");
  check_fd_budget(static_cast<uint64_t>(vms) * static_cast<uint64_t>(conns));
  // NOLINTNEXTLINE(concurrency-mt-unsafe): single-threaded here; DaemonProcess reads it below.
  setenv("VUV_DAEMON", options.text("daemon", "build/vhost-user-vsock").c_str(), 1);

  testing::DaemonProcess daemon(daemon_options(vms, conns, groups == "own"));
  const pid_t pid = daemon.pid();
  std::vector<Vm> fleet(static_cast<size_t>(vms));
  const double setup_start = now_seconds();
  for (int i = 0; i < vms; ++i) {
    const uint64_t cid = kFirstCid + static_cast<uint64_t>(i);
    Vm& vm = fleet[static_cast<size_t>(i)];
    const std::string socket = i == 0 ? daemon.socket_path() : daemon.socket_path_of(cid);
    const std::string uds = i == 0 ? daemon.uds_path() : daemon.uds_path_of(cid);
    vm.guest = std::make_unique<GuestVsockDriver>(socket);
    vm.listener = listen_unix(uds + "_" + std::to_string(kPort));
  }
  usleep(300000);
  const uint64_t rss_no_conns = own_rss_kib(pid);
  for (Vm& vm : fleet) {
    for (int k = 0; k < conns; ++k) {
      Stream s = vm.guest->connect(kPort, Millis(10000));
      if (!s.established()) fail("connect " + std::to_string(k) + " of a VM was not established");
      const int fd = ::accept4(vm.listener, nullptr, nullptr, SOCK_CLOEXEC);
      if (fd < 0) die("accept");
      vm.streams.push_back(s);
      vm.host_fds.push_back(fd);
    }
  }
  const double setup_seconds = now_seconds() - setup_start;
  usleep(500000);  // let the daemon settle before sampling
  const uint64_t rss_conns = own_rss_kib(pid);
  const double cpu_before = process_cpu_seconds(pid);
  const uint64_t switches_before = process_voluntary_switches(pid);
  std::this_thread::sleep_for(std::chrono::seconds(idle_seconds));
  const double idle_cpu = process_cpu_seconds(pid) - cpu_before;
  const uint64_t idle_wakeups = process_voluntary_switches(pid) - switches_before;

  std::atomic<int> broken{0};
  std::vector<std::thread> movers;
  const double move_start = now_seconds();
  for (int i = 0; i < active; ++i) {
    Vm& vm = fleet[static_cast<size_t>(i)];
    movers.emplace_back([&, i, stream = vm.streams.front(), fd = vm.host_fds.front()] {
      if (!transfer(stream, fd, bytes, write_size, static_cast<uint64_t>(i) + 1)) ++broken;
    });
  }
  for (auto& t : movers) t.join();
  const double move_seconds = now_seconds() - move_start;
  if (broken > 0) fail(std::to_string(broken.load()) + " of the active VMs' transfers lost or changed bytes");
  const uint64_t peak_kib = status_kib(pid, "VmHWM");

  std::string violation;
  for (Vm& vm : fleet) {
    for (int fd : vm.host_fds) ::close(fd);
    ::close(vm.listener);
    auto seen = vm.guest->violations();
    if (!seen.empty() && violation.empty()) violation = seen.front();
    vm.guest->disconnect();
  }
  if (!violation.empty()) fail("a guest simulator saw a device protocol violation: " + violation);
  if (!daemon.running()) fail("the daemon exited during the run; log:\n" + daemon.log());
  const double total_conns = static_cast<double>(vms) * conns;
  return JsonLine()
      .add("bench", "sim_scale")
      .add("vms", vms)
      .add("conns_per_vm", conns)
      .add("groups", groups)
      .add("setup_seconds", setup_seconds)
      .add("own_rss_kib_no_conns", rss_no_conns)
      .add("own_rss_kib", rss_conns)
      .add("per_conn_bytes", rss_conns > rss_no_conns ? (rss_conns - rss_no_conns) * 1024.0 / total_conns : 0.0)
      .add("vm_hwm_kib", peak_kib)
      .add("idle_seconds", idle_seconds)
      .add("idle_cpu_ms_per_vm_per_s", idle_cpu * 1000.0 / vms / idle_seconds)
      .add("idle_wakeups", idle_wakeups)
      .add("active_vms", active)
      .add("bytes_per_active_vm", bytes)
      .add("gbit_s_total", gbit_per_second(bytes * static_cast<uint64_t>(active), move_seconds))
      .print_verified();
}

}  // namespace
}  // namespace vhost_vsock::bench

int main(int argc, char** argv) {
  return vhost_vsock::bench::run_modes(
      argc, argv, "bench_scale run [--vms N] [--conns N] [--active N] [--bytes SIZE] [--idle-seconds S]",
      {{"run", vhost_vsock::bench::run}});
}
