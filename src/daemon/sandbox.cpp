#include "daemon/sandbox.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <grp.h>
#include <linux/sched.h>
#include <pwd.h>
#include <sched.h>
#include <seccomp.h>
#include <spdlog/spdlog.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <charconv>
#include <cstdlib>
#include <filesystem>
#include <limits>
#include <memory>
#include <stdexcept>
#include <system_error>
#include <thread>

#include "base/errno_text.h"

namespace vhost_vsock::daemon {
namespace {

using base::errno_text;

// Syscalls the steady state needs, with no argument conditions. Derived by
// running the integration, hostile and e2e suites under `strace -f` and
// --seccomp=log (docs/security.md says how to redo it). Grouped by who needs them.
constexpr const char* kAllowed[] = {
    // Event loop, eventfds (kick/call), signalfd, the main thread's poll.
    "epoll_wait",
    "epoll_pwait",
    "epoll_pwait2",
    "epoll_ctl",
    "poll",
    "ppoll",
    "read",
    "write",
    // Host sockets and the vhost-user socket (fds arrive with SCM_RIGHTS).
    "readv",
    "writev",
    "recvfrom",
    "sendto",
    "recvmsg",
    "sendmsg",
    "accept4",
    "connect",
    "shutdown",
    "getsockopt",
    "close",
    // Guest memory tables come and go with the front-end; fstat checks region sizes.
    "munmap",
    "fstat",
    "newfstatat",
    "statx",
    // Socket files are removed at exit; the main thread checks they still exist.
    "unlink",
    "unlinkat",
    // glibc: malloc, threads, time, logging.
    "brk",
    "mremap",
    "madvise",
    "futex",
    "set_robust_list",
    "rseq",
    "sched_yield",
    "nanosleep",
    "clock_nanosleep",
    "clock_gettime",
    "gettimeofday",
    "getpid",
    "gettid",
    "rt_sigprocmask",
    "rt_sigreturn",
    "restart_syscall",
    "exit",
    "exit_group",
    // glibc installs its thread signal handlers at the first pthread_create,
    // which is the first worker start, after the filter.
    "rt_sigaction",
#ifdef VUV_SANITIZER_RUNTIME
    // Sanitizer runtimes (test builds only): LeakSanitizer stops the world
    // with a ptrace()ing helper thread at exit, reports read /proc.
    "ptrace",
    "wait4",
    "getdents",
    "getdents64",
    "readlink",
    "readlinkat",
    "sigaltstack",
    "sched_getaffinity",
    "getrlimit",
    "prlimit64",
    "setrlimit",
    "lseek",
    "pipe2",
    "dup2",
    "dup3",
    "uname",
    "getppid",
    "kill",
    "getuid",
    "geteuid",
    "getgid",
    "getegid",
    "sysinfo",
    "tkill",
#endif
};

#ifdef VUV_SANITIZER_RUNTIME
// The sanitizers' helpers fork, ptrace and name threads: no argument checks
// on clone, prctl and tgkill in sanitizer builds.
constexpr bool kSanitizerRuntime = true;
#else
constexpr bool kSanitizerRuntime = false;
#endif

// The --metrics HTTP server's threads (cpp-httplib) on the TCP socket bound
// before the filter: accept, select-based waits, per-socket timeouts and
// addresses. No new sockets: socket() stays AF_UNIX only.
constexpr const char* kMetricsServer[] = {"accept", "select", "pselect6", "setsockopt", "getpeername", "getsockname"};

// A SIGHUP reload (--config) binds new VMs' sockets, creates their event
// loops and checks their socket directories like startup does. Reading the
// file is an open for reading only (see add_open_rules).
constexpr const char* kConfigReload[] = {"bind",   "listen",    "epoll_create1", "eventfd2",
                                         "access", "faccessat", "faccessat2",    "lseek"};

// Syscalls allowed only with certain arguments (see install_seccomp_filter).
constexpr const char* kConditional[] = {"socket", "mmap", "mprotect", "clone", "prctl", "tgkill", "fcntl"};

void check(int rc, const char* what) {
  if (rc < 0) throw std::runtime_error(fmt::format("seccomp: {}: {}", what, errno_text(-rc)));
}

// Adds an allow rule unless this architecture has no such syscall.
void allow(scmp_filter_ctx ctx, const char* name, std::initializer_list<scmp_arg_cmp> conditions = {}) {
  const int nr = seccomp_syscall_resolve_name(name);
  if (nr == __NR_SCMP_ERROR) return;
  const int rc = seccomp_rule_add_array(ctx, SCMP_ACT_ALLOW, nr, static_cast<unsigned>(conditions.size()),
                                        conditions.size() ? conditions.begin() : nullptr);
  if (rc == -EDOM) return;  // a pseudo-syscall that does not exist on this architecture
  check(rc, name);
}

// glibc probes a few files at run time (malloc reads
// /proc/sys/vm/overcommit_memory once when trimming a thread's heap) and
// copes with failure: opening files fails with EACCES rather than killing.
// LeakSanitizer lists /proc/self/task at exit, so sanitizer builds may open.
// With `read_only_opens` (reload) an open for reading is allowed, any other
// access mode or O_CREAT still gets EACCES.
void add_open_rules(scmp_filter_ctx ctx, bool read_only_opens) {
  struct OpenCall {
    const char* name;
    unsigned flags_arg;
  };
  for (const OpenCall call : {OpenCall{"open", 1}, OpenCall{"openat", 2}}) {
    const char* name = call.name;
    const unsigned flags_arg = call.flags_arg;
    const int nr = seccomp_syscall_resolve_name(name);
    if (nr == __NR_SCMP_ERROR) continue;
    if (kSanitizerRuntime) {
      check(seccomp_rule_add(ctx, SCMP_ACT_ALLOW, nr, 0), name);
      continue;
    }
    if (!read_only_opens) {
      check(seccomp_rule_add(ctx, SCMP_ACT_ERRNO(EACCES), nr, 0), name);
      continue;
    }
    const auto masked = [flags_arg](scmp_datum_t mask, scmp_datum_t value) {
      return scmp_arg_cmp{flags_arg, SCMP_CMP_MASKED_EQ, mask, value};
    };
    check(seccomp_rule_add(ctx, SCMP_ACT_ALLOW, nr, 1, masked(O_ACCMODE | O_CREAT, O_RDONLY)), name);
    check(seccomp_rule_add(ctx, SCMP_ACT_ERRNO(EACCES), nr, 1, masked(O_ACCMODE, O_WRONLY)), name);
    check(seccomp_rule_add(ctx, SCMP_ACT_ERRNO(EACCES), nr, 1, masked(O_ACCMODE, O_RDWR)), name);
    check(seccomp_rule_add(ctx, SCMP_ACT_ERRNO(EACCES), nr, 1, masked(O_ACCMODE | O_CREAT, O_RDONLY | O_CREAT)), name);
  }
  // openat2's flags live in memory the filter cannot read.
  const int openat2 = seccomp_syscall_resolve_name("openat2");
  if (openat2 != __NR_SCMP_ERROR) {
    check(seccomp_rule_add(ctx, kSanitizerRuntime ? SCMP_ACT_ALLOW : SCMP_ACT_ERRNO(EACCES), openat2, 0), "openat2");
  }
}

void add_rules(scmp_filter_ctx ctx, bool metrics_server, bool config_reload, bool vsock_forwarding) {
  for (const char* name : kAllowed) allow(ctx, name);
  if (metrics_server) {
    for (const char* name : kMetricsServer) allow(ctx, name);
  }
  if (config_reload) {
    for (const char* name : kConfigReload) allow(ctx, name);
  }

  // Only Unix sockets: guest connects go to <uds-path>_<port>; nothing else
  // may be dialled even by a compromised worker.
  allow(ctx, "socket", {SCMP_A0(SCMP_CMP_EQ, AF_UNIX)});
  // With forward-cid, guest connects dial AF_VSOCK (connect and getsockopt
  // are on the list already); never without it.
  if (vsock_forwarding) allow(ctx, "socket", {SCMP_A0(SCMP_CMP_EQ, AF_VSOCK)});
  // Host sockets get a window-sized send buffer (size_host_send_buffer); no other option.
  allow(ctx, "setsockopt", {SCMP_A1(SCMP_CMP_EQ, SOL_SOCKET), SCMP_A2(SCMP_CMP_EQ, SO_SNDBUF)});
  // No executable memory: guest memory maps, malloc and thread stacks are data.
  allow(ctx, "mmap", {SCMP_A2(SCMP_CMP_MASKED_EQ, PROT_EXEC, 0)});
  allow(ctx, "mprotect", {SCMP_A2(SCMP_CMP_MASKED_EQ, PROT_EXEC, 0)});
  // Threads only (worker start): a new process would escape nothing, but a
  // fork has no business here. glibc tries clone3 first, whose flags live in
  // memory seccomp cannot read, so clone3 says ENOSYS and glibc falls back.
  if (kSanitizerRuntime) {
    allow(ctx, "clone");
  } else {
    allow(ctx, "clone", {SCMP_A0(SCMP_CMP_MASKED_EQ, CLONE_THREAD, CLONE_THREAD)});
  }
  const int clone3 = seccomp_syscall_resolve_name("clone3");
  if (clone3 != __NR_SCMP_ERROR) check(seccomp_rule_add(ctx, SCMP_ACT_ERRNO(ENOSYS), clone3, 0), "clone3");
  if (kSanitizerRuntime) {
    allow(ctx, "prctl");
    allow(ctx, "tgkill");
  } else {
    // Worker thread names.
    allow(ctx, "prctl", {SCMP_A0(SCMP_CMP_EQ, PR_SET_NAME)});
    allow(ctx, "prctl", {SCMP_A0(SCMP_CMP_EQ, PR_GET_NAME)});
    // abort() and raise() signal the calling thread of this process only.
    allow(ctx, "tgkill", {SCMP_A0(SCMP_CMP_EQ, static_cast<scmp_datum_t>(::getpid()))});
  }
  // Descriptor flags of fds the front-end hands over (made non-blocking).
  for (int command : {F_GETFL, F_SETFL, F_GETFD, F_SETFD}) {
    allow(ctx, "fcntl", {SCMP_A1(SCMP_CMP_EQ, static_cast<scmp_datum_t>(command))});
  }
  add_open_rules(ctx, config_reload);
}

struct FilterDeleter {
  void operator()(void* ctx) const { seccomp_release(ctx); }
};

bool parse_id(std::string_view text, uint32_t* out) {
  if (text.empty()) return false;
  uint32_t value = 0;
  auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value, 10);
  // (uid_t)-1 means "unchanged" to setresuid: never a valid target.
  if (ec != std::errc() || end != text.data() + text.size() || value == std::numeric_limits<uint32_t>::max()) {
    return false;
  }
  *out = value;
  return true;
}

bool is_all_digits(std::string_view text) {
  return !text.empty() && text.find_first_not_of("0123456789") == std::string_view::npos;
}

// getpwnam_r/getgrnam_r with a buffer that grows on ERANGE.
template <typename Entry, typename Lookup>
bool lookup(Lookup fn, const std::string& key, Entry* entry, std::string* storage) {
  storage->resize(1024);
  for (int attempt = 0; attempt < 8; ++attempt) {
    Entry* result = nullptr;
    const int rc = fn(key, entry, storage->data(), storage->size(), &result);
    if (rc == ERANGE) {
      storage->resize(storage->size() * 4);
      continue;
    }
    return rc == 0 && result != nullptr;
  }
  return false;
}

bool find_user_by_name(const std::string& name, passwd* pw, std::string* storage) {
  return lookup<passwd>([](const std::string& key, passwd* e, char* buf, size_t len,
                           passwd** res) { return ::getpwnam_r(key.c_str(), e, buf, len, res); },
                        name, pw, storage);
}

bool find_user_by_id(uid_t uid, passwd* pw, std::string* storage) {
  return lookup<passwd>([uid](const std::string&, passwd* e, char* buf, size_t len,
                              passwd** res) { return ::getpwuid_r(uid, e, buf, len, res); },
                        std::string(), pw, storage);
}

bool find_group_by_name(const std::string& name, group* gr, std::string* storage) {
  return lookup<group>([](const std::string& key, group* e, char* buf, size_t len,
                          group** res) { return ::getgrnam_r(key.c_str(), e, buf, len, res); },
                       name, gr, storage);
}

// Warns when the socket files cannot be removed at exit by the user we now are.
void check_socket_dirs_writable(const std::vector<std::string>& socket_paths) {
  for (const auto& path : socket_paths) {
    // Built in one expression: assigning "." afterwards makes gcc 12 -O3 report
    // a false -Wrestrict overlap in std::string (GCC bug 105329).
    const std::filesystem::path parent = std::filesystem::path(path).parent_path();
    const std::string dir = parent.empty() ? std::string(".") : parent.string();
    if (::faccessat(AT_FDCWD, dir.c_str(), W_OK | X_OK, AT_EACCESS) != 0) {
      spdlog::warn(
          "sandbox: directory {} is not writable by uid {}: {} cannot be removed at exit (it is replaced at the "
          "next start)",
          dir, ::geteuid(), path);
    }
  }
}

}  // namespace

