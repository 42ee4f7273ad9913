// vhost-user-vsock: parse and validate the command line, then run the daemon.
#include <spdlog/spdlog.h>

#include <cstdio>
#include <exception>

#include "daemon/cli.h"
#include "daemon/daemon.h"
#include "daemon/logging.h"

int main(int argc, char** argv) {
  using namespace vhost_vsock::daemon;
  CliOutcome outcome = parse_command_line(argc, argv);
  std::fputs(outcome.output.c_str(), stdout);
  for (const auto& line : outcome.errors) std::fprintf(stderr, "%s\n", line.c_str());
  if (!outcome.config) return outcome.exit_code;

  try {
    setup_logging(outcome.config->runtime.log_level);
    spdlog::info("{} starting with {} VM(s)", version_string(), outcome.config->vms.size());
    return run_daemon(*outcome.config);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return kExitRuntimeError;
  }
}
