#include "testing/daemon_process.h"

#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
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

extern char** environ;

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
  if (::mkdtemp(dir_template) == nullptr) throw std::runtime_error(std::string("mkdtemp: ") + std::strerror(errno));
  dir_ = dir_template;
  socket_path_ = dir_ + "/vhost.sock";
  uds_path_ = dir_ + "/vsock";
  log_path_ = dir_ + "/daemon.log";

  std::string log_level = options.log_level;
  if (const char* env = std::getenv("VUV_DAEMON_LOG_LEVEL"); env != nullptr && *env != '\0') log_level = env;
  args_ = {binary_path(),  "--guest-cid", std::to_string(options.guest_cid), "--socket", socket_path_, "--uds-path",
           uds_path_,      "--log-level", log_level};
  args_.insert(args_.end(), options.extra_args.begin(), options.extra_args.end());

  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, STDIN_FILENO, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_addopen(&actions, STDOUT_FILENO, log_path_.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
  posix_spawn_file_actions_adddup2(&actions, STDOUT_FILENO, STDERR_FILENO);
  std::vector<char*> argv;
  for (auto& arg : args_) argv.push_back(arg.data());
  argv.push_back(nullptr);
  const int rc = ::posix_spawn(&pid_, args_[0].c_str(), &actions, nullptr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  if (rc != 0) {
    pid_ = -1;
    throw std::runtime_error("cannot start " + args_[0] + ": " + std::strerror(rc));
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
