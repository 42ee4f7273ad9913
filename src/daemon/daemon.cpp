#include "daemon/daemon.h"

#include <fmt/format.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <spdlog/spdlog.h>
#include <sys/eventfd.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <stdexcept>
#include <system_error>
#include <vector>

#include "base/errno_text.h"
#include "base/unique_fd.h"
#include "daemon/cli.h"
#include "daemon/metrics_endpoint.h"
#include "daemon/sandbox.h"
#include "daemon/systemd_notify.h"
#include "daemon/vm_worker.h"

namespace vhost_vsock::daemon {
namespace {

// Descriptors besides host connections: listeners, vhost-user socket, kick
// and call eventfds, memory regions, epoll.
constexpr uint64_t kFdsPerVmOverhead = 64;

sigset_t shutdown_signals() {
  sigset_t mask;
  sigemptyset(&mask);
  sigaddset(&mask, SIGINT);
  sigaddset(&mask, SIGTERM);
  return mask;
}

base::UniqueFd setup_signals() {
  const sigset_t mask = shutdown_signals();
  if (int rc = ::pthread_sigmask(SIG_BLOCK, &mask, nullptr); rc != 0) {
    throw std::system_error(rc, std::generic_category(), "pthread_sigmask");
  }
  // We write to sockets whose peers may vanish; EPIPE is handled as an error code.
  struct sigaction ignore {};
  ignore.sa_handler = SIG_IGN;
  sigemptyset(&ignore.sa_mask);
  ::sigaction(SIGPIPE, &ignore, nullptr);
  base::UniqueFd fd(::signalfd(-1, &mask, SFD_CLOEXEC));
  if (!fd) throw std::system_error(errno, std::generic_category(), "signalfd");
  return fd;
}

// Each host connection holds a descriptor: lift the soft limit to the hard
// one; if even that cannot cover --max-connections for every VM, lower the
// cap to an equal share per VM and say so.
RuntimeOptions fit_open_file_limit(const DaemonConfig& config) {
  RuntimeOptions runtime = config.runtime;
  rlimit limit{};
  if (::getrlimit(RLIMIT_NOFILE, &limit) != 0) return runtime;
  if (limit.rlim_cur < limit.rlim_max) {
    rlimit raised = limit;
    raised.rlim_cur = limit.rlim_max;
    if (::setrlimit(RLIMIT_NOFILE, &raised) == 0) limit = raised;
  }
  if (limit.rlim_cur == RLIM_INFINITY) return runtime;
  runtime.max_connections = connection_cap_for_open_files(limit.rlim_cur, config.vms.size(), runtime.max_connections);
  if (runtime.max_connections < config.runtime.max_connections) {
    spdlog::warn(
        "open-file limit is {} for {} VM(s): lowering --max-connections from {} to {} per VM (raise the "
        "hard limit, e.g. LimitNOFILE= or ulimit -Hn, to allow more)",
        static_cast<uint64_t>(limit.rlim_cur), config.vms.size(), config.runtime.max_connections,
        runtime.max_connections);
  }
  return runtime;
}

void notify_failure(int fd) {
  const uint64_t one = 1;
  [[maybe_unused]] auto n = ::write(fd, &one, sizeof(one));
}

// Host programs and QEMU find the daemon only through its socket files. If
// one is deleted or replaced while we run, connections already made keep
// working but nobody new can reach that VM: say so, once, naming the file.
class SocketFileWatch {
 public:
  explicit SocketFileWatch(const std::vector<std::unique_ptr<VmWorker>>& workers) {
    for (const auto& worker : workers) {
      const VmConfig& vm = worker->config();
      add(vm.guest_cid, "vhost-user socket", "front-ends (QEMU)", vm.socket_path);
      add(vm.guest_cid, "uds-path", "host programs", vm.uds_path);
      // Only when our listener is open: the path may hold someone else's file.
      const std::string seqpacket = worker->seqpacket_uds_path();
      if (!seqpacket.empty()) add(vm.guest_cid, "seqpacket uds-path", "SOCK_SEQPACKET host programs", seqpacket);
    }
  }