bool parse_user_spec(std::string_view text, uid_t* uid, gid_t* gid, std::string* error) {
  const size_t colon = text.find(':');
  const std::string user(text.substr(0, colon));
  const bool has_group = colon != std::string_view::npos;
  const std::string group_text = has_group ? std::string(text.substr(colon + 1)) : std::string();
  if (user.empty() || (has_group && group_text.empty())) {
    *error = fmt::format("'{}' is not NAME, NAME:GROUP, UID or UID:GID", text);
    return false;
  }

  std::string storage;
  passwd pw{};
  uint32_t resolved_uid = 0;
  uint32_t resolved_gid = 0;
  bool have_gid = false;
  if (is_all_digits(user)) {
    if (!parse_id(user, &resolved_uid)) {
      *error = fmt::format("'{}' is not a valid user ID", user);
      return false;
    }
    if (find_user_by_id(resolved_uid, &pw, &storage)) {
      resolved_gid = pw.pw_gid;
      have_gid = true;
    }
  } else if (find_user_by_name(user, &pw, &storage)) {
    resolved_uid = pw.pw_uid;
    resolved_gid = pw.pw_gid;
    have_gid = true;
  } else {
    *error = fmt::format("unknown user '{}'", user);
    return false;
  }

  if (has_group) {
    group gr{};
    if (is_all_digits(group_text)) {
      if (!parse_id(group_text, &resolved_gid)) {
        *error = fmt::format("'{}' is not a valid group ID", group_text);
        return false;
      }
    } else if (find_group_by_name(group_text, &gr, &storage)) {
      resolved_gid = gr.gr_gid;
    } else {
      *error = fmt::format("unknown group '{}'", group_text);
      return false;
    }
    have_gid = true;
  }
  if (!have_gid) resolved_gid = resolved_uid;  // a bare UID with no passwd entry
  *uid = resolved_uid;
  *gid = resolved_gid;
  return true;
}

