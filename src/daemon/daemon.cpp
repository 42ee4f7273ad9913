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
#include <time.h>
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
#include "daemon/config_reload.h"
#include "daemon/metrics_endpoint.h"
#include "daemon/sandbox.h"
#include "daemon/served_vms.h"
#include "daemon/systemd_notify.h"
#include "daemon/vm_worker.h"

namespace vhost_vsock::daemon {
namespace {

// Descriptors besides host connections: listeners, vhost-user socket, kick
// and call eventfds, memory regions, epoll.
constexpr uint64_t kFdsPerVmOverhead = 64;

// SIGINT/SIGTERM stop the daemon, SIGHUP reloads --config.
sigset_t handled_signals() {
  sigset_t mask;
  sigemptyset(&mask);
  sigaddset(&mask, SIGINT);
  sigaddset(&mask, SIGTERM);
  sigaddset(&mask, SIGHUP);
  return mask;
}

base::UniqueFd setup_signals() {
  const sigset_t mask = handled_signals();
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
// `open_file_limit` gets the limit in force (0: none), which later reloads
// share between their VMs the same way.
RuntimeOptions fit_open_file_limit(const DaemonConfig& config, uint64_t* open_file_limit) {
  RuntimeOptions runtime = config.runtime;
  *open_file_limit = 0;
  rlimit limit{};
  if (::getrlimit(RLIMIT_NOFILE, &limit) != 0) return runtime;
  if (limit.rlim_cur < limit.rlim_max) {
    rlimit raised = limit;
    raised.rlim_cur = limit.rlim_max;
    if (::setrlimit(RLIMIT_NOFILE, &raised) == 0) limit = raised;
  }
  if (limit.rlim_cur == RLIM_INFINITY) return runtime;
  *open_file_limit = limit.rlim_cur;
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
    for (const auto& worker : workers) add_worker(*worker);
  }

  void add_worker(const VmWorker& worker) {
    const VmConfig& vm = worker.config();
    add(vm.guest_cid, "vhost-user socket", "front-ends (QEMU)", vm.socket_path);
    if (!vm.uds_path.empty()) add(vm.guest_cid, "uds-path", "host programs", vm.uds_path);  // none with forward-cid
    // Only when our listener is open: the path may hold someone else's file.
    const std::string seqpacket = worker.seqpacket_uds_path();
    if (!seqpacket.empty()) add(vm.guest_cid, "seqpacket uds-path", "SOCK_SEQPACKET host programs", seqpacket);
  }

  // After a reload: drops the files of VMs no longer served (or restarted)
  // and watches those of the VMs started since; unchanged VMs keep their state.
  void follow(const std::vector<std::unique_ptr<VmWorker>>& workers, const VmSetChange& change) {
    auto gone = [&change](uint64_t cid) {
      for (const VmConfig& vm : change.removed) {
        if (vm.guest_cid == cid) return true;
      }
      for (const auto& changed : change.changed) {
        if (changed.before.guest_cid == cid) return true;
      }
      return false;
    };
    std::erase_if(files_, [&gone](const File& file) { return gone(file.cid); });
    for (const auto& worker : workers) {
      const uint64_t cid = worker->config().guest_cid;
      const bool watched = std::any_of(files_.begin(), files_.end(), [cid](const File& f) { return f.cid == cid; });
      if (!watched) add_worker(*worker);
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

uint64_t monotonic_usec() {
  timespec now{};
  ::clock_gettime(CLOCK_MONOTONIC, &now);
  return static_cast<uint64_t>(now.tv_sec) * 1'000'000 + static_cast<uint64_t>(now.tv_nsec) / 1000;
}

// Everything the main thread owns while the daemon serves.
struct MainThread {
  const DaemonConfig& started_with;
  ServedVms& vms;
  SocketFileWatch& watch;
  SystemdNotifier& systemd;
};

// SIGHUP: re-read --config, reject it whole if it is invalid, else start,
// stop and restart VMs so that the served set matches it. Unchanged VMs keep
// their worker and connections. systemd hears RELOADING=1 ... READY=1.
void reload(MainThread& main) {
  const DaemonConfig& config = main.started_with;
  if (config.config_file.empty()) {
    spdlog::info("received SIGHUP: nothing to reload (started without --config)");
    return;
  }
  spdlog::info("received SIGHUP: reloading {}", config.config_file);
  main.systemd.notify(fmt::format("RELOADING=1\nMONOTONIC_USEC={}", monotonic_usec()));
  DaemonConfig next;
  ConfigErrors errors;
  std::vector<std::string> warnings;
  if (!reload_config_file(config, &next, &errors, &warnings)) {
    for (const auto& error : errors) spdlog::error("reload: {}", error.to_string());
    spdlog::error("reload rejected: {} is invalid ({} error(s)); still serving the previous {} VM(s)",
                  config.config_file, errors.size(), main.vms.size());
    main.systemd.notify(fmt::format("READY=1\nSTATUS=serving {} VM(s); last reload rejected", main.vms.size()));
    return;
  }
  for (const auto& warning : warnings) spdlog::warn("reload: {}", warning);
  const VmSetChange change = diff_vm_sets(main.vms.configs(), next.vms);
  for (const auto& line : describe_vm_set_change(change)) spdlog::info("reload: {}", line);
  main.vms.apply(change);
  main.watch.follow(main.vms.workers(), change);
  spdlog::info("reload done: {} added, {} removed, {} restarted, {} unchanged; serving {} of {} VM(s)",
               change.added.size(), change.removed.size(), change.changed.size(), change.unchanged.size(),
               main.vms.size(), next.vms.size());
  main.systemd.notify(fmt::format("READY=1\nSTATUS=serving {} VM(s)", main.vms.size()));
}

// Serves until a shutdown signal or a worker failure; returns the exit code.
int serve_until_shutdown(int signal_fd, int failure_fd, MainThread& main) {
  pollfd fds[2] = {{signal_fd, POLLIN, 0}, {failure_fd, POLLIN, 0}};
  while (true) {
    const int ready = ::poll(fds, 2, kSocketFileCheckMs);
    if (ready < 0) {
      if (errno == EINTR) continue;
      spdlog::error("poll: {}", base::errno_text(errno));
      return kExitRuntimeError;
    }
    if (ready == 0) {
      main.watch.check();
      continue;
    }
    if (fds[0].revents & POLLIN) {
      signalfd_siginfo info{};
      if (::read(signal_fd, &info, sizeof(info)) == static_cast<ssize_t>(sizeof(info))) {
        if (info.ssi_signo == SIGHUP) {
          reload(main);
          continue;
        }
        spdlog::info("received {}", info.ssi_signo == SIGINT ? "SIGINT" : "SIGTERM");
        return kExitOk;
      }
    }
    if (fds[1].revents & POLLIN) return kExitRuntimeError;
  }
}

// Every socket is bound and the sandbox is in: the workers start serving, and
// scripts (the "ready" lines) and systemd (READY=1) learn so.
void start_serving(ServedVms& vms, metrics::HttpServer* metrics_endpoint, SystemdNotifier& systemd) {
  vms.start_all();
  if (metrics_endpoint != nullptr) metrics_endpoint->start();
  for (const auto& worker : vms.workers()) log_vm_ready(worker->config());
  // NOLINTNEXTLINE(concurrency-mt-unsafe): nothing in the daemon calls setenv.
  if (std::getenv(kSandboxSelfTestEnv) != nullptr) run_sandbox_self_test();
  systemd.notify(fmt::format("READY=1\nSTATUS=serving {} VM(s)", vms.size()));
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
  uint64_t open_file_limit = 0;
  (void)fit_open_file_limit(config, &open_file_limit);  // logs a lowered cap; each VM computes its own
  SystemdNotifier systemd;                              // connects before the sandbox; sends after

  ServedVms vms(config.runtime, open_file_limit, [fd = failure_fd.get()] { notify_failure(fd); });
  vms.bind_all(config.vms);
  if (vms.empty()) {
    spdlog::error("no VM could start, exiting");
    return kExitRuntimeError;
  }
  std::unique_ptr<metrics::HttpServer> metrics_endpoint;  // declared after `vms`: destroyed first
  try {
    metrics_endpoint = make_metrics_endpoint(config.metrics, vms);
  } catch (const std::exception& e) {
    spdlog::error("{}; exiting", e.what());
    return kExitRuntimeError;
  }

  SocketFileWatch watch(vms.workers());
  // The sandbox goes in after every socket is bound and before any worker
  // thread starts, so no thread ever serves a guest unconfined.
  try {
    apply_sandbox(config.sandbox, watch.paths());
  } catch (const std::exception& e) {
    spdlog::error("sandbox: {}; exiting", e.what());
    return kExitRuntimeError;
  }

  start_serving(vms, metrics_endpoint.get(), systemd);
  MainThread main{config, vms, watch, systemd};
  const int exit_code = serve_until_shutdown(signal_fd.get(), failure_fd.get(), main);
  systemd.notify("STOPPING=1");
  spdlog::info("shutting down");
  if (metrics_endpoint) metrics_endpoint->stop();  // scrapes post to the workers: stop them first
  vms.stop_all();
  watch.report_leftovers();
  return exit_code;
}

}  // namespace vhost_vsock::daemon
