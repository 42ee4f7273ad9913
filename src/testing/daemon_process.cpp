#include "testing/daemon_process.h"

#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <filesystem>
#include <stdexcept>
#include <thread>

#include "base/errno_text.h"

namespace vhost_vsock::testing {

namespace {

using Clock = std::chrono::steady_clock;

#ifndef VUV_DEFAULT_DAEMON_PATH
#define VUV_DEFAULT_DAEMON_PATH "vhost-user-vsock"
#endif

}  // namespace

std::string daemon_log_level(const std::string& fallback) {
  // NOLINTNEXTLINE(concurrency-mt-unsafe): test-process code; nothing in the tests calls setenv
  const char* env = std::getenv("VUV_DAEMON_LOG_LEVEL");
  return env != nullptr && *env != '\0' ? env : fallback;
}

bool is_socket(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0 && S_ISSOCK(st.st_mode);
}

std::string DaemonProcess::binary_path() {
  // NOLINTNEXTLINE(concurrency-mt-unsafe): test-process code; nothing in the tests calls setenv
  const char* env = std::getenv("VUV_DAEMON");
  return env != nullptr && *env != '\0' ? env : VUV_DEFAULT_DAEMON_PATH;
}

DaemonProcess::DaemonProcess(DaemonOptions options) {
  char dir_template[] = "/tmp/vuvXXXXXX";
  if (::mkdtemp(dir_template) == nullptr) throw std::runtime_error("mkdtemp: " + base::errno_text(errno));
  dir_ = dir_template;
  socket_path_ = dir_ + "/vhost.sock";
  uds_path_ = dir_ + "/vsock";

  std::vector<std::string> args = {binary_path(), "--guest-cid", std::to_string(options.guest_cid),
                                   "--socket",    socket_path_,  "--uds-path",
                                   uds_path_,     "--log-level", daemon_log_level(options.log_level)};
  std::vector<std::string> sockets{socket_path_};
  if (!options.extra_vms.empty()) {
    auto vm_spec = [](uint64_t cid, const std::string& socket, const std::string& uds, const std::string& groups) {
      return "guest-cid=" + std::to_string(cid) + ",socket=" + socket + ",uds-path=" + uds + ",groups=" + groups;
    };
    args = {binary_path(), "--log-level", daemon_log_level(options.log_level), "--vm",
            vm_spec(options.guest_cid, socket_path_, uds_path_, options.groups)};
    for (const ExtraVm& vm : options.extra_vms) {
      args.insert(args.end(),
                  {"--vm", vm_spec(vm.guest_cid, socket_path_of(vm.guest_cid), uds_path_of(vm.guest_cid), vm.groups)});
      sockets.push_back(socket_path_of(vm.guest_cid));
    }
  }
  args.insert(args.end(), options.extra_args.begin(), options.extra_args.end());
  process_.emplace(std::move(args), dir_ + "/daemon.log");

  const auto deadline = Clock::now() + options.startup_timeout;
  auto all_bound = [&] {
    for (const auto& socket : sockets) {
      if (!is_socket(socket)) return false;
    }
    return true;
  };
  while (!all_bound()) {
    if (!running()) {
      throw std::runtime_error("daemon exited during startup (status " + std::to_string(exit_status()) + "); log:\n" +
                               log());
    }
    if (Clock::now() >= deadline) {
      stop();
      throw std::runtime_error("daemon did not create " + socket_path_ + " in time; log:\n" + log());
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
}

DaemonProcess::~DaemonProcess() {
  if (process_) stop();
  // NOLINTNEXTLINE(concurrency-mt-unsafe): test-process code; nothing in the tests calls setenv
  if (std::getenv("VUV_KEEP_TEMP") == nullptr && !dir_.empty()) {
    std::error_code ignored;
    std::filesystem::remove_all(dir_, ignored);
  }
}

int DaemonProcess::stop(std::chrono::milliseconds grace) {
  return process_->stop(grace);
}

bool DaemonProcess::wait_for_path(const std::string& path, std::chrono::milliseconds timeout) {
  const auto deadline = Clock::now() + timeout;
  while (::access(path.c_str(), F_OK) != 0) {
    if (Clock::now() >= deadline) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  return true;
}

}  // namespace vhost_vsock::testing
