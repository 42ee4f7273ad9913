#include "testing/child_process.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <fstream>
#include <ostream>
#include <sstream>
#include <stdexcept>
#include <thread>

#include "base/errno_text.h"

extern char** environ;

namespace vhost_vsock::testing {

namespace {

using Clock = std::chrono::steady_clock;

constexpr ChildProcess::Millis kPollInterval{5};

}  // namespace

ChildProcess::ChildProcess(std::vector<std::string> args, std::string log_path,
                           const std::vector<std::string>& extra_env)
    : args_(std::move(args)), log_path_(std::move(log_path)) {
  if (args_.empty()) throw std::invalid_argument("ChildProcess: no program given");
  // fork+exec rather than posix_spawn for PR_SET_PDEATHSIG: when a test is
  // killed (ctest timeout) the child goes with it instead of lingering.
  // Everything the child needs is prepared here; after fork() it only makes
  // async-signal-safe calls.
  std::vector<char*> argv;
  for (auto& arg : args_) argv.push_back(arg.data());
  argv.push_back(nullptr);
  std::vector<std::string> env_storage;
  for (char** entry = environ; *entry != nullptr; ++entry) env_storage.emplace_back(*entry);
  env_storage.insert(env_storage.end(), extra_env.begin(), extra_env.end());
  std::vector<char*> envp;
  envp.reserve(env_storage.size() + 1);
  for (auto& entry : env_storage) envp.push_back(entry.data());
  envp.push_back(nullptr);

  const pid_t parent = ::getpid();
  const int log_fd = ::open(log_path_.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  const int null_fd = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
  if (log_fd < 0 || null_fd < 0) {
    const int open_errno = errno;
    if (log_fd >= 0) ::close(log_fd);
    if (null_fd >= 0) ::close(null_fd);
    throw std::runtime_error("cannot open " + log_path_ + ": " + base::errno_text(open_errno));
  }
  pid_ = ::fork();
  if (pid_ == 0) {
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (::getppid() != parent) ::_exit(127);  // the test died before prctl took effect
    ::dup2(null_fd, STDIN_FILENO);
    ::dup2(log_fd, STDOUT_FILENO);
    ::dup2(log_fd, STDERR_FILENO);
    ::execve(argv[0], argv.data(), envp.data());
    ::_exit(127);
  }
  const int fork_errno = errno;
  ::close(log_fd);
  ::close(null_fd);
  if (pid_ < 0) {
    pid_ = -1;
    throw std::runtime_error("fork: " + base::errno_text(fork_errno));
  }
}

ChildProcess::~ChildProcess() {
  if (!running()) return;
  ::kill(pid_, SIGKILL);
  int status = 0;
  ::waitpid(pid_, &status, 0);
}

bool ChildProcess::running() {
  if (pid_ <= 0) return false;
  int status = 0;
  const pid_t reaped = ::waitpid(pid_, &status, WNOHANG);
  if (reaped == pid_) {
    status_ = status;
    pid_ = -1;
    return false;
  }
  return reaped == 0;
}

int ChildProcess::wait_exit(Millis timeout) {
  const auto deadline = Clock::now() + timeout;
  while (running()) {
    if (Clock::now() >= deadline) return -1;
    std::this_thread::sleep_for(kPollInterval);
  }
  return status_;
}

int ChildProcess::stop(Millis grace) {
  if (!running()) return status_;
  ::kill(pid_, SIGTERM);
  if (wait_exit(grace) != -1) return status_;
  ::kill(pid_, SIGKILL);
  int status = 0;
  if (::waitpid(pid_, &status, 0) == pid_) status_ = status;
  pid_ = -1;
  killed_after_grace_ = true;
  return status_;
}

std::string ChildProcess::log() const {
  std::ifstream in(log_path_);
  std::stringstream out;
  out << in.rdbuf();
  return out.str();
}

void ChildProcess::print_log_tail(std::ostream& out, const std::string& name, size_t max_lines) const {
  std::vector<std::string> lines;
  std::istringstream in(log());
  for (std::string line; std::getline(in, line);) lines.push_back(std::move(line));
  const size_t from = lines.size() > max_lines ? lines.size() - max_lines : 0;
  out << "---- " << name << " log (" << log_path_ << ", last " << lines.size() - from << " of " << lines.size()
      << " lines; args:";
  for (const auto& arg : args_) out << ' ' << arg;
  out << ") ----\n";
  for (size_t i = from; i < lines.size(); ++i) out << lines[i] << '\n';
  out << "---- end of " << name << " log ----\n";
}

}  // namespace vhost_vsock::testing
