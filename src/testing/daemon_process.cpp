#include "testing/daemon_process.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <stdexcept>
#include <thread>

#include "base/errno_text.h"

namespace vhost_vsock::testing {

namespace {

using Clock = std::chrono::steady_clock;

#ifndef VUV_DEFAULT_DAEMON_PATH
#define VUV_DEFAULT_DAEMON_PATH "vhost-user-vsock"
#endif

bool is_socket(const std::string& path) {
  struct stat st{};
  return ::stat(path.c_str(), &st) == 0 && S_ISSOCK(st.st_mode);
}

}  // namespace

std::string DaemonProcess::binary_path() {
  const char* env = std::getenv("VUV_DAEMON");
  return env != nullptr && *env != '\0' ? env : VUV_DEFAULT_DAEMON_PATH;
}

DaemonProcess::DaemonProcess(DaemonOptions options) {
  char dir_template[] = "/tmp/vuvXXXXXX";
  if (::mkdtemp(dir_template) == nullptr) throw std::runtime_error("mkdtemp: " + base::errno_text(errno));
  dir_ = dir_template;
  socket_path_ = dir_ + "/vhost.sock";
  uds_path_ = dir_ + "/vsock";
  log_path_ = dir_ + "/daemon.log";

  std::string log_level = options.log_level;
  if (const char* env = std::getenv("VUV_DAEMON_LOG_LEVEL"); env != nullptr && *env != '\0') log_level = env;
  args_ = {binary_path(),  "--guest-cid", std::to_string(options.guest_cid), "--socket", socket_path_, "--uds-path",
           uds_path_,      "--log-level", log_level};
  args_.insert(args_.end(), options.extra_args.begin(), options.extra_args.end());

  // fork+exec rather than posix_spawn for PR_SET_PDEATHSIG: when a test is
  // killed (ctest timeout) the daemon goes with it instead of lingering.
  // Everything the child needs is prepared here; after fork() it only makes
  // async-signal-safe calls.
  std::vector<char*> argv;
  for (auto& arg : args_) argv.push_back(arg.data());
  argv.push_back(nullptr);
  const pid_t parent = ::getpid();
  const int log_fd = ::open(log_path_.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  const int null_fd = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
  if (log_fd < 0 || null_fd < 0) throw std::runtime_error("cannot open " + log_path_ + ": " + base::errno_text(errno));
  pid_ = ::fork();
  if (pid_ == 0) {
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (::getppid() != parent) ::_exit(127);  // the test died before prctl took effect
    ::dup2(null_fd, STDIN_FILENO);
    ::dup2(log_fd, STDOUT_FILENO);
    ::dup2(log_fd, STDERR_FILENO);
    ::execv(argv[0], argv.data());
    ::_exit(127);
  }
  const int fork_errno = errno;
  ::close(log_fd);
  ::close(null_fd);
  if (pid_ < 0) {
    pid_ = -1;
    throw std::runtime_error("fork: " + base::errno_text(fork_errno));
  }

  const auto deadline = Clock::now() + options.startup_timeout;
  while (!is_socket(socket_path_)) {
    if (!running()) {
      throw std::runtime_error("daemon exited during startup (status " + std::to_string(status_) + "); log:\n" + log());
    }
    if (Clock::now() >= deadline) {
      stop();
      throw std::runtime_error("daemon did not create " + socket_path_ + " in time; log:\n" + log());
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
}

DaemonProcess::~DaemonProcess() {
  stop();
  if (std::getenv("VUV_KEEP_TEMP") == nullptr && !dir_.empty()) {
    std::error_code ignored;
    std::filesystem::remove_all(dir_, ignored);
  }
}

bool DaemonProcess::running() {
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

int DaemonProcess::stop(std::chrono::milliseconds grace) {
  if (!running()) return status_;
  ::kill(pid_, SIGTERM);
  const auto deadline = Clock::now() + grace;
  while (running()) {
    if (Clock::now() >= deadline) {
      ::kill(pid_, SIGKILL);
      int status = 0;
      if (::waitpid(pid_, &status, 0) == pid_) status_ = status;
      pid_ = -1;
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  return status_;
}

bool DaemonProcess::wait_for_path(const std::string& path, std::chrono::milliseconds timeout) {
  const auto deadline = Clock::now() + timeout;
  while (::access(path.c_str(), F_OK) != 0) {
    if (Clock::now() >= deadline) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  return true;
}

std::string DaemonProcess::log() const {
  std::ifstream in(log_path_);
  std::stringstream out;
  out << in.rdbuf();
  return out.str();
}

}  // namespace vhost_vsock::testing
