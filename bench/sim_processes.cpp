#include "sim_processes.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <sstream>

#include "process_stats.h"
#include "sim_host_peer.h"

namespace vhost_vsock::bench {
namespace {

std::vector<std::string> split_words(const std::string& text) {
  std::vector<std::string> words;
  std::istringstream in(text);
  for (std::string w; in >> w;) words.push_back(w);
  return words;
}

// fork + exec at once (the simulator has threads: nothing else may run in
// the child). `keep_fd` becomes fd 3 in the child.
pid_t spawn(const std::vector<std::string>& args, int keep_fd = -1) {
  std::vector<char*> argv;
  argv.reserve(args.size() + 1);
  for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  pid_t pid = fork();
  if (pid < 0) die("fork");
  if (pid == 0) {
    prctl(PR_SET_PDEATHSIG, SIGKILL);  // never outlive a failed benchmark
    if (keep_fd == 3)
      fcntl(3, F_SETFD, 0);
    else if (keep_fd >= 0 && dup2(keep_fd, 3) < 0)
      _exit(127);
    execv(argv[0], argv.data());
    _exit(127);
  }
  return pid;
}

pid_t g_daemon_pid = -1;

// On failure: SIGTERM the daemon and give it a moment, so its shutdown
// statistics reach the log next to our error message.
void stop_daemon_on_failure() {
  if (g_daemon_pid <= 0) return;
  kill(g_daemon_pid, SIGTERM);
  for (int i = 0; i < 100 && waitpid(g_daemon_pid, nullptr, WNOHANG) == 0; ++i) usleep(50000);
}

}  // namespace

DaemonProcess::DaemonProcess(const Options& options, const std::string& dir, uint32_t max_connections)
    : socket_path_(dir + "/vhost.sock"), uds_path_(dir + "/v") {
  std::vector<std::string> args = split_words(options.text("daemon-wrapper", ""));
  args.insert(args.end(), {options.text("daemon", "build/vhost-user-vsock"), "--guest-cid", std::to_string(kGuestCid),
                           "--socket", socket_path_, "--uds-path", uds_path_});
  const std::string cli = options.text("daemon-cli", "ours");
  if (cli == "ours") {
    args.insert(args.end(), {"--log-level", options.text("log-level", "warn"), "--max-connections",
                             std::to_string(max_connections)});
  } else if (cli != "compat") {
    fail("--daemon-cli takes ours or compat, not " + cli);
  }
  // Non-default daemon settings for an experiment row, e.g. "--tx-buffer-size 262144".
  for (auto& word : split_words(options.text("daemon-args", ""))) args.push_back(word);
  if (args[0].find('/') == std::string::npos) {  // a wrapper named without a path
    std::string found;
    // NOLINTNEXTLINE(concurrency-mt-unsafe): getenv races only with setenv/putenv, which nothing here calls.
    const char* path_variable = getenv("PATH");
    for (const auto& dirname : split_path(path_variable != nullptr ? path_variable : ""))
      if (access((dirname + "/" + args[0]).c_str(), X_OK) == 0) {
        found = dirname + "/" + args[0];
        break;
      }
    if (found.empty()) fail("cannot find " + args[0] + " on PATH");
    args[0] = found;
  }
  pid_ = spawn(args);
  g_daemon_pid = pid_;
  g_before_failure_exit = stop_daemon_on_failure;
  const double deadline = now_seconds() + options.integer("start-timeout", 60);
  struct stat st {};
  while (stat(socket_path_.c_str(), &st) != 0) {
    if (now_seconds() > deadline) fail("daemon did not create " + socket_path_);
    if (!alive()) fail("daemon exited at start (see its messages above)");
    usleep(2000);
  }
}

bool DaemonProcess::alive() {
  if (pid_ <= 0) return false;
  int status = 0;
  if (waitpid(pid_, &status, WNOHANG) == pid_) {
    exit_status_ = status;
    pid_ = -1;
    return false;
  }
  return true;
}

std::string DaemonProcess::stop() {
  g_daemon_pid = -1;
  if (pid_ > 0) {
    kill(pid_, SIGTERM);
    for (int i = 0; i < 1200 && alive(); ++i) usleep(50000);
    if (pid_ > 0) {
      kill(pid_, SIGKILL);
      waitpid(pid_, &exit_status_, 0);
      pid_ = -1;
      return "daemon did not exit within 60 s of SIGTERM";
    }
  }
  if (WIFSIGNALED(exit_status_)) return "daemon died of signal " + std::to_string(WTERMSIG(exit_status_));
  if (WIFEXITED(exit_status_) && WEXITSTATUS(exit_status_) != 0)
    return "daemon exited with status " + std::to_string(WEXITSTATUS(exit_status_));
  return "";
}

std::vector<std::string> DaemonProcess::split_path(const std::string& text) {
  std::vector<std::string> out;
  std::string cur;
  for (char c : text + ':') {
    if (c == ':') {
      if (!cur.empty()) out.push_back(cur);
      cur.clear();
    } else {
      cur.push_back(c);
    }
  }
  return out;
}

HostPeer::HostPeer(const std::string& self, const std::string& role, const std::string& uds,
                   const std::vector<std::string>& extra) {
  int pair[2];
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, pair) != 0) die("socketpair");
  control_ = pair[0];
  std::vector<std::string> args = {self, "host-peer", "--control-fd", "3", "--role", role, "--uds", uds};
  args.insert(args.end(), extra.begin(), extra.end());
  pid_ = spawn(args, pair[1]);
  close(pair[1]);
}

