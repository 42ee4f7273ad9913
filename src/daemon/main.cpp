// vhost-user-vsock: parse and validate the command line, then run the daemon
// (or, with `connections`, list a running daemon's connections).
#include <malloc.h>
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

// A connection's TX buffer (256 KiB by default) is allocated when its host
// peer stops keeping up and freed once drained, many times a second while
// several streams are busy. glibc's defaults mmap such a block and trim the
// heap top after each free, so every burst page-faulted the buffer in again:
// 30,000 faults/s and two thirds of the daemon's CPU with 8 streams (page
// faults are dear in a VM). Blocks up to 4 MiB come from the heap instead,
// and up to 8 MiB of free heap top stays mapped for the next burst.
void keep_tx_buffers_mapped() {
  constexpr int kHeapAllocationsUpTo = 4 << 20;
  constexpr int kFreeHeapTopKept = 8 << 20;
  // Called before any other thread exists.
  mallopt(M_MMAP_THRESHOLD, kHeapAllocationsUpTo);  // NOLINT(concurrency-mt-unsafe)
  mallopt(M_TRIM_THRESHOLD, kFreeHeapTopKept);      // NOLINT(concurrency-mt-unsafe)
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
    keep_tx_buffers_mapped();
    setup_logging(outcome.config->runtime.log_level, outcome.config->runtime.log_format);
    spdlog::info("{} starting with {} VM(s)", version_string(), outcome.config->vms.size());
    return run_daemon(*outcome.config);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return kExitRuntimeError;
  }
}
