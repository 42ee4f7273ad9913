#include "hostile_support.h"

#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <sstream>
#include <stdexcept>
#include <thread>

#include "base/errno_text.h"

extern char** environ;

namespace vhost_vsock::hostile {
namespace {

using Clock = std::chrono::steady_clock;

#ifndef VUV_HOSTILE_DAEMON_PATH
#define VUV_HOSTILE_DAEMON_PATH "vhost-user-vsock"
#endif

std::atomic<uint64_t> g_peak_hwm_kib{0};

void record_peak(uint64_t hwm_kib) {
  uint64_t seen = g_peak_hwm_kib.load();
  while (hwm_kib > seen && !g_peak_hwm_kib.compare_exchange_weak(seen, hwm_kib)) {
  }
}

// Prints the binary's peak at the end, for docs/security.md and the report.
class PeakReporter : public ::testing::Environment {
 public:
  void TearDown() override {
    std::cout << "[ memory   ] peak daemon VmHWM in this binary: " << peak_hwm_mib() << " MiB"
              << (kSanitized ? " (sanitizer build)" : "") << std::endl;
  }
};
[[maybe_unused]] const auto* const g_reporter = ::testing::AddGlobalTestEnvironment(new PeakReporter);

bool is_socket(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0 && S_ISSOCK(st.st_mode);
}

std::string daemon_binary() {
  const char* env = std::getenv("VUV_DAEMON");
  return env != nullptr && *env != '\0' ? env : VUV_HOSTILE_DAEMON_PATH;
}

// Splits "a b" style env values; good enough for log levels.
std::string log_level() {
  const char* env = std::getenv("VUV_DAEMON_LOG_LEVEL");
  return env != nullptr && *env != '\0' ? env : "info";
}

}  // namespace

std::string MemoryUse::describe() const {
  std::ostringstream out;
  out.precision(1);
  out << std::fixed << "VmRSS " << static_cast<double>(rss_kib) / 1024 << " MiB (own " << own_mib()
      << ", guest RAM mapped " << static_cast<double>(shmem_kib) / 1024 << "), VmHWM " << hwm_mib() << " MiB";
  return out.str();
}

std::string describe_status(int status) {
  if (status == -1) return "not exited (or killed by the test)";
  if (WIFEXITED(status)) return "exit code " + std::to_string(WEXITSTATUS(status));
  if (WIFSIGNALED(status)) return std::string("killed by ") + ::strsignal(WTERMSIG(status));
  return "wait status " + std::to_string(status);
}

double peak_hwm_mib() {
  return static_cast<double>(g_peak_hwm_kib.load()) / 1024;
}

// ---------------------------------------------------------------------------
// HostileDaemon

HostileDaemon::HostileDaemon(DaemonSpec spec) : spec_(std::move(spec)) {
  char pattern[] = "/tmp/vuvhXXXXXX";
  if (::mkdtemp(pattern) == nullptr) throw std::runtime_error("mkdtemp: " + base::errno_text(errno));
  dir_ = pattern;
  log_path_ = dir_ + "/daemon.log";
  if (spec_.uds_in_subdir && ::mkdir(uds_dir().c_str(), 0755) != 0) {
    throw std::runtime_error("mkdir " + uds_dir() + ": " + base::errno_text(errno));
  }
  ::chmod(dir_.c_str(), spec_.dir_mode);
  ::chmod(uds_dir().c_str(), spec_.dir_mode);
  args_ = {daemon_binary(), "--log-level", log_level()};
  for (int vm = 0; vm < spec_.vms; ++vm) {
    args_.push_back("--vm");
    args_.push_back("guest-cid=" + std::to_string(cid(vm)) + ",socket=" + socket_path(vm) +
                    ",uds-path=" + uds_path(vm));
  }
  args_.insert(args_.end(), spec_.extra_args.begin(), spec_.extra_args.end());

  // Everything the child needs is built before fork(); after it, only
  // async-signal-safe calls.
  std::vector<char*> argv;
  for (auto& arg : args_) argv.push_back(arg.data());
  argv.push_back(nullptr);
  std::vector<std::string> env_storage;
  for (char** e = environ; *e != nullptr; ++e) env_storage.emplace_back(*e);
  env_storage.insert(env_storage.end(), spec_.env.begin(), spec_.env.end());
  std::vector<char*> envp;
  for (auto& e : env_storage) envp.push_back(e.data());
  envp.push_back(nullptr);

  const pid_t parent = ::getpid();
  const int log_fd = ::open(log_path_.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  const int null_fd = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
  if (log_fd < 0 || null_fd < 0) throw std::runtime_error("cannot open " + log_path_);
  pid_ = ::fork();
  if (pid_ == 0) {
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);  // never outlive a killed test
    if (::getppid() != parent) ::_exit(127);
    ::dup2(null_fd, STDIN_FILENO);
    ::dup2(log_fd, STDOUT_FILENO);
    ::dup2(log_fd, STDERR_FILENO);
    ::execve(argv[0], argv.data(), envp.data());
    ::_exit(127);
  }
  ::close(log_fd);
  ::close(null_fd);
  if (pid_ < 0) throw std::runtime_error("fork: " + base::errno_text(errno));

  const auto deadline = Clock::now() + spec_.startup_timeout;
  for (int vm = 0; vm < spec_.vms; ++vm) {
    while (!is_socket(socket_path(vm)) || !is_socket(uds_path(vm))) {
      if (!running()) {
        // Sockets bound, then died (a test may ask for that): the caller checks the status.
        if (is_socket(socket_path(vm)) && is_socket(uds_path(vm))) break;
        throw std::runtime_error("daemon exited during startup (" + describe_status(status_) + "); log:\n" + log());
      }
      if (Clock::now() >= deadline) throw std::runtime_error("daemon did not start in time; log:\n" + log());
      std::this_thread::sleep_for(Millis(5));
    }
  }
}

HostileDaemon::~HostileDaemon() {
  if (running()) {
    record_peak(memory().hwm_kib);
    ::kill(pid_, SIGKILL);
    int status = 0;
    ::waitpid(pid_, &status, 0);
  }
  if (std::getenv("VUV_KEEP_TEMP") == nullptr) {
    std::error_code ignored;
    std::filesystem::permissions(dir_, std::filesystem::perms::owner_all, std::filesystem::perm_options::add, ignored);
    std::filesystem::permissions(uds_dir(), std::filesystem::perms::owner_all, std::filesystem::perm_options::add,
                                 ignored);
    std::filesystem::remove_all(dir_, ignored);
  } else {
    std::cerr << "kept " << dir_ << "\n";
  }
}

std::string HostileDaemon::socket_path(int vm) const {
  return dir_ + "/v" + std::to_string(vm) + ".sock";
}

std::string HostileDaemon::uds_dir() const {
  return spec_.uds_in_subdir ? dir_ + "/uds" : dir_;
}

std::string HostileDaemon::uds_path(int vm) const {
  return uds_dir() + "/u" + std::to_string(vm);
}

bool HostileDaemon::running() {
  if (pid_ <= 0) return false;
  int status = 0;
  const pid_t r = ::waitpid(pid_, &status, WNOHANG);
  if (r == pid_) {
    status_ = status;
    pid_ = -1;
    return false;
  }
  return r == 0;
}

int HostileDaemon::wait_exit(Millis timeout) {
  const auto deadline = Clock::now() + timeout;
  while (running()) {
    if (Clock::now() >= deadline) return -1;
    std::this_thread::sleep_for(Millis(5));
  }
  return status_;
}

int HostileDaemon::terminate(Millis grace) {
  if (!running()) return status_;
  record_peak(memory().hwm_kib);
  ::kill(pid_, SIGTERM);
  if (wait_exit(grace) != -1) return status_;
  ::kill(pid_, SIGKILL);
  int status = 0;
  ::waitpid(pid_, &status, 0);
  pid_ = -1;
  status_ = -1;
  return -1;
}

std::string HostileDaemon::log() const {
  std::ifstream in(log_path_);
  std::stringstream out;
  out << in.rdbuf();
  return out.str();
}

bool HostileDaemon::wait_log(const std::string& needle, Millis timeout) const {
  const auto deadline = Clock::now() + timeout;
  for (;;) {
    if (log().find(needle) != std::string::npos) return true;
    if (Clock::now() >= deadline) return false;
    std::this_thread::sleep_for(Millis(20));
  }
}

MemoryUse HostileDaemon::memory() const {
  MemoryUse use;
  std::ifstream in("/proc/" + std::to_string(pid_) + "/status");
  std::string key;
  uint64_t value = 0;
  std::string line;
  while (std::getline(in, line)) {
    std::istringstream fields(line);
    if (!(fields >> key >> value)) continue;
    if (key == "VmRSS:") use.rss_kib = value;
    if (key == "VmHWM:") use.hwm_kib = value;
    if (key == "RssShmem:") use.shmem_kib = value;
  }
  return use;
}

size_t HostileDaemon::open_fds() const {
  size_t count = 0;
  DIR* dir = ::opendir(("/proc/" + std::to_string(pid_) + "/fd").c_str());
  if (dir == nullptr) return 0;
  while (const dirent* entry = ::readdir(dir)) {
    if (entry->d_name[0] != '.') ++count;
  }
  ::closedir(dir);
  return count;
}

double HostileDaemon::cpu_seconds() const {
  std::ifstream in("/proc/" + std::to_string(pid_) + "/stat");
  std::string stat((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  const size_t paren = stat.rfind(')');
  if (paren == std::string::npos) return 0;
  std::istringstream fields(stat.substr(paren + 2));
  std::string field;
  uint64_t utime = 0;
  uint64_t stime = 0;
  // After the command: state is field 3; utime and stime are fields 14 and 15.
  for (int index = 3; index <= 15 && fields >> field; ++index) {
    if (index == 14) utime = std::stoull(field);
    if (index == 15) stime = std::stoull(field);
  }
  return static_cast<double>(utime + stime) / static_cast<double>(::sysconf(_SC_CLK_TCK));
}

// ---------------------------------------------------------------------------
// Sentinel

Sentinel::Sentinel(HostileDaemon& daemon, int vm, GuestVsockDriver& guest, uint32_t port)
    : guest_(guest), port_(port), listener_(daemon.uds_port_path(vm, port)) {
  ::chmod(listener_.path().c_str(), 0777);  // reachable by a daemon running as --user
  guest_to_host_ = guest.connect(port, Millis(5000));
  if (!guest_to_host_.established()) throw std::runtime_error("sentinel: guest connect failed");
  guest_to_host_peer_ = listener_.accept(Millis(5000));
  if (!guest_to_host_peer_) throw std::runtime_error("sentinel: host listener got nothing");
  guest.listen(port + 1);
  host_to_guest_peer_ = integration::hybrid_connect(daemon.uds_path(vm), port + 1, nullptr, Millis(5000));
  if (!host_to_guest_peer_) throw std::runtime_error("sentinel: CONNECT got no OK");
  auto accepted = guest.accept(port + 1, Millis(5000));
  if (!accepted) throw std::runtime_error("sentinel: guest accepted nothing");
  host_to_guest_ = *accepted;
}

bool Sentinel::check(const std::string& when) {
  ++round_;
  bool ok = true;
  // Data both ways on both streams, different every round.
  const std::string tag = "sentinel " + std::to_string(port_) + " round " + std::to_string(round_) + " ";
  const std::string a = tag + "guest->host " + std::string(1000, 'a');
  const std::string b = tag + "host->guest " + std::string(1000, 'b');
  for (auto [guest_side, host_side, name] :
       {std::tuple{&guest_to_host_, guest_to_host_peer_.get(), "guest-initiated"},
        std::tuple{&host_to_guest_, host_to_guest_peer_.get(), "host-initiated"}}) {
    const bool sent = guest_side->send(a, Millis(5000));
    const std::string got_host = integration::read_exactly(host_side, a.size(), Millis(5000));
    const bool wrote = integration::write_all(host_side, b, Millis(5000));
    const std::string got_guest = guest_side->recv_exactly(b.size(), Millis(5000));
    const bool this_ok = sent && wrote && got_host == a && got_guest == b;
    EXPECT_TRUE(this_ok) << "sentinel " << name << " stream on port " << port_ << " broken " << when
                         << ": guest sent=" << sent << " host got " << got_host.size() << "/" << a.size()
                         << " bytes, host wrote=" << wrote << " guest got " << got_guest.size() << "/" << b.size()
                         << (got_host == a || got_host.empty() ? "" : " (host got different bytes)");
    ok = ok && this_ok;
  }
  return ok;
}

// ---------------------------------------------------------------------------
// HostileTest

void HostileTest::start(DaemonSpec spec) {
  const int vms = spec.vms;
  daemon_ = std::make_unique<HostileDaemon>(std::move(spec));
  if (vms > 1) {
    sibling_guest_ = std::make_unique<GuestVsockDriver>(daemon_->socket_path(1));
    sibling_sentinel_ = std::make_unique<Sentinel>(*daemon_, 1, *sibling_guest_, 7000);
  }
}

void HostileTest::start_with_guest(DaemonSpec spec, GuestOptions options) {
  start(std::move(spec));
  options.capture_packets = true;
  attach_guest(options);
  own_sentinel_ = std::make_unique<Sentinel>(*daemon_, 0, *guest_, 6000);
}

GuestVsockDriver& HostileTest::attach_guest(GuestOptions options) {
  guest_.reset();
  guest_ = std::make_unique<GuestVsockDriver>(daemon_->socket_path(0), options);
  EXPECT_EQ(guest_->guest_cid(), daemon_->cid(0));
  return *guest_;
}

void HostileTest::expect_daemon_healthy(const std::string& when) {
  ASSERT_TRUE(daemon_->running()) << "daemon died " << when << " (" << describe_status(daemon_->exit_status()) << ")";
  if (sibling_sentinel_) sibling_sentinel_->check(when + " (sibling VM)");
  const MemoryUse use = daemon_->memory();
  EXPECT_LT(use.own_mib(), kOwnMemoryLimitMiB) << when << ": " << use.describe();
}

void HostileTest::expect_memory_growth_bounded(const MemoryUse& before, const std::string& what) {
  const MemoryUse after = daemon_->memory();
  EXPECT_LT(after.own_mib() - before.own_mib(), kGrowthLimitMiB)
      << what << ": own memory grew from " << before.own_mib() << " MiB to " << after.own_mib() << " MiB ("
      << after.describe() << ")";
  ::testing::Test::RecordProperty("VmHWM_KiB", std::to_string(after.hwm_kib));
  std::cout << "[ memory   ] " << what << ": " << after.describe() << std::endl;
}

void HostileTest::check_violations(GuestVsockDriver& driver, const char* which) {
  std::string listed;
  for (const auto& v : driver.violations()) {
    const bool allowed = std::any_of(allowed_violations_.begin(), allowed_violations_.end(),
                                     [&](const std::string& text) { return v.find(text) != std::string::npos; });
    if (!allowed) listed += "  " + v + "\n";
  }
  EXPECT_TRUE(listed.empty()) << which << " guest driver saw device protocol violations:\n" << listed;
}

void HostileTest::TearDown() {
  if (daemon_ && expect_running_at_end_) {
    expect_daemon_healthy("at the end of the test");
    if (own_sentinel_ && daemon_->running()) own_sentinel_->check("at the end of the test (attacked VM)");
  }
  own_sentinel_.reset();
  if (guest_) check_violations(*guest_, "the attacked VM's");
  if (sibling_guest_) check_violations(*sibling_guest_, "the sibling VM's");
  sibling_sentinel_.reset();
  guest_.reset();
  sibling_guest_.reset();
  if (!daemon_) return;
  if (daemon_->running()) {
    const MemoryUse use = daemon_->memory();
    std::cout << "[ memory   ] at the end: " << use.describe() << std::endl;
    const int status = daemon_->terminate();
    EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0)
        << "daemon did not exit cleanly on SIGTERM: " << describe_status(status);
  }
  if (HasFailure()) {
    const std::string log = daemon_->log();
    std::vector<std::string> lines;
    std::istringstream in(log);
    for (std::string line; std::getline(in, line);) lines.push_back(std::move(line));
    const size_t from = lines.size() > 200 ? lines.size() - 200 : 0;
    std::cerr << "---- daemon log, last " << lines.size() - from << " of " << lines.size() << " lines; args:";
    for (const auto& a : daemon_->args()) std::cerr << ' ' << a;
    std::cerr << " ----\n";
    for (size_t i = from; i < lines.size(); ++i) std::cerr << lines[i] << '\n';
    std::cerr << "---- end of daemon log ----\n";
  }
  daemon_.reset();
}

}  // namespace vhost_vsock::hostile
