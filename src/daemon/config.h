// Daemon configuration: what the three command-line forms (single-VM flags,
// repeated --vm, --config YAML) parse into, and the checks run on it before
// anything is bound. Everything here is pure (apart from the filesystem
// checks in validate_config) and reports problems as a list of errors that
// name the offending field, so one run shows every mistake at once.
#pragma once

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "base/unix_socket_address.h"
#include "metrics/listen_address.h"

namespace vhost_vsock::daemon {

// Defaults and limits of vhost-device-vsock's command line, plus our own caps.
inline constexpr uint64_t kDefaultGuestCid = 3;  // vhost-device-vsock's default when --guest-cid is omitted
inline constexpr uint64_t kMinGuestCid = 3;      // 0 hypervisor, 1 local, 2 host
inline constexpr uint64_t kCidAny = 0xFFFFFFFF;  // VMADDR_CID_ANY; the upper 32 bits are reserved
// Linux's own vsock buffer: a guest writing 64 KiB at a time never waits for credit.
inline constexpr uint32_t kDefaultTxBufferSize = 256 * 1024;
inline constexpr uint32_t kMaxTxBufferSize = 64 * 1024 * 1024;
// --tx-memory-limit: guest->host bytes one VM may promise all its connections together.
inline constexpr uint64_t kMaxTxMemoryLimit = uint64_t{1} << 40;
inline constexpr uint32_t kDefaultQueueSize = 1024;
inline constexpr std::string_view kDefaultGroup = "default";
using base::kMaxUnixPathLength;  // 107: sun_path holds 108 bytes with the NUL
// The device listens on uds-path and connects to "<uds-path>_<port>" with a
// 32-bit port: up to 11 more bytes ("_4294967295").
inline constexpr size_t kPortSuffixLength = 11;
inline constexpr size_t kMaxUdsPathLength = kMaxUnixPathLength - kPortSuffixLength;

inline constexpr uint32_t kDefaultMaxConnections = 16384;  // the product promises >= 10,000 per VM
inline constexpr uint32_t kMaxMaxConnections = 1 << 20;
inline constexpr std::chrono::milliseconds kMaxTimeout{3'600'000};
// --poll-us: a worker busy-polls for at most a second after work (ours; no
// vhost-device-vsock equivalent). More buys nothing but burnt CPU.
inline constexpr uint32_t kMaxPollUs = 1'000'000;

enum class LogLevel { kTrace, kDebug, kInfo, kWarn, kError };
// --log-format: human text, or one JSON object per line (journald, log shippers).
enum class LogFormat { kText, kJson };

// Which command-line form a VM came from, so errors use that form's spelling
// ("--guest-cid", "vm[1].guest_cid", "vms[1].guest_cid").
enum class VmSource { kFlags, kVmOption, kConfigFile };

struct VmConfig {
  uint64_t guest_cid = kDefaultGuestCid;
  std::string socket_path;  // vhost-user socket QEMU connects to
  std::string uds_path;     // hybrid vsock listener; guest connects go to uds_path + "_<port>"
  uint32_t tx_buffer_size = kDefaultTxBufferSize;
  // Budget for all connections' guest->host credit; 0: max-connections x 64 KiB.
  uint64_t tx_memory_limit = 0;
  uint32_t queue_size = kDefaultQueueSize;  // largest vring the device accepts
  // Connect-wait (ours): ms to keep retrying a host CONNECT the guest refuses; 0 = off.
  uint32_t connect_wait_ms = 0;
  // Sibling-VM routing groups (vhost-device-vsock's "a+b"): VMs sharing one reach each other by CID.
  std::vector<std::string> groups{std::string(kDefaultGroup)};
  // vhost-device-vsock's vsock backend, instead of uds_path: a guest connect
  // to port P goes to AF_VSOCK (forward_cid, P); each forward_listen port P is
  // a host AF_VSOCK listener (VMADDR_CID_ANY, P) whose connections go to guest port P.
  std::optional<uint32_t> forward_cid;
  std::vector<uint32_t> forward_listen;
  // Busy polling (ours): µs to keep watching the rings after work; unset:
  // the global --poll-us.
  std::optional<uint32_t> poll_us;

  VmSource source = VmSource::kFlags;
  size_t index = 0;  // position in --vm order or in the YAML vms list