HostPeer::~HostPeer() {
  if (control_ >= 0) close(control_);
  if (pid_ > 0) waitpid(pid_, nullptr, 0);
}

std::string HostPeer::expect(const std::string& word) const {
  std::string line;
  if (!read_line(control_, line)) fail("host peer exited before '" + word + "'");
  if (line.rfind("error ", 0) == 0) fail("host peer: " + line.substr(6));
  if (line.rfind(word, 0) != 0) fail("host peer said '" + line + "', expected '" + word + "'");
  return line.size() > word.size() ? line.substr(word.size() + 1) : "";
}

void HostPeer::go() const {
  if (!send_line(control_, "go")) fail("host peer is gone");
}

void HostPeer::finish() {
  close(control_);
  control_ = -1;
  int status = 0;
  waitpid(pid_, &status, 0);
  pid_ = -1;
  if (!(WIFEXITED(status) && WEXITSTATUS(status) == 0)) fail("host peer process failed");
}

double json_number(const std::string& json, const std::string& key) {
  auto at = json.find("\"" + key + "\":");
  if (at == std::string::npos) fail("no " + key + " in " + json);
  return std::strtod(json.c_str() + at + key.size() + 3, nullptr);
}

void CpuWindow::start(pid_t daemon_pid) {
  guest = -cpu_seconds();
  daemon = -process_cpu_seconds(daemon_pid);
  const auto [reads, writes] = process_syscalls(daemon_pid);
  daemon_read_calls = reads;
  daemon_write_calls = writes;
  daemon_wakeups = process_voluntary_switches(daemon_pid);
  daemon_preemptions = process_preemptions(daemon_pid);
}

void CpuWindow::stop(pid_t daemon_pid) {
  guest += cpu_seconds();
  daemon += process_cpu_seconds(daemon_pid);
  const auto [reads, writes] = process_syscalls(daemon_pid);
  daemon_read_calls = reads - daemon_read_calls;
  daemon_write_calls = writes - daemon_write_calls;
  daemon_wakeups = process_voluntary_switches(daemon_pid) - daemon_wakeups;
  daemon_preemptions = process_preemptions(daemon_pid) - daemon_preemptions;
}

}  // namespace vhost_vsock::bench