std::vector<std::string> seccomp_allowed_syscalls() {
  std::vector<std::string> names(std::begin(kAllowed), std::end(kAllowed));
  names.insert(names.end(), std::begin(kConditional), std::end(kConditional));
  return names;
}

void install_seccomp_filter(SeccompMode mode, bool metrics_server, bool config_reload, bool vsock_forwarding) {
  if (mode == SeccompMode::kOff) return;
  // libseccomp sets it too (SCMP_FLTATR_CTL_NNP); set it ourselves so a
  // filter that fails to load still leaves no way to gain privileges.
  if (::prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) {
    throw std::runtime_error("prctl(PR_SET_NO_NEW_PRIVS): " + errno_text(errno));
  }
  const uint32_t default_action = mode == SeccompMode::kLog ? SCMP_ACT_LOG : SCMP_ACT_KILL_PROCESS;
  std::unique_ptr<void, FilterDeleter> ctx(seccomp_init(default_action));
  if (!ctx) throw std::runtime_error("seccomp_init failed");
  check(seccomp_attr_set(ctx.get(), SCMP_FLTATR_CTL_NNP, 1), "NO_NEW_PRIVS attribute");
  // Any thread that already exists gets the filter too.
  check(seccomp_attr_set(ctx.get(), SCMP_FLTATR_CTL_TSYNC, 1), "TSYNC attribute");
  add_rules(ctx.get(), metrics_server, config_reload, vsock_forwarding);
  check(seccomp_load(ctx.get()), "loading the filter");
}