  [[nodiscard]] std::vector<std::string> paths() const {
    std::vector<std::string> out;
    for (const auto& file : files_) out.push_back(file.path);
    return out;
  }

  void check() {
    for (auto& file : files_) {
      struct stat now {};
      const bool present = ::lstat(file.path.c_str(), &now) == 0;
      if (!present && errno != ENOENT && errno != ENOTDIR) continue;  // cannot tell (e.g. EACCES): say nothing
      const bool ours = present && now.st_dev == file.dev && now.st_ino == file.ino;
      if (ours == file.ok) continue;
      file.ok = ours;
      if (ours) {
        spdlog::info("vm cid={} {} {} is back", file.cid, file.role, file.path);
      } else if (!present) {
        spdlog::warn(
            "vm cid={} {} {} was removed: existing connections continue, but new {} cannot connect until "
            "the daemon restarts",
            file.cid, file.role, file.path, file.who);
      } else {
        spdlog::warn("vm cid={} {} {} was replaced by another file: new connections no longer reach this daemon",
                     file.cid, file.role, file.path);
      }
    }
  }

  // After the workers removed their socket files: report any that are still
  // ours (e.g. the directory became read-only). Files replaced by someone
  // else are left alone.
  void report_leftovers() const {
    for (const auto& file : files_) {
      struct stat now {};
      if (::lstat(file.path.c_str(), &now) != 0 || now.st_dev != file.dev || now.st_ino != file.ino) continue;
      if (::unlink(file.path.c_str()) == 0) continue;
      spdlog::warn("vm cid={} cannot remove {} {}: {} (it is replaced at the next start)", file.cid, file.role,
                   file.path, base::errno_text(errno));
    }
  }

 private:
  struct File {
    uint64_t cid;
    const char* role;
    const char* who;  // who connects there
    std::string path;
    dev_t dev;
    ino_t ino;
    bool ok;
  };

  void add(uint64_t cid, const char* role, const char* who, const std::string& path) {
    struct stat st {};
    if (::lstat(path.c_str(), &st) != 0) return;
    files_.push_back({cid, role, who, path, st.st_dev, st.st_ino, true});
  }