  bool operator==(const VmConfig&) const = default;
};

// Per-VM limits shared by every VM, from our own flags (map to vsock::MuxerLimits).
struct RuntimeOptions {
  LogLevel log_level = LogLevel::kInfo;
  LogFormat log_format = LogFormat::kText;
  uint32_t max_connections = kDefaultMaxConnections;
  std::chrono::milliseconds handshake_timeout{5000};
  std::chrono::milliseconds request_timeout{2000};
  std::chrono::milliseconds shutdown_timeout{2000};
  // --poll-us: µs a worker keeps polling its rings after work; 0: off (the
  // default), it sleeps until a kick or a socket wakes it.
  uint32_t poll_us = 0;
};

// What a forbidden syscall does under --seccomp: kill the whole process
// (SIGSYS), or only log it to the kernel's audit log and let it run (for
// finding what a new code path needs; not a sandbox).
enum class SeccompMode { kOff, kKill, kLog };

// --seccomp and --user (src/daemon/sandbox.h): applied after every socket is
// bound, before any guest is served.
struct SandboxOptions {
  SeccompMode seccomp = SeccompMode::kOff;
  std::string user;  // --user as given; empty: keep the current user
  uint32_t uid = 0;  // resolved from `user` when it is set
  uint32_t gid = 0;
  bool metrics_server = false;    // --metrics is on: the filter allows its HTTP server's syscalls
  bool config_reload = false;     // --config is on: the filter allows what a SIGHUP reload needs
  bool vsock_forwarding = false;  // a VM has forward-cid: the filter allows AF_VSOCK sockets
  [[nodiscard]] bool enabled() const { return seccomp != SeccompMode::kOff || !user.empty(); }
};

// --metrics (or the YAML `metrics` key): the HTTP endpoint, off when unset.
struct MetricsOptions {
  std::optional<metrics::ListenAddress> address;
  bool allow_remote = false;  // --metrics-allow-remote: a non-loopback address is accepted
  bool set_by_flag = false;   // from --metrics (the YAML key is then ignored, also on reload)
};

struct DaemonConfig {
  std::vector<VmConfig> vms;
  RuntimeOptions runtime;
  SandboxOptions sandbox;
  MetricsOptions metrics;
  std::string config_file;  // --config FILE, re-read on SIGHUP; empty for the other forms
};

struct ConfigError {
  std::string field;  // e.g. "vm[1].guest_cid"; empty for whole-command-line problems
  std::string message;
  [[nodiscard]] std::string to_string() const { return field.empty() ? message : field + ": " + message; }
};
using ConfigErrors = std::vector<ConfigError>;

// The field's name as the user spelled it for this VM's form.
std::string vm_field(const VmConfig& vm, std::string_view canonical_key);

// Decimal unsigned integer (optional leading '+', as vhost-device-vsock's
// parser takes). Returns false and sets `error` on empty input, junk, or a
// value above `max`.
bool parse_unsigned(std::string_view text, uint64_t max, uint64_t* out, std::string* error);

// "a+b" -> {"a", "b"}. Empty names are errors.
bool parse_groups(std::string_view text, std::vector<std::string>* out, std::string* error);
// forward-listen's "9001+9002" -> {9001, 9002}: 32-bit ports, none twice,
// not VMADDR_PORT_ANY.
bool parse_forward_ports(std::string_view text, std::vector<uint32_t>* out, std::string* error);
// forward-cid and forward-listen: their values, and that they replace
// uds-path (exactly one of uds-path and forward-cid). Appends errors.
void validate_forwarding(const VmConfig& vm, ConfigErrors* errors);
// Any VM uses the vsock backend (the seccomp filter then allows AF_VSOCK sockets).
bool uses_vsock_forwarding(const std::vector<VmConfig>& vms);

bool parse_log_level(std::string_view text, LogLevel* out);
std::string_view log_level_name(LogLevel level);

// One --vm value: "guest-cid=3,socket=/s,uds-path=/u[,tx-buffer-size=N][,queue-size=N][,groups=a+b]".
// Keys may be spelled with '-' or '_'. Appends to `errors` and returns false
// on any problem; `out->source/index` are set to kVmOption/`index`.
bool parse_vm_spec(std::string_view spec, size_t index, VmConfig* out, ConfigErrors* errors);

// YAML text: `vms: [{guest_cid, socket, uds_path, tx_buffer_size, queue_size, groups}]`
// and optionally `metrics: ADDR` (stored in `metrics_address` when given;
// a null `metrics_address` makes the key an error).
bool parse_yaml_config(std::string_view yaml_text, std::vector<VmConfig>* out, ConfigErrors* errors,
                       std::optional<std::string>* metrics_address = nullptr);
bool load_yaml_config_file(const std::string& path, std::vector<VmConfig>* out, ConfigErrors* errors,
                           std::optional<std::string>* metrics_address = nullptr);

bool parse_log_format(std::string_view text, LogFormat* out);

// --metrics ADDR: parses and, unless `allow_remote`, refuses an address that
// is not loopback (the endpoint has no authentication). Appends to `errors`
// under `field`.
bool parse_metrics_address(std::string_view text, bool allow_remote, const std::string& field,
                           metrics::ListenAddress* out, ConfigErrors* errors);

// Range checks, duplicate CIDs and paths across VMs, AF_UNIX path lengths,
// and that each socket's directory exists and is writable. Appends errors.
void validate_vm(const VmConfig& vm, ConfigErrors* errors);
void validate_config(const DaemonConfig& config, ConfigErrors* errors);

}  // namespace vhost_vsock::daemon