void drop_privileges(uid_t uid, gid_t gid, const std::vector<std::string>& socket_paths) {
  for (const auto& path : socket_paths) {
    if (::lchown(path.c_str(), uid, gid) != 0) {
      throw std::runtime_error(fmt::format("cannot give {} to uid {} gid {}: {}", path, uid, gid, errno_text(errno)));
    }
  }
  // Supplementary groups first: they can only be dropped while still privileged.
  if (::setgroups(0, nullptr) != 0 && !(errno == EPERM && ::getgroups(0, nullptr) == 0)) {
    throw std::runtime_error("setgroups: " + errno_text(errno));
  }
  if (::setresgid(gid, gid, gid) != 0)
    throw std::runtime_error(fmt::format("setresgid({}): {}", gid, errno_text(errno)));
  if (::setresuid(uid, uid, uid) != 0)
    throw std::runtime_error(fmt::format("setresuid({}): {}", uid, errno_text(errno)));
  // Paranoia: a drop that could be undone is no drop.
  if (uid != 0 && (::setuid(0) == 0 || ::seteuid(0) == 0)) {
    throw std::runtime_error("privileges could be regained after dropping them");
  }
  if (::getuid() != uid || ::geteuid() != uid || ::getgid() != gid || ::getegid() != gid) {
    throw std::runtime_error("the user or group did not change");
  }
}

