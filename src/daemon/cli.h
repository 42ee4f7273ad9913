// The command line, drop-in compatible with rust-vmm's vhost-device-vsock
// (its uds-path backend), plus our own limits. Parsing and validation happen
// here, before anything is bound, and never exit the process: the caller
// prints what this returns and exits with its code.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "daemon/config.h"

namespace vhost_vsock::daemon {

inline constexpr int kExitOk = 0;
inline constexpr int kExitRuntimeError = 1;  // startup failed (e.g. cannot bind) or a worker died
inline constexpr int kExitUsage = 2;         // bad command line or configuration

struct CliOutcome {
  std::optional<DaemonConfig> config;  // set when the daemon should run
  // `vhost-user-vsock connections --metrics ADDR`: list a running daemon's connections instead.
  std::optional<metrics::ListenAddress> connections_from;
  int exit_code = kExitOk;          // meaningful when `config` is empty
  std::string output;               // for stdout: --help, --version
  std::vector<std::string> errors;  // for stderr, one per line, each already prefixed "error: "
};

// `args` excludes the program name. A first argument "connections" selects
// the listing command (its own options, see --help after it).
CliOutcome parse_command_line(const std::vector<std::string>& args);
CliOutcome parse_command_line(int argc, const char* const* argv);

// "vhost-user-vsock <version>".
std::string version_string();

}  // namespace vhost_vsock::daemon
