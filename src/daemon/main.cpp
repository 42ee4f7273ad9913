// vhost-user-vsock: parse and validate the command line, then run the daemon
// (or, with `connections`, list a running daemon's connections).
#include <spdlog/spdlog.h>

#include <cstdio>
#include <exception>

#include "daemon/cli.h"
#include "daemon/daemon.h"
#include "daemon/logging.h"
#include "metrics/connections_json.h"
#include "metrics/http_client.h"

namespace {

int print_connections(const vhost_vsock::metrics::ListenAddress& address) {
  std::string body;
  std::string table;
  std::string error;
  if (!vhost_vsock::metrics::http_get(address, "/connections", &body, &error) ||
      !vhost_vsock::metrics::connections_table(body, &table, &error)) {
    std::fprintf(stderr, "error: %s\n", error.c_str());
    return vhost_vsock::daemon::kExitRuntimeError;
  }
  std::fputs(table.c_str(), stdout);
  return vhost_vsock::daemon::kExitOk;
}

}  // namespace

int main(int argc, char** argv) {
  using namespace vhost_vsock::daemon;
  CliOutcome outcome = parse_command_line(argc, argv);
  std::fputs(outcome.output.c_str(), stdout);
  for (const auto& line : outcome.errors) std::fprintf(stderr, "%s\n", line.c_str());
  if (outcome.connections_from) return print_connections(*outcome.connections_from);
  if (!outcome.config) return outcome.exit_code;

  try {
    setup_logging(outcome.config->runtime.log_level, outcome.config->runtime.log_format);
    spdlog::info("{} starting with {} VM(s)", version_string(), outcome.config->vms.size());
    return run_daemon(*outcome.config);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return kExitRuntimeError;
  }
}