  std::vector<File> files_;
};

constexpr int kSocketFileCheckMs = 2000;

// Waits for a shutdown signal or a worker failure; returns the exit code.
int wait_for_shutdown(int signal_fd, int failure_fd, SocketFileWatch& watch) {
  pollfd fds[2] = {{signal_fd, POLLIN, 0}, {failure_fd, POLLIN, 0}};
  while (true) {
    const int ready = ::poll(fds, 2, kSocketFileCheckMs);
    if (ready < 0) {
      if (errno == EINTR) continue;
      spdlog::error("poll: {}", base::errno_text(errno));
      return kExitRuntimeError;
    }
    if (ready == 0) {
      watch.check();
      continue;
    }
    if (fds[0].revents & POLLIN) {
      signalfd_siginfo info{};
      if (::read(signal_fd, &info, sizeof(info)) == static_cast<ssize_t>(sizeof(info))) {
        spdlog::info("received {}", info.ssi_signo == SIGINT ? "SIGINT" : "SIGTERM");
        return kExitOk;
      }
    }
    if (fds[1].revents & POLLIN) return kExitRuntimeError;
  }
}

// Binds every VM's sockets before any VM is served. A VM that cannot start
// (say its socket directory vanished after validation) is logged and left
// out: one bad VM must not take its siblings down.
std::vector<std::unique_ptr<VmWorker>> bind_vms(const DaemonConfig& config, const RuntimeOptions& runtime,
                                                int failure_fd) {
  std::vector<std::unique_ptr<VmWorker>> workers;
  for (const VmConfig& vm : config.vms) {
    try {
      workers.push_back(std::make_unique<VmWorker>(vm, runtime, [failure_fd] { notify_failure(failure_fd); }));
    } catch (const std::exception& e) {
      spdlog::error("{}; vm cid={} is not served, the other VMs are", e.what(), vm.guest_cid);
    }
  }
  if (!workers.empty() && workers.size() < config.vms.size()) {
    spdlog::warn("serving {} of {} VMs", workers.size(), config.vms.size());
  }
  return workers;
}

// Every socket is bound and the sandbox is in: the workers start serving, and
// scripts (the "ready" lines) and systemd (READY=1) learn so.
void start_serving(std::vector<std::unique_ptr<VmWorker>>& workers, metrics::HttpServer* metrics_endpoint,
                   SystemdNotifier& systemd) {
  for (auto& worker : workers) worker->start();
  if (metrics_endpoint != nullptr) metrics_endpoint->start();
  for (const auto& worker : workers) {
    const VmConfig& vm = worker->config();
    spdlog::info("vm cid={} ready: vhost-user socket={} uds-path={}", vm.guest_cid, vm.socket_path, vm.uds_path);
  }
  // NOLINTNEXTLINE(concurrency-mt-unsafe): nothing in the daemon calls setenv.
  if (std::getenv(kSandboxSelfTestEnv) != nullptr) run_sandbox_self_test();
  systemd.notify(fmt::format("READY=1\nSTATUS=serving {} VM(s)", workers.size()));
}

}  // namespace

uint32_t connection_cap_for_open_files(uint64_t open_file_limit, size_t vm_count, uint32_t requested) {
  constexpr uint64_t kProcessOverhead = 16;  // stdio, signalfd, eventfds, log files
  const uint64_t vms = std::max<size_t>(vm_count, 1);
  const uint64_t usable = open_file_limit > kProcessOverhead ? open_file_limit - kProcessOverhead : 0;
  const uint64_t share = usable / vms;
  const uint64_t cap = share > kFdsPerVmOverhead ? share - kFdsPerVmOverhead : 1;
  return static_cast<uint32_t>(std::max<uint64_t>(1, std::min<uint64_t>(cap, requested)));
}

int run_daemon(const DaemonConfig& config) {
  base::UniqueFd signal_fd;
  base::UniqueFd failure_fd(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  try {
    signal_fd = setup_signals();
    if (!failure_fd) throw std::system_error(errno, std::generic_category(), "eventfd");
  } catch (const std::exception& e) {
    spdlog::error("{}", e.what());
    return kExitRuntimeError;
  }
  const RuntimeOptions runtime = fit_open_file_limit(config);
  SystemdNotifier systemd;  // connects before the sandbox; sends after

  std::vector<std::unique_ptr<VmWorker>> workers = bind_vms(config, runtime, failure_fd.get());
  if (workers.empty()) {
    spdlog::error("no VM could start, exiting");
    return kExitRuntimeError;
  }
  std::unique_ptr<metrics::HttpServer> metrics_endpoint;  // declared after `workers`: destroyed first
  try {
    metrics_endpoint = make_metrics_endpoint(config.metrics, workers);
  } catch (const std::exception& e) {
    spdlog::error("{}; exiting", e.what());
    return kExitRuntimeError;
  }

  SocketFileWatch watch(workers);
  // The sandbox goes in after every socket is bound and before any worker
  // thread starts, so no thread ever serves a guest unconfined.
  try {
    apply_sandbox(config.sandbox, watch.paths());
  } catch (const std::exception& e) {
    spdlog::error("sandbox: {}; exiting", e.what());
    workers.clear();
    return kExitRuntimeError;
  }

  start_serving(workers, metrics_endpoint.get(), systemd);

  const int exit_code = wait_for_shutdown(signal_fd.get(), failure_fd.get(), watch);
  systemd.notify("STOPPING=1");
  spdlog::info("shutting down");
  if (metrics_endpoint) metrics_endpoint->stop();  // scrapes post to the workers: stop them first
  for (auto& worker : workers) worker->stop();
  for (auto& worker : workers) worker->join();
  for (const auto& worker : workers) {
    if (worker->failed()) spdlog::error("vm cid={} worker failed", worker->config().guest_cid);
    worker->log_stats();
  }
  workers.clear();
  watch.report_leftovers();
  return exit_code;
}

}  // namespace vhost_vsock::daemon
