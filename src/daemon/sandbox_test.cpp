// The sandbox in forked children: a filter, once installed, cannot be removed,
// so every case runs in its own process and reports through its exit status.
#include "daemon/sandbox.h"

#include <fcntl.h>
#include <grp.h>
#include <gtest/gtest.h>
#include <pwd.h>
#include <signal.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/ptrace.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <condition_variable>
#include <cstring>
#include <functional>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "base/unix_socket_address.h"
#include "daemon/cli.h"
#include "testing/temp_dir.h"

namespace vhost_vsock::daemon {
namespace {

using vhost_vsock::testing::TempDir;

#ifdef VUV_SANITIZER_RUNTIME
constexpr bool kSanitizerBuild = true;
#else
constexpr bool kSanitizerBuild = false;
#endif

// Runs `body` in a child; the child exits 0 when body returns true, 1 when
// false, 2 on an exception. Returns the raw wait status.
int run_in_child(const std::function<bool()>& body) {
  std::fflush(nullptr);
  const pid_t pid = ::fork();
  if (pid == 0) {
    int code = 2;
    try {
      code = body() ? 0 : 1;
    } catch (const std::exception& e) {
      std::fprintf(stderr, "child: %s\n", e.what());
    }
    ::_exit(code);
  }
  int status = 0;
  EXPECT_EQ(::waitpid(pid, &status, 0), pid);
  return status;
}

std::string describe(int status) {
  if (WIFEXITED(status)) return "exit " + std::to_string(WEXITSTATUS(status));
  if (WIFSIGNALED(status)) {
    // sigdescr_np, unlike strsignal, is thread-safe (no static buffer).
    const char* name = ::sigdescr_np(WTERMSIG(status));
    return "signal " + (name != nullptr ? std::string(name) : std::to_string(WTERMSIG(status)));
  }
  return "status " + std::to_string(status);
}

bool exited_ok(int status) {
  return WIFEXITED(status) && WEXITSTATUS(status) == 0;
}
bool killed_by_sigsys(int status) {
  return WIFSIGNALED(status) && WTERMSIG(status) == SIGSYS;
}

// ---------------------------------------------------------------------------
// --user parsing

// getpwuid/getpwnam are not thread-safe: the IDs of a passwd entry, if any, via
// the _r forms.
struct PasswdIds {
  uid_t uid;
  gid_t gid;
};
std::optional<PasswdIds> passwd_ids(const char* name, uid_t uid) {
  passwd entry{};
  passwd* found = nullptr;
  std::vector<char> buffer(16384);
  const int error = name != nullptr ? ::getpwnam_r(name, &entry, buffer.data(), buffer.size(), &found)
                                    : ::getpwuid_r(uid, &entry, buffer.data(), buffer.size(), &found);
  if (error != 0 || found == nullptr) return std::nullopt;
  return PasswdIds{found->pw_uid, found->pw_gid};
}

// parse_user_spec accepts `spec` and yields these IDs.
void expect_user_spec(const char* spec, uid_t want_uid, gid_t want_gid) {
  uid_t uid = 4242;  // neither root nor any ID below, so a missing write shows
  gid_t gid = 4242;
  std::string error;
  ASSERT_TRUE(parse_user_spec(spec, &uid, &gid, &error)) << spec << ": " << error;
  EXPECT_EQ(uid, want_uid) << spec;
  EXPECT_EQ(gid, want_gid) << spec;
}

TEST(UserSpec, NamesAndNumbers) {
  expect_user_spec("root", 0, 0);
  expect_user_spec("0:0", 0, 0);

  // A UID with no passwd entry: the group defaults to the same number.
  ASSERT_FALSE(passwd_ids(nullptr, 54321).has_value()) << "test assumes uid 54321 does not exist";
  expect_user_spec("54321", 54321, 54321);
  expect_user_spec("54321:100", 54321, 100);

  // A name takes the passwd entry's primary group unless a group is given.
  if (const auto nobody = passwd_ids("nobody", 0)) {
    const uid_t nobody_uid = nobody->uid;
    const gid_t nobody_gid = nobody->gid;
    expect_user_spec("nobody", nobody_uid, nobody_gid);
    expect_user_spec("nobody:root", nobody_uid, 0);
  }
}

TEST(UserSpec, RejectsMalformedAndUnknown) {
  uid_t uid = 7;
  gid_t gid = 7;
  const char* bad[] = {"",
                       ":",
                       "root:",
                       ":0",
                       "no-such-user-vuv",
                       "root:no-such-group-vuv",
                       "4294967295",
                       "99999999999",
                       "1000:4294967295",
                       "-1",
                       "12ab"};
  for (const char* text : bad) {
    std::string error;
    EXPECT_FALSE(parse_user_spec(text, &uid, &gid, &error)) << "'" << text << "' was accepted";
    EXPECT_FALSE(error.empty()) << text;
  }
  EXPECT_EQ(uid, 7u) << "outputs must not change on failure";
  EXPECT_EQ(gid, 7u);
}

TEST(SandboxCli, SeccompModesAndUser) {
  TempDir dir;
  const std::vector<std::string> vm = {"--socket", dir.file("s"), "--uds-path", dir.file("u")};
  auto with = [&](std::vector<std::string> extra) {
    extra.insert(extra.begin(), vm.begin(), vm.end());
    return parse_command_line(extra);
  };

  auto plain = with({});
  ASSERT_TRUE(plain.config);
  EXPECT_EQ(plain.config->sandbox.seccomp, SeccompMode::kOff);
  EXPECT_FALSE(plain.config->sandbox.enabled());

  auto kill = with({"--seccomp"});
  ASSERT_TRUE(kill.config) << ::testing::PrintToString(kill.errors);
  EXPECT_EQ(kill.config->sandbox.seccomp, SeccompMode::kKill);
  EXPECT_TRUE(kill.config->sandbox.enabled());

  auto log = with({"--seccomp=log"});
  ASSERT_TRUE(log.config) << ::testing::PrintToString(log.errors);
  EXPECT_EQ(log.config->sandbox.seccomp, SeccompMode::kLog);

  auto spaced = with({"--seccomp", "log"});
  ASSERT_TRUE(spaced.config) << ::testing::PrintToString(spaced.errors);
  EXPECT_EQ(spaced.config->sandbox.seccomp, SeccompMode::kLog);

  auto explicit_kill = with({"--seccomp=kill"});
  ASSERT_TRUE(explicit_kill.config);
  EXPECT_EQ(explicit_kill.config->sandbox.seccomp, SeccompMode::kKill);

  auto bogus = with({"--seccomp=trap"});
  EXPECT_FALSE(bogus.config);
  EXPECT_EQ(bogus.exit_code, kExitUsage);
  ASSERT_FALSE(bogus.errors.empty());
  EXPECT_NE(bogus.errors[0].find("--seccomp"), std::string::npos) << bogus.errors[0];

  auto user = with({"--user", "54321:100"});
  ASSERT_TRUE(user.config) << ::testing::PrintToString(user.errors);
  EXPECT_EQ(user.config->sandbox.user, "54321:100");
  EXPECT_EQ(user.config->sandbox.uid, 54321u);
  EXPECT_EQ(user.config->sandbox.gid, 100u);
  EXPECT_TRUE(user.config->sandbox.enabled());

  auto unknown = with({"--user", "no-such-user-vuv"});
  EXPECT_FALSE(unknown.config);
  ASSERT_FALSE(unknown.errors.empty());
  EXPECT_NE(unknown.errors[0].find("--user"), std::string::npos) << unknown.errors[0];
  EXPECT_NE(unknown.errors[0].find("no-such-user-vuv"), std::string::npos) << unknown.errors[0];
}

// ---------------------------------------------------------------------------
// The filter: what the daemon does keeps working...

TEST(Seccomp, SteadyStateOperationsStillWork) {
  // Set up what the daemon sets up before the filter: an epoll fd and a pipe.
  const int status = run_in_child([] {
    const int epoll_fd = ::epoll_create1(EPOLL_CLOEXEC);
    int pipe_fds[2];
    if (epoll_fd < 0 || ::pipe2(pipe_fds, O_CLOEXEC | O_NONBLOCK) != 0) return false;
    install_seccomp_filter(SeccompMode::kKill);

    // Unix sockets: listener, connect, accept, data both ways, shutdown.
    const std::string path = "/tmp/vuv-sbx-" + std::to_string(::getpid());
    const int listener = ::socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    const sockaddr_un addr = base::unix_socket_address(path);
    // bind/listen are not on the list: the daemon binds before the filter.
    if (listener < 0) return false;
    epoll_event ev{};
    ev.events = EPOLLIN;
    if (::epoll_ctl(epoll_fd, EPOLL_CTL_ADD, pipe_fds[0], &ev) != 0) return false;
    if (::write(pipe_fds[1], "x", 1) != 1) return false;
    epoll_event out{};
    if (::epoll_wait(epoll_fd, &out, 1, 1000) != 1) return false;
    char byte = 0;
    if (::read(pipe_fds[0], &byte, 1) != 1 || byte != 'x') return false;
    const int client = ::socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    // Nobody listens there: ENOENT, but the syscall is allowed.
    if (::connect(client, reinterpret_cast<const sockaddr*>(&addr), sizeof(addr)) == 0 || errno != ENOENT) return false;
    ::close(client);
    ::close(listener);

    // Threads (glibc falls back from clone3 to clone), malloc, big and small.
    std::vector<std::string> blocks;
    std::thread worker([&] {
      for (int i = 0; i < 64; ++i) blocks.emplace_back(size_t{1} << (i % 22), 'a');
    });
    worker.join();
    if (blocks.size() != 64) return false;
    blocks.clear();
    // Guest memory style mapping: shared, read-write, never executable.
    void* map = ::mmap(nullptr, 1 << 20, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (map == MAP_FAILED) return false;
    static_cast<char*>(map)[100] = 1;
    if (::munmap(map, 1 << 20) != 0) return false;
    // File opens fail politely (glibc probes files and copes); sanitizer
    // builds let them through for LeakSanitizer.
    const int opened = ::open("/etc/passwd", O_RDONLY | O_CLOEXEC);
    if (kSanitizerBuild ? opened < 0 : (opened >= 0 || errno != EACCES)) return false;
    // clone3 reports ENOSYS so glibc uses clone, where flags can be checked.
    if (::syscall(SYS_clone3, nullptr, 0) != -1 || errno != ENOSYS) return false;
    // Socket files are removed at exit.
    if (::unlink(path.c_str()) == 0 || errno != ENOENT) return false;
    struct stat st {};
    if (::fstat(pipe_fds[0], &st) != 0) return false;
    return true;
  });
  EXPECT_TRUE(exited_ok(status)) << describe(status);
}

// With --config the filter also lets a SIGHUP reload bind new VMs' sockets,
// build their event loops and read the file; writing files stays refused.
TEST(Seccomp, ConfigReloadAllowsBindingAndReadOnlyOpens) {
  const TempDir dir;
  const std::string config = dir.write("vms.yaml", "vms: []\n");
  const std::string socket_path = dir.file("new.sock");
  const int status = run_in_child([&] {
    install_seccomp_filter(SeccompMode::kKill, false, /*config_reload=*/true);
    const int listener = ::socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    const sockaddr_un addr = base::unix_socket_address(socket_path);
    if (listener < 0 || ::bind(listener, reinterpret_cast<const sockaddr*>(&addr), sizeof(addr)) != 0) return false;
    if (::listen(listener, 16) != 0) return false;
    if (::epoll_create1(EPOLL_CLOEXEC) < 0 || ::eventfd(0, EFD_CLOEXEC) < 0) return false;
    if (::access(dir.path().c_str(), W_OK | X_OK) != 0) return false;
    const int reading = ::open(config.c_str(), O_RDONLY | O_CLOEXEC);
    if (reading < 0) return false;
    char buffer[16];
    if (::read(reading, buffer, sizeof(buffer)) <= 0) return false;
    if (kSanitizerBuild) return true;  // sanitizer builds allow every open
    // Writing or creating files is still refused, politely.
    for (const int flags : {O_WRONLY, O_RDWR, O_RDONLY | O_CREAT, O_WRONLY | O_CREAT | O_TRUNC}) {
      if (::open(dir.file("other").c_str(), flags | O_CLOEXEC, 0600) >= 0 || errno != EACCES) return false;
    }
    return ::unlink(socket_path.c_str()) == 0;
  });
  EXPECT_TRUE(exited_ok(status)) << describe(status);
}

// ...and anything else kills the whole process with SIGSYS.
struct Forbidden {
  const char* name;
  bool allowed_in_sanitizer_builds;
  std::function<void()> call;
};

class SeccompForbidden : public ::testing::TestWithParam<Forbidden> {};

TEST_P(SeccompForbidden, KillsTheProcess) {
  const Forbidden& f = GetParam();
  if (kSanitizerBuild && f.allowed_in_sanitizer_builds) GTEST_SKIP() << "sanitizer runtimes need " << f.name;
  const int status = run_in_child([&] {
    install_seccomp_filter(SeccompMode::kKill);
    f.call();
    return true;  // reached only if the call was not blocked
  });
  EXPECT_TRUE(killed_by_sigsys(status)) << f.name << ": " << describe(status);
}

const Forbidden kForbidden[] = {
    {"execve", false,
     [] {
       const char* argv[] = {"/bin/true", nullptr};
       ::syscall(SYS_execve, argv[0], argv, nullptr);
     }},
    {"socket_inet", false, [] { ::socket(AF_INET, SOCK_STREAM, 0); }},
    {"socket_netlink", false, [] { ::socket(AF_NETLINK, SOCK_RAW, 0); }},
    // Results are discarded: the filter kills the process before the call returns.
    {"mmap_exec", false,
     [] { static_cast<void>(::mmap(nullptr, 4096, PROT_READ | PROT_EXEC, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)); }},
    {"mprotect_exec", false,
     [] {
       void* page = ::mmap(nullptr, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
       ::mprotect(page, 4096, PROT_READ | PROT_EXEC);
     }},
    {"fork", true, [] { ::syscall(SYS_clone, SIGCHLD, nullptr, nullptr, nullptr, 0); }},
    {"ptrace", true, [] { ::ptrace(PTRACE_TRACEME, 0, nullptr, nullptr); }},
    {"bind", false,
     [] {
       // Rebinding (a new listener) is setup work, not steady state.
       sockaddr_un addr{};
       addr.sun_family = AF_UNIX;
       static_cast<void>(::bind(-1, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)));
     }},
    {"setuid", false, [] { ::syscall(SYS_setuid, 0); }},
    {"prctl_dumpable", true, [] { ::prctl(PR_SET_DUMPABLE, 1, 0, 0, 0); }},
    {"kill_other_process", true, [] { ::syscall(SYS_tgkill, ::getppid(), ::getppid(), 0); }},
    {"chmod", false, [] { ::chmod("/tmp", 0777); }},
};

INSTANTIATE_TEST_SUITE_P(Syscalls, SeccompForbidden, ::testing::ValuesIn(kForbidden),
                         [](const ::testing::TestParamInfo<Forbidden>& info) { return info.param.name; });

// socket(AF_VSOCK, ...) with a type flag the kernel refuses (EINVAL) before it
// looks at the family: the filter's decision shows, and no AF_VSOCK socket is
// ever created on the test host (not even if the filter let it through).
constexpr int kRefusedTypeFlag = 0x40000000;
int vsock_socket_probe() {
  return ::socket(AF_VSOCK, SOCK_STREAM | kRefusedTypeFlag, 0);
}

TEST(Seccomp, AfVsockSocketsOnlyWithForwarding) {
  const int without = run_in_child([] {
    install_seccomp_filter(SeccompMode::kKill);
    vsock_socket_probe();
    return true;
  });
  EXPECT_TRUE(killed_by_sigsys(without)) << "AF_VSOCK allowed without forward-cid: " << describe(without);
  const int with = run_in_child([] {
    install_seccomp_filter(SeccompMode::kKill, false, false, /*vsock_forwarding=*/true);
    // Allowed through the filter: the kernel's own EINVAL comes back.
    if (vsock_socket_probe() != -1 || errno != EINVAL) return false;
    // Forwarding allows AF_VSOCK only, not every family.
    ::socket(AF_INET, SOCK_STREAM, 0);
    return true;
  });
  EXPECT_TRUE(killed_by_sigsys(with)) << "AF_INET allowed with forwarding, or AF_VSOCK refused: " << describe(with);
}

TEST(Seccomp, ForbiddenCallOnAnotherThreadKillsTheWholeProcess) {
  const int status = run_in_child([] {
    install_seccomp_filter(SeccompMode::kKill);
    std::thread offender([] { ::socket(AF_INET, SOCK_STREAM, 0); });
    offender.join();
    return true;  // a thread-only kill would let us get here and exit 0
  });
  EXPECT_TRUE(killed_by_sigsys(status)) << describe(status);
}

TEST(Seccomp, ThreadsStartedBeforeTheFilterAreCoveredToo) {
  const int status = run_in_child([] {
    std::mutex mu;
    std::condition_variable cv;
    bool go = false;
    std::thread early([&] {
      std::unique_lock lock(mu);
      cv.wait(lock, [&] { return go; });
      ::socket(AF_INET, SOCK_STREAM, 0);  // TSYNC: filtered although it predates the filter
    });
    install_seccomp_filter(SeccompMode::kKill);
    {
      std::lock_guard lock(mu);
      go = true;
    }
    cv.notify_one();
    early.join();
    return true;
  });
  EXPECT_TRUE(killed_by_sigsys(status)) << describe(status);
}

TEST(Seccomp, LogModeLetsForbiddenCallsThrough) {
  const int status = run_in_child([] {
    install_seccomp_filter(SeccompMode::kLog);
    const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0) return false;
    ::close(fd);
    // Explicit denials still apply: clone3 is refused, not logged.
    return ::syscall(SYS_clone3, nullptr, 0) == -1 && errno == ENOSYS;
  });
  EXPECT_TRUE(exited_ok(status)) << describe(status);
}

TEST(Seccomp, SelfTestHookDiesUnderTheFilterAndSurvivesWithout) {
  const int sandboxed = run_in_child([] {
    install_seccomp_filter(SeccompMode::kKill);
    run_sandbox_self_test();
    return true;
  });
  EXPECT_TRUE(killed_by_sigsys(sandboxed)) << describe(sandboxed);
  const int unsandboxed = run_in_child([] {
    run_sandbox_self_test();  // execve of a missing file: ENOENT, harmless
    return true;
  });
  EXPECT_TRUE(exited_ok(unsandboxed)) << describe(unsandboxed);
}

TEST(Sandbox, ApplySetsNoNewPrivsAndNothingWhenDisabled) {
  const int disabled = run_in_child([] {
    apply_sandbox(SandboxOptions{}, {});
    return ::prctl(PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0) == 0;
  });
  EXPECT_TRUE(exited_ok(disabled)) << describe(disabled);
  const int enabled = run_in_child([] {
    SandboxOptions options;
    options.seccomp = SeccompMode::kLog;  // log mode leaves prctl usable for the check
    apply_sandbox(options, {});
    return ::prctl(PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0) == 1;
  });
  EXPECT_TRUE(exited_ok(enabled)) << describe(enabled);
}

// ---------------------------------------------------------------------------
// --user

TEST(DropPrivileges, SwitchesUserGroupsAndSocketOwnership) {
  if (::geteuid() != 0) GTEST_SKIP() << "needs root";
  TempDir dir;
  const std::string socket_path = dir.make_socket_file("vhost.sock");
  ::chmod(dir.path().c_str(), 0777);
  const int status = run_in_child([&] {
    // Start with a supplementary group so dropping it is visible.
    const gid_t extra = 4242;
    if (::setgroups(1, &extra) != 0) return false;
    drop_privileges(54321, 54322, {socket_path});
    gid_t groups[8];
    const bool ids = ::getuid() == 54321 && ::geteuid() == 54321 && ::getgid() == 54322 && ::getegid() == 54322;
    const bool no_groups = ::getgroups(8, groups) == 0;
    const bool cannot_return = ::setuid(0) != 0 && ::seteuid(0) != 0;
    struct stat st {};
    const bool chowned = ::lstat(socket_path.c_str(), &st) == 0 && st.st_uid == 54321 && st.st_gid == 54322;
    // The point of handing over the file: the unprivileged daemon can remove it.
    const bool removable = ::unlink(socket_path.c_str()) == 0;
    return ids && no_groups && cannot_return && chowned && removable;
  });
  EXPECT_TRUE(exited_ok(status)) << describe(status);
}

TEST(DropPrivileges, FailsLoudlyWhenItCannot) {
  if (::geteuid() != 0) GTEST_SKIP() << "needs root";
  const int status = run_in_child([] {
    drop_privileges(54321, 54321, {});
    try {
      drop_privileges(0, 0, {});  // an unprivileged process cannot become root
    } catch (const std::runtime_error& e) {
      return std::string(e.what()).find("set") != std::string::npos;
    }
    return false;
  });
  EXPECT_TRUE(exited_ok(status)) << describe(status);
}

TEST(DropPrivileges, ThenSeccompTogether) {
  if (::geteuid() != 0) GTEST_SKIP() << "needs root";
  const int status = run_in_child([] {
    SandboxOptions options;
    options.user = "54321";
    options.uid = 54321;
    options.gid = 54321;
    options.seccomp = SeccompMode::kKill;
    apply_sandbox(options, {});
    // The filter is in place after the drop (setuid would need it), and the
    // steady state still works as the new user.
    return ::socket(AF_UNIX, SOCK_STREAM, 0) >= 0;
  });
  EXPECT_TRUE(exited_ok(status)) << describe(status);
}

}  // namespace
}  // namespace vhost_vsock::daemon
