#include "daemon/cli.h"

#include <fmt/format.h>

#include <CLI/CLI.hpp>
#include <limits>
#include <sstream>
#include <string>
#include <string_view>

#include "daemon/sandbox.h"
#include "virtio/queue.h"

#ifndef VUV_VERSION
#define VUV_VERSION "unknown"
#endif

namespace vhost_vsock::daemon {
namespace {

constexpr const char* kProgramName = "vhost-user-vsock";

constexpr const char* kDescription =
    "virtio-vsock device for QEMU (vhost-user backend) with the Firecracker/Cloud Hypervisor hybrid vsock host "
    "side: host programs connect to <uds-path> and send \"CONNECT <port>\\n\"; guest connects to CID 2 port P reach "
    "the host listener <uds-path>_<P>. Or, instead of --uds-path, vsock forwarding: guest connects to port P reach "
    "AF_VSOCK (--forward-cid, P), and host programs connect over AF_VSOCK to the --forward-listen ports.\n\nGive the "
    "VMs in exactly one form: --guest-cid/--socket/--uds-path for one VM, --vm (repeatable), or --config FILE.yaml.";

constexpr const char* kVmHelp =
    "One VM as comma-separated key=value pairs; repeat for more VMs. Keys (spelled with '-' or '_'): guest-cid, "
    "socket, uds-path, forward-cid, forward-listen, tx-buffer-size, tx-memory-limit, queue-size, groups, "
    "connect-wait, poll-us. Example: --vm guest-cid=3,socket=/run/vm3.sock,uds-path=/run/vm3.vsock or "
    "--vm guest-cid=4,socket=/run/vm4.sock,forward-cid=1,forward-listen=9001+9002";

// Values are taken as text and parsed by config.cpp, so every form reports
// malformed numbers the same way, naming the field.
struct RawFlags {
  std::string guest_cid, socket, uds_path, tx_buffer_size, tx_memory_limit, queue_size, groups, connect_wait;
  std::string forward_cid, forward_listen;
  std::vector<std::string> vm_specs;
  std::string config_file;
  std::string log_level = "info";
  std::string log_format = "text";
  std::string metrics;
  bool metrics_allow_remote = false;
  std::string max_connections, handshake_timeout, request_timeout, shutdown_timeout, poll_us;
  std::string seccomp, user;
};

struct Options {
  CLI::Option* guest_cid;
  CLI::Option* socket;
  CLI::Option* uds_path;
  CLI::Option* forward_cid;
  CLI::Option* forward_listen;
  CLI::Option* tx_buffer_size;
  CLI::Option* tx_memory_limit;
  CLI::Option* queue_size;
  CLI::Option* groups;
  CLI::Option* connect_wait;
  CLI::Option* vm;
  CLI::Option* config;
  CLI::Option* max_connections;
  CLI::Option* handshake_timeout;
  CLI::Option* request_timeout;
  CLI::Option* shutdown_timeout;
  CLI::Option* poll_us;
  CLI::Option* seccomp;
  CLI::Option* user;
  CLI::Option* metrics;
};

// The help text of an option with a default and a ceiling: "<what> (default D, max M)".
template <typename Default, typename Max>
std::string bounded_help(std::string_view what, Default default_value, Max max_value) {
  return fmt::format("{} (default {}, max {})", what, default_value, max_value);
}

// --log-format and the metrics endpoint.
void define_operations_options(CLI::App& app, RawFlags& raw, Options& o) {
  app.add_option("--log-format", raw.log_format,
                 "text, or json: one JSON object per line for journald and log shippers (default text)")
      ->type_name("FORMAT");
  o.metrics = app.add_option("--metrics", raw.metrics,
                             "Serve Prometheus metrics (GET /metrics) and the live connections (GET /connections) "
                             "over HTTP on this address, e.g. 127.0.0.1:9100 or [::1]:9100 (default off; also the "
                             "YAML key 'metrics')")
                  ->type_name("ADDR:PORT");
  app.add_flag("--metrics-allow-remote", raw.metrics_allow_remote,
               "Accept a non-loopback --metrics address (the endpoint has no authentication)");
  app.footer(
      "Listing connections: vhost-user-vsock connections --metrics ADDR:PORT prints the live connections of a "
      "running daemon, like ss.");
}

// The single-VM form's flags, each also a --vm and YAML key.
void define_single_vm_options(CLI::App& app, RawFlags& raw, Options& o) {
  o.guest_cid = app.add_option("--guest-cid", raw.guest_cid,
                               fmt::format("Guest CID, >= 3 (default {}; single-VM form)", kDefaultGuestCid))
                    ->type_name("N");
  o.socket = app.add_option("--socket", raw.socket, "vhost-user socket the VMM connects to (single-VM form)")
                 ->type_name("PATH");
  o.uds_path = app.add_option("--uds-path", raw.uds_path,
                              "Hybrid vsock Unix socket for host programs; guest connects to port P go to "
                              "<uds-path>_<P> (single-VM form)")
                   ->type_name("PATH");
  o.forward_cid = app.add_option("--forward-cid", raw.forward_cid,
                                 "Instead of --uds-path: guest connects to CID 2 port P go to AF_VSOCK (N, P) on the "
                                 "host, e.g. 1 for the host's own vsock loopback (single-VM form)")
                      ->type_name("N");
  o.forward_listen = app.add_option("--forward-listen", raw.forward_listen,
                                    "With --forward-cid: listen on AF_VSOCK port P of the host (any CID) for each "
                                    "port; each connection goes to the guest's port P (single-VM form)")
                         ->type_name("P[+P...]");
  o.tx_buffer_size =
      app.add_option("--tx-buffer-size", raw.tx_buffer_size,
                     bounded_help("Most credit one connection gets: guest->host bytes held while its host socket "
                                  "would block",
                                  kDefaultTxBufferSize, kMaxTxBufferSize))
          ->type_name("BYTES");
  o.tx_memory_limit = app.add_option("--tx-memory-limit", raw.tx_memory_limit,
                                     "Guest->host credit of all connections of a VM together; windows shrink towards "
                                     "a floor when it runs short (default: --max-connections x 64 KiB)")
                          ->type_name("BYTES");
  o.queue_size = app.add_option("--queue-size", raw.queue_size,
                                bounded_help("Largest vring size accepted, a power of two", kDefaultQueueSize,
                                             virtio::kMaxQueueSize))
                     ->type_name("N");
  o.groups = app.add_option("--groups", raw.groups,
                            "Sibling-VM groups joined by '+' (default \"default\"); VMs sharing one reach each other")
                 ->type_name("NAME[+NAME...]");
  o.connect_wait = app.add_option("--connect-wait", raw.connect_wait,
                                  "ms to keep retrying a host CONNECT while the guest refuses it (nothing listens "
                                  "yet), with backoff (default 0: off; single-VM form)")
                       ->type_name("MS");
}

Options define_options(CLI::App& app, RawFlags& raw) {
  Options o{};
  define_single_vm_options(app, raw, o);
  // One value per occurrence, so --vm can repeat like in vhost-device-vsock.
  o.vm = app.add_option("--vm", raw.vm_specs, kVmHelp)->allow_extra_args(false)->type_name("KEY=VALUE,...");
  o.config = app.add_option("--config", raw.config_file,
                            "YAML file with a 'vms' list (see docs/configuration.md); SIGHUP re-reads it")
                 ->type_name("FILE");
  app.add_option("--log-level", raw.log_level, "trace, debug, info, warn or error (default info)")->type_name("LEVEL");
  o.max_connections =
      app.add_option("--max-connections", raw.max_connections,
                     bounded_help("Connections per VM, both directions", kDefaultMaxConnections, kMaxMaxConnections))
          ->type_name("N");
  o.handshake_timeout = app.add_option("--handshake-timeout", raw.handshake_timeout,
                                       "ms a host program has to finish its CONNECT line (default 5000)")
                            ->type_name("MS");
  o.request_timeout = app.add_option("--request-timeout", raw.request_timeout,
                                     "ms the guest has to accept a host-initiated connection (default 2000)")
                          ->type_name("MS");
  o.shutdown_timeout = app.add_option("--shutdown-timeout", raw.shutdown_timeout,
                                      "ms the guest has to close after a full shutdown before it is reset "
                                      "(default 2000)")
                           ->type_name("MS");
  o.poll_us = app.add_option("--poll-us", raw.poll_us,
                             bounded_help("After work, keep polling the virtqueues for this many µs, guest kicks "
                                          "suppressed, before sleeping: lower latency and fewer guest kicks for a "
                                          "busier worker thread; per VM: the poll-us key",
                                          "0 (off)", kMaxPollUs))
                  ->type_name("US");
  // "--seccomp" alone means kill; "--seccomp=log" picks the mode.
  o.seccomp = app.add_option("--seccomp", raw.seccomp,
                             "After binding its sockets, confine the daemon to the syscalls it needs (seccomp); any "
                             "other syscall kills the process with SIGSYS. --seccomp=log only logs them (diagnosis)")
                  ->expected(0, 1)
                  ->type_name("[kill|log]");
  o.user = app.add_option("--user", raw.user,
                          "After binding its sockets, switch to this user (and group; supplementary groups are "
                          "dropped). The socket files are given to that user")
               ->type_name("NAME|UID[:GROUP|GID]");
  define_operations_options(app, raw, o);
  app.set_version_flag("--version", version_string(), "Print the version and exit");
  return o;
}

void parse_timeout(const CLI::Option* option, const std::string& text, std::chrono::milliseconds* out,
                   ConfigErrors* errors) {
  if (option->count() == 0) return;
  uint64_t value = 0;
  std::string error;
  if (!parse_unsigned(text, static_cast<uint64_t>(kMaxTimeout.count()), &value, &error)) {
    errors->push_back({option->get_name(), error});
    return;
  }
  *out = std::chrono::milliseconds(value);
}

RuntimeOptions parse_runtime(const Options& o, const RawFlags& raw, ConfigErrors* errors) {
  RuntimeOptions runtime;
  if (!parse_log_format(raw.log_format, &runtime.log_format)) {
    errors->push_back({"--log-format", fmt::format("'{}' is not one of text, json", raw.log_format)});
  }
  if (!parse_log_level(raw.log_level, &runtime.log_level)) {
    errors->push_back(
        {"--log-level", fmt::format("'{}' is not one of trace, debug, info, warn, error", raw.log_level)});
  }
  if (o.max_connections->count() > 0) {
    uint64_t value = 0;
    std::string error;
    if (parse_unsigned(raw.max_connections, std::numeric_limits<uint32_t>::max(), &value, &error)) {
      runtime.max_connections = static_cast<uint32_t>(value);
    } else {
      errors->push_back({"--max-connections", error});
    }
  }
  parse_timeout(o.handshake_timeout, raw.handshake_timeout, &runtime.handshake_timeout, errors);
  parse_timeout(o.request_timeout, raw.request_timeout, &runtime.request_timeout, errors);
  parse_timeout(o.shutdown_timeout, raw.shutdown_timeout, &runtime.shutdown_timeout, errors);
  if (o.poll_us->count() > 0) {
    uint64_t value = 0;
    std::string error;
    if (parse_unsigned(raw.poll_us, kMaxPollUs, &value, &error)) {
      runtime.poll_us = static_cast<uint32_t>(value);
    } else {
      errors->push_back({"--poll-us", error});
    }
  }
  return runtime;
}

SandboxOptions parse_sandbox(const Options& o, const RawFlags& raw, ConfigErrors* errors) {
  SandboxOptions sandbox;
  if (o.seccomp->count() > 0) {
    if (raw.seccomp.empty() || raw.seccomp == "kill") {
      sandbox.seccomp = SeccompMode::kKill;
    } else if (raw.seccomp == "log") {
      sandbox.seccomp = SeccompMode::kLog;
    } else {
      errors->push_back({"--seccomp", fmt::format("'{}' is not a mode (give --seccomp, --seccomp=kill or "
                                                  "--seccomp=log)",
                                                  raw.seccomp)});
    }
  }
  if (o.user->count() > 0) {
    std::string error;
    uid_t uid = 0;
    gid_t gid = 0;
    if (parse_user_spec(raw.user, &uid, &gid, &error)) {
      sandbox.user = raw.user;
      sandbox.uid = uid;
      sandbox.gid = gid;
    } else {
      errors->push_back({"--user", error});
    }
  }
  return sandbox;
}

// --forward-cid / --forward-listen of the single-VM form.
bool parse_single_vm_forwarding(const Options& o, const RawFlags& raw, VmConfig* vm, ConfigErrors* errors) {
  bool ok = true;
  std::string error;
  uint64_t number = 0;
  if (o.forward_cid->count() > 0) {
    if (parse_unsigned(raw.forward_cid, std::numeric_limits<uint32_t>::max(), &number, &error)) {
      vm->forward_cid = static_cast<uint32_t>(number);
    } else {
      errors->push_back({"--forward-cid", error});
      ok = false;
    }
  }
  if (o.forward_listen->count() > 0 && !parse_forward_ports(raw.forward_listen, &vm->forward_listen, &error)) {
    errors->push_back({"--forward-listen", error});
    ok = false;
  }
  return ok;
}

// The single-VM form (vhost-device-vsock's flat flags); errors use flag names.
bool parse_single_vm(const Options& o, const RawFlags& raw, VmConfig* out, ConfigErrors* errors) {
  VmConfig vm;  // source kFlags
  bool ok = true;
  std::string error;
  uint64_t number = 0;
  if (o.guest_cid->count() > 0) {
    if (parse_unsigned(raw.guest_cid, std::numeric_limits<uint64_t>::max(), &number, &error)) {
      vm.guest_cid = number;
    } else {
      errors->push_back({"--guest-cid", error});
      ok = false;
    }
  }
  for (auto [option, text, target] : {std::tuple{o.tx_buffer_size, &raw.tx_buffer_size, &vm.tx_buffer_size},
                                      std::tuple{o.queue_size, &raw.queue_size, &vm.queue_size},
                                      std::tuple{o.connect_wait, &raw.connect_wait, &vm.connect_wait_ms}}) {
    if (option->count() == 0) continue;
    if (parse_unsigned(*text, std::numeric_limits<uint32_t>::max(), &number, &error)) {
      *target = static_cast<uint32_t>(number);
    } else {
      errors->push_back({option->get_name(), error});
      ok = false;
    }
  }
  if (o.tx_memory_limit->count() > 0) {
    if (parse_unsigned(raw.tx_memory_limit, std::numeric_limits<uint64_t>::max(), &number, &error)) {
      vm.tx_memory_limit = number;
    } else {
      errors->push_back({"--tx-memory-limit", error});
      ok = false;
    }
  }
  if (o.groups->count() > 0 && !parse_groups(raw.groups, &vm.groups, &error)) {
    errors->push_back({"--groups", error});
    ok = false;
  }
  if (o.socket->count() == 0) {
    errors->push_back({"--socket", "required (with --guest-cid/--uds-path; or use --vm or --config)"});
    ok = false;
  }
  if (!parse_single_vm_forwarding(o, raw, &vm, errors)) ok = false;
  if (o.uds_path->count() == 0 && o.forward_cid->count() == 0) {
    errors->push_back(
        {"--uds-path", "required (with --guest-cid/--socket, or --forward-cid instead; or use --vm or --config)"});
    ok = false;
  }
  vm.socket_path = raw.socket;
  vm.uds_path = raw.uds_path;
  if (ok) *out = std::move(vm);
  return ok;
}

// --config: the VMs, and what a SIGHUP reload needs to read the file again.
void load_config_file_form(const std::string& path, DaemonConfig* config, ConfigErrors* errors,
                           std::optional<std::string>* yaml_metrics) {
  load_yaml_config_file(path, &config->vms, errors, yaml_metrics);
  config->config_file = path;
  config->sandbox.config_reload = true;
}

// --metrics wins over the YAML key.
void parse_metrics(const Options& o, const RawFlags& raw, const std::optional<std::string>& from_yaml,
                   DaemonConfig* config, ConfigErrors* errors) {
  config->metrics.allow_remote = raw.metrics_allow_remote;
  const bool from_flag = o.metrics->count() > 0;
  if (!from_flag && !from_yaml) return;
  metrics::ListenAddress address;
  if (parse_metrics_address(from_flag ? raw.metrics : *from_yaml, raw.metrics_allow_remote,
                            from_flag ? "--metrics" : "metrics", &address, errors)) {
    config->metrics.address = std::move(address);
    config->metrics.set_by_flag = from_flag;
    config->sandbox.metrics_server = true;
  }
}

CliOutcome usage_failure(const ConfigErrors& errors) {
  CliOutcome outcome;
  outcome.exit_code = kExitUsage;
  for (const auto& error : errors) outcome.errors.push_back("error: " + error.to_string());
  return outcome;
}

CliOutcome parse_connections_command(const std::vector<std::string>& args) {
  CLI::App app{"Print the live connections of a running vhost-user-vsock (started with --metrics), like ss",
               std::string(kProgramName) + " connections"};
  std::string address_text;
  app.add_option("--metrics", address_text, "The daemon's --metrics address, e.g. 127.0.0.1:9100")
      ->required()
      ->type_name("ADDR:PORT");
  std::vector<const char*> argv{kProgramName};
  for (const auto& arg : args) argv.push_back(arg.c_str());
  CliOutcome outcome;
  try {
    app.parse(static_cast<int>(argv.size()), argv.data());
  } catch (const CLI::ParseError& e) {
    std::ostringstream out;
    std::ostringstream err;
    if (app.exit(e, out, err) == 0) {
      outcome.output = out.str();
      return outcome;
    }
    outcome.exit_code = kExitUsage;
    outcome.errors.push_back(fmt::format("error: {} (see connections --help)", e.what()));
    return outcome;
  }
  metrics::ListenAddress address;
  std::string error;
  if (!metrics::parse_listen_address(address_text, &address, &error)) {
    outcome.exit_code = kExitUsage;
    outcome.errors.push_back("error: --metrics: " + error);
    return outcome;
  }
  outcome.connections_from = std::move(address);
  return outcome;
}

}  // namespace

std::string version_string() {
  return std::string(kProgramName) + " " + VUV_VERSION;
}

CliOutcome parse_command_line(const std::vector<std::string>& args) {
  if (!args.empty() && args.front() == "connections") {
    return parse_connections_command(std::vector<std::string>(args.begin() + 1, args.end()));
  }
  CLI::App app{kDescription, kProgramName};
  RawFlags raw;
  const Options o = define_options(app, raw);

  std::vector<const char*> argv{kProgramName};
  for (const auto& arg : args) argv.push_back(arg.c_str());
  try {
    app.parse(static_cast<int>(argv.size()), argv.data());
  } catch (const CLI::ParseError& e) {
    CliOutcome outcome;
    std::ostringstream out;
    std::ostringstream err;
    const int code = app.exit(e, out, err);
    outcome.output = out.str();
    if (code == 0) return outcome;  // --help, --version
    outcome.exit_code = kExitUsage;
    outcome.errors.push_back(fmt::format("error: {} (see --help)", e.what()));
    return outcome;
  }

  ConfigErrors errors;
  DaemonConfig config;
  config.runtime = parse_runtime(o, raw, &errors);
  config.sandbox = parse_sandbox(o, raw, &errors);

  const bool single_form = o.guest_cid->count() + o.socket->count() + o.uds_path->count() + o.tx_buffer_size->count() +
                               o.tx_memory_limit->count() + o.queue_size->count() + o.groups->count() +
                               o.connect_wait->count() + o.forward_cid->count() + o.forward_listen->count() >
                           0;
  const bool vm_form = o.vm->count() > 0;
  const bool config_form = o.config->count() > 0;
  if (int(single_form) + int(vm_form) + int(config_form) > 1) {
    errors.push_back({"", "give the VMs in exactly one form: --guest-cid/--socket/--uds-path, --vm, or --config"});
    return usage_failure(errors);
  }

  if (single_form) {
    VmConfig vm;
    if (parse_single_vm(o, raw, &vm, &errors)) config.vms.push_back(std::move(vm));
  } else if (vm_form) {
    for (size_t i = 0; i < raw.vm_specs.size(); ++i) {
      VmConfig vm;
      if (parse_vm_spec(raw.vm_specs[i], i, &vm, &errors)) config.vms.push_back(std::move(vm));
    }
  }
  std::optional<std::string> yaml_metrics;
  if (config_form) load_config_file_form(raw.config_file, &config, &errors, &yaml_metrics);
  parse_metrics(o, raw, yaml_metrics, &config, &errors);
  // Range and filesystem checks only make sense on fully parsed VMs.
  if (errors.empty()) validate_config(config, &errors);
  if (!errors.empty()) return usage_failure(errors);
  config.sandbox.vsock_forwarding = uses_vsock_forwarding(config.vms);

  CliOutcome outcome;
  outcome.config = std::move(config);
  return outcome;
}

CliOutcome parse_command_line(int argc, const char* const* argv) {
  std::vector<std::string> args;
  for (int i = 1; i < argc; ++i) args.emplace_back(argv[i]);
  return parse_command_line(args);
}

}  // namespace vhost_vsock::daemon
