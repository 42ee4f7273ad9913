#include "hostile_support.h"

#include <dirent.h>
#include <signal.h>
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
#include "testing/daemon_process.h"

namespace vhost_vsock::hostile {
namespace {

using Clock = std::chrono::steady_clock;

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

using testing::is_socket;

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
  // NOLINTNEXTLINE(concurrency-mt-unsafe): only the test's main thread describes exit statuses
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
  if (spec_.uds_in_subdir && ::mkdir(uds_dir().c_str(), 0755) != 0) {
    throw std::runtime_error("mkdir " + uds_dir() + ": " + base::errno_text(errno));
  }
  ::chmod(dir_.c_str(), spec_.dir_mode);
  ::chmod(uds_dir().c_str(), spec_.dir_mode);
  std::vector<std::string> args = {testing::DaemonProcess::binary_path(), "--log-level",
                                   testing::daemon_log_level("info")};
  for (int vm = 0; vm < spec_.vms; ++vm) {
    args.push_back("--vm");
    // A group of its own: a VM's guest cannot reach its siblings (sibling routing is tested elsewhere).
    args.push_back("guest-cid=" + std::to_string(cid(vm)) + ",socket=" + socket_path(vm) + ",uds-path=" + uds_path(vm) +
                   ",groups=vm" + std::to_string(vm));
  }
  args.insert(args.end(), spec_.extra_args.begin(), spec_.extra_args.end());
  process_.emplace(std::move(args), dir_ + "/daemon.log", spec_.env);

  const auto deadline = Clock::now() + spec_.startup_timeout;
  for (int vm = 0; vm < spec_.vms; ++vm) {
    while (!is_socket(socket_path(vm)) || !is_socket(uds_path(vm))) {
      if (!running()) {
        // Sockets bound, then died (a test may ask for that): the caller checks the status.
        if (is_socket(socket_path(vm)) && is_socket(uds_path(vm))) break;
        throw std::runtime_error("daemon exited during startup (" + describe_status(exit_status()) + "); log:\n" +
                                 log());
      }
      if (Clock::now() >= deadline) throw std::runtime_error("daemon did not start in time; log:\n" + log());
      std::this_thread::sleep_for(Millis(5));
    }
  }
}

HostileDaemon::~HostileDaemon() {
  if (process_ && running()) record_peak(memory().hwm_kib);
  process_.reset();  // SIGKILLs it before its directory goes
  // NOLINTNEXTLINE(concurrency-mt-unsafe): test-process code; nothing in the hostile tests calls setenv
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

int HostileDaemon::terminate(Millis grace) {
  if (running()) record_peak(memory().hwm_kib);
  process_->stop(grace);
  return exit_status();
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
  std::ifstream in("/proc/" + std::to_string(pid()) + "/status");
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
  DIR* dir = ::opendir(("/proc/" + std::to_string(pid()) + "/fd").c_str());
  if (dir == nullptr) return 0;
  // NOLINTNEXTLINE(concurrency-mt-unsafe): glibc's readdir is safe on a DIR* no other thread sees
  while (const dirent* entry = ::readdir(dir)) {
    if (entry->d_name[0] != '.') ++count;
  }
  ::closedir(dir);
  return count;
}

size_t HostileDaemon::open_fds_settled(size_t limit, Millis timeout) const {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  size_t count = open_fds();
  while (count > limit && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(Millis(20));
    count = open_fds();
  }
  return count;
}

double HostileDaemon::cpu_seconds() const {
  std::ifstream in("/proc/" + std::to_string(pid()) + "/stat");
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

void HostileTest::expect_next_frontend_works(uint32_t port) {
  expect_daemon_healthy("after the hostile front-end");
  attach_guest();
  HostListener listener(daemon_->uds_port_path(0, port));
  Stream s = guest_->connect(port, Millis(3000));
  ASSERT_TRUE(s.established()) << "the next front-end did not get a working device";
  UniqueFd host = listener.accept(Millis(3000));
  ASSERT_TRUE(host.valid());
  ASSERT_TRUE(s.send("next front-end"));
  EXPECT_EQ(integration::read_exactly(host.get(), 14, Millis(3000)), "next front-end");
  check_violations(*guest_, "the next front-end's");
  guest_.reset();
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
  if (HasFailure()) daemon_->print_log_tail(std::cerr, 200);
  daemon_.reset();
}

}  // namespace vhost_vsock::hostile