void apply_sandbox(const SandboxOptions& options, const std::vector<std::string>& socket_paths) {
  if (!options.enabled()) return;
  if (!options.user.empty()) {
    drop_privileges(options.uid, options.gid, socket_paths);
    spdlog::info("sandbox: running as uid={} gid={} (--user {}), supplementary groups dropped", options.uid,
                 options.gid, options.user);
    check_socket_dirs_writable(socket_paths);
  }
  if (::prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) {
    throw std::runtime_error("prctl(PR_SET_NO_NEW_PRIVS): " + errno_text(errno));
  }
  if (options.seccomp != SeccompMode::kOff) {
    install_seccomp_filter(options.seccomp, options.metrics_server, options.config_reload, options.vsock_forwarding);
    if (options.seccomp == SeccompMode::kKill) {
      spdlog::info("sandbox: seccomp filter installed ({} syscalls allowed); any other syscall kills the process",
                   seccomp_allowed_syscalls().size());
    } else {
      spdlog::warn(
          "sandbox: seccomp filter in LOG mode: syscalls outside the allow-list are logged by the kernel "
          "(audit, dmesg) and then allowed; this is for diagnosis, not protection");
    }
  }
}

void run_sandbox_self_test() {
  // A fresh thread: it inherits the filter exactly like the workers do.
  int result = 0;
  int error = 0;
  std::thread probe([&] {
    const char* argv[] = {"/nonexistent/vuv-sandbox-selftest", nullptr};
    const char* envp[] = {nullptr};
    result = static_cast<int>(::syscall(SYS_execve, argv[0], argv, envp));
    error = errno;
  });
  probe.join();
  spdlog::error("sandbox self-test: execve was not blocked (returned {}: {})", result, errno_text(error));
}

}  // namespace vhost_vsock::daemon
