#include "daemon/config.h"

#include <fmt/format.h>
#include <sys/stat.h>
#include <unistd.h>
#include <yaml-cpp/yaml.h>

#include <cctype>
#include <cerrno>
#include <charconv>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <sstream>
#include <system_error>

#include "base/bits.h"
#include "base/errno_text.h"
#include "virtio/queue.h"
#include "vsock/connection/credit_budget.h"

namespace vhost_vsock::daemon {
namespace {

constexpr std::string_view kKnownKeys =
    "guest-cid, socket, uds-path, forward-cid, forward-listen, tx-buffer-size, tx-memory-limit, queue-size, groups, "
    "connect-wait, poll-us";
// A config file is a handful of lines; refuse to slurp something huge by mistake.
constexpr std::streamsize kMaxConfigFileBytes = 1 << 20;

std::string canonical_key(std::string_view key) {
  std::string out(key);
  for (char& c : out) {
    if (c == '-') c = '_';
  }
  return out;
}

// Applies one key of a VM (from --vm or YAML) given as text. `seen` catches a
// key given twice, which is almost certainly a typo.
bool apply_vm_key(VmConfig* vm, const std::string& key, std::string_view value, std::map<std::string, bool>* seen,
                  ConfigErrors* errors) {
  const std::string field = vm_field(*vm, key);
  if (key != "guest_cid" && key != "socket" && key != "uds_path" && key != "tx_buffer_size" &&
      key != "tx_memory_limit" && key != "queue_size" && key != "groups" && key != "connect_wait" &&
      key != "forward_cid" && key != "forward_listen" && key != "poll_us") {
    errors->push_back({vm_field(*vm, ""), fmt::format("unknown key '{}' (known keys: {})", key, kKnownKeys)});
    return false;
  }
  if ((*seen)[key]) {
    errors->push_back({field, "given more than once"});
    return false;
  }
  (*seen)[key] = true;

  std::string error;
  uint64_t number = 0;
  if (key == "forward_cid") {
    if (!parse_unsigned(value, std::numeric_limits<uint32_t>::max(), &number, &error)) {
      errors->push_back({field, error});
      return false;
    }
    vm->forward_cid = static_cast<uint32_t>(number);
  } else if (key == "forward_listen") {
    if (!parse_forward_ports(value, &vm->forward_listen, &error)) {
      errors->push_back({field, error});
      return false;
    }
  } else if (key == "guest_cid" || key == "tx_memory_limit") {
    if (!parse_unsigned(value, std::numeric_limits<uint64_t>::max(), &number, &error)) {
      errors->push_back({field, error});
      return false;
    }
    (key == "guest_cid" ? vm->guest_cid : vm->tx_memory_limit) = number;
  } else if (key == "poll_us") {
    if (!parse_unsigned(value, kMaxPollUs, &number, &error)) {
      errors->push_back({field, error});
      return false;
    }
    vm->poll_us = static_cast<uint32_t>(number);
  } else if (key == "tx_buffer_size" || key == "queue_size" || key == "connect_wait") {
    if (!parse_unsigned(value, std::numeric_limits<uint32_t>::max(), &number, &error)) {
      errors->push_back({field, error});
      return false;
    }
    uint32_t* target = key == "tx_buffer_size" ? &vm->tx_buffer_size
                       : key == "queue_size"   ? &vm->queue_size
                                               : &vm->connect_wait_ms;
    *target = static_cast<uint32_t>(number);
  } else if (key == "groups") {
    if (!parse_groups(value, &vm->groups, &error)) {
      errors->push_back({field, error});
      return false;
    }
  } else {
    (key == "socket" ? vm->socket_path : vm->uds_path) = std::string(value);
  }
  return true;
}

bool check_required(const VmConfig& vm, const std::map<std::string, bool>& seen, ConfigErrors* errors) {
  bool ok = true;
  if (!seen.contains("socket")) {
    errors->push_back({vm_field(vm, "socket"), "required"});
    ok = false;
  }
  // As in vhost-device-vsock: one backend, uds-path or forward-cid.
  if (!seen.contains("uds_path") && !seen.contains("forward_cid")) {
    errors->push_back(
        {vm_field(vm, "uds_path"), fmt::format("required (or {} for the vsock backend)", vm_field(vm, "forward_cid"))});
    ok = false;
  }
  return ok;
}

std::string yaml_where(const YAML::Node& node) {
  const YAML::Mark mark = node.Mark();
  if (mark.is_null()) return "";
  return fmt::format(" (line {})", mark.line + 1);
}

// The text of a scalar YAML value; sequences and maps are type errors.
bool yaml_scalar(const YAML::Node& node, const std::string& field, std::string* out, ConfigErrors* errors) {
  if (node.IsNull()) {
    errors->push_back({field, "has no value" + yaml_where(node)});
    return false;
  }
  if (!node.IsScalar()) {
    errors->push_back({field, std::string("expected a single value, not a ") +
                                  (node.IsSequence() ? "list" : "mapping") + yaml_where(node)});
    return false;
  }
  *out = node.Scalar();
  return true;
}

bool parse_yaml_vm(const YAML::Node& node, size_t index, VmConfig* out, ConfigErrors* errors) {
  VmConfig vm;
  vm.source = VmSource::kConfigFile;
  vm.index = index;
  if (!node.IsMap()) {
    errors->push_back({vm_field(vm, ""), "expected a mapping of keys (guest_cid, socket, uds_path, ...)"});
    return false;
  }
  std::map<std::string, bool> seen;
  bool ok = true;
  for (const auto& entry : node) {
    std::string raw_key;
    if (!yaml_scalar(entry.first, vm_field(vm, ""), &raw_key, errors)) {
      ok = false;
      continue;
    }
    const std::string key = canonical_key(raw_key);
    std::string value;
    if (key == "groups" && entry.second.IsSequence()) {
      // Also take a YAML list of names, the natural spelling in YAML.
      std::string joined;
      for (const auto& item : entry.second) {
        std::string name;
        if (!yaml_scalar(item, vm_field(vm, key), &name, errors)) {
          ok = false;
          break;
        }
        joined += (joined.empty() ? "" : "+") + name;
      }
      if (!ok) continue;
      value = joined;
    } else if (!yaml_scalar(entry.second, vm_field(vm, key), &value, errors)) {
      ok = false;
      continue;
    }
    if (!apply_vm_key(&vm, key, value, &seen, errors)) ok = false;
  }
  if (!check_required(vm, seen, errors)) ok = false;
  if (ok) *out = std::move(vm);
  return ok;
}

// Adds a directory-level check for the socket file at `path`.
void check_socket_path(const std::string& field, const std::string& path, size_t max_length,
                       std::string_view length_reason, ConfigErrors* errors) {
  if (path.empty()) {
    errors->push_back({field, "must not be empty"});
    return;
  }
  if (path.find('\0') != std::string::npos) {
    errors->push_back({field, "must not contain a NUL byte"});
    return;
  }
  if (path.size() > max_length) {
    errors->push_back({field, fmt::format("'{}' is {} bytes long; at most {} bytes fit {}", path, path.size(),
                                          max_length, length_reason)});
  }
  std::filesystem::path parent = std::filesystem::path(path).parent_path();
  const std::string dir = parent.empty() ? std::string(".") : parent.string();
  struct stat st {};
  if (::stat(dir.c_str(), &st) != 0) {
    errors->push_back(
        {field, fmt::format("directory '{}' does not exist or cannot be reached ({})", dir, base::errno_text(errno))});
    return;
  }
  if (!S_ISDIR(st.st_mode)) {
    errors->push_back({field, fmt::format("'{}' is not a directory", dir)});
    return;
  }
  if (::access(dir.c_str(), W_OK | X_OK) != 0) {
    errors->push_back({field, fmt::format("directory '{}' is not writable ({})", dir, base::errno_text(errno))});
    return;
  }
  // A stale socket file gets replaced at startup; anything else there is not ours to delete.
  if (::lstat(path.c_str(), &st) == 0 && !S_ISSOCK(st.st_mode)) {
    errors->push_back({field, fmt::format("'{}' exists and is not a socket; refusing to replace it", path)});
  }
}

std::string normalized_path(const std::string& path) {
  std::error_code ec;
  std::filesystem::path absolute = std::filesystem::absolute(path, ec);
  if (ec) return path;
  return absolute.lexically_normal().string();
}

void check_runtime(const RuntimeOptions& runtime, ConfigErrors* errors) {
  if (runtime.max_connections < 1 || runtime.max_connections > kMaxMaxConnections) {
    errors->push_back({"--max-connections", fmt::format("{} is out of range (must be >= 1 and <= {})",
                                                        runtime.max_connections, kMaxMaxConnections)});
  }
  if (runtime.poll_us > kMaxPollUs) {
    errors->push_back({"--poll-us", fmt::format("{} is out of range (must be <= {})", runtime.poll_us, kMaxPollUs)});
  }
  const std::pair<const char*, std::chrono::milliseconds> timeouts[] = {
      {"--handshake-timeout", runtime.handshake_timeout},
      {"--request-timeout", runtime.request_timeout},
      {"--shutdown-timeout", runtime.shutdown_timeout},
  };
  for (const auto& [name, value] : timeouts) {
    if (value.count() < 1 || value > kMaxTimeout) {
      errors->push_back(
          {name, fmt::format("{} ms is out of range (must be >= 1 and <= {})", value.count(), kMaxTimeout.count())});
    }
  }
}

}  // namespace

std::string vm_field(const VmConfig& vm, std::string_view key) {
  switch (vm.source) {
    case VmSource::kFlags: {
      if (key.empty()) return "command line";
      std::string flag = "--" + std::string(key);
      for (char& c : flag) {
        if (c == '_') c = '-';
      }
      return flag;
    }
    case VmSource::kVmOption:
      return key.empty() ? fmt::format("vm[{}]", vm.index) : fmt::format("vm[{}].{}", vm.index, key);
    case VmSource::kConfigFile:
      return key.empty() ? fmt::format("vms[{}]", vm.index) : fmt::format("vms[{}].{}", vm.index, key);
  }
  return std::string(key);
}

bool parse_unsigned(std::string_view text, uint64_t max, uint64_t* out, std::string* error) {
  std::string_view digits = text;
  if (!digits.empty() && digits.front() == '+') digits.remove_prefix(1);
  if (digits.empty()) {
    *error = text.empty() ? "empty value, expected a number" : fmt::format("'{}' is not a number", text);
    return false;
  }
  uint64_t value = 0;
  auto [end, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), value, 10);
  if (ec == std::errc::result_out_of_range) {
    *error = fmt::format("{} is out of range (must be <= {})", text, max);
    return false;
  }
  if (ec != std::errc() || end != digits.data() + digits.size()) {
    *error = fmt::format("'{}' is not a number", text);
    return false;
  }
  if (value > max) {
    *error = fmt::format("{} is out of range (must be <= {})", value, max);
    return false;
  }
  *out = value;
  return true;
}

bool parse_groups(std::string_view text, std::vector<std::string>* out, std::string* error) {
  std::vector<std::string> groups;
  size_t start = 0;
  while (true) {
    const size_t plus = text.find('+', start);
    const std::string_view name = text.substr(start, plus == std::string_view::npos ? text.npos : plus - start);
    if (name.empty()) {
      *error = fmt::format("'{}' has an empty group name (expected names joined by '+', e.g. group1+group2)", text);
      return false;
    }
    groups.emplace_back(name);
    if (plus == std::string_view::npos) break;
    start = plus + 1;
  }
  *out = std::move(groups);
  return true;
}

bool parse_log_level(std::string_view text, LogLevel* out) {
  static constexpr std::pair<std::string_view, LogLevel> kLevels[] = {
      {"trace", LogLevel::kTrace}, {"debug", LogLevel::kDebug}, {"info", LogLevel::kInfo},
      {"warn", LogLevel::kWarn},   {"error", LogLevel::kError},
  };
  for (const auto& [name, level] : kLevels) {
    if (text == name) {
      *out = level;
      return true;
    }
  }
  return false;
}

bool parse_log_format(std::string_view text, LogFormat* out) {
  if (text == "text") {
    *out = LogFormat::kText;
  } else if (text == "json") {
    *out = LogFormat::kJson;
  } else {
    return false;
  }
  return true;
}

bool parse_metrics_address(std::string_view text, bool allow_remote, const std::string& field,
                           metrics::ListenAddress* out, ConfigErrors* errors) {
  metrics::ListenAddress address;
  std::string error;
  if (!metrics::parse_listen_address(text, &address, &error)) {
    errors->push_back({field, error});
    return false;
  }
  if (!address.loopback && !allow_remote) {
    errors->push_back({field, fmt::format("{} is not a loopback address; the endpoint has no authentication, so "
                                          "give --metrics-allow-remote to serve it beyond this host",
                                          address.to_string())});
    return false;
  }
  *out = std::move(address);
  return true;
}

std::string_view log_level_name(LogLevel level) {
  switch (level) {
    case LogLevel::kTrace:
      return "trace";
    case LogLevel::kDebug:
      return "debug";
    case LogLevel::kInfo:
      return "info";
    case LogLevel::kWarn:
      return "warn";
    case LogLevel::kError:
      return "error";
  }
  return "info";
}

bool parse_vm_spec(std::string_view spec, size_t index, VmConfig* out, ConfigErrors* errors) {
  while (!spec.empty() && std::isspace(static_cast<unsigned char>(spec.front()))) spec.remove_prefix(1);
  while (!spec.empty() && std::isspace(static_cast<unsigned char>(spec.back()))) spec.remove_suffix(1);
  VmConfig vm;
  vm.source = VmSource::kVmOption;
  vm.index = index;
  std::map<std::string, bool> seen;
  bool ok = true;
  size_t start = 0;
  while (start <= spec.size()) {
    const size_t comma = spec.find(',', start);
    const std::string_view item = spec.substr(start, comma == std::string_view::npos ? spec.npos : comma - start);
    start = comma == std::string_view::npos ? spec.size() + 1 : comma + 1;
    const size_t equals = item.find('=');
    if (equals == std::string_view::npos || equals == 0) {
      errors->push_back({vm_field(vm, ""), fmt::format("'{}' is not key=value", item)});
      ok = false;
      continue;
    }
    // Everything after the first '=' is the value, so paths may contain '='.
    if (!apply_vm_key(&vm, canonical_key(item.substr(0, equals)), item.substr(equals + 1), &seen, errors)) ok = false;
  }
  if (!check_required(vm, seen, errors)) ok = false;
  if (ok) *out = std::move(vm);
  return ok;
}

bool parse_yaml_config(std::string_view yaml_text, std::vector<VmConfig>* out, ConfigErrors* errors,
                       std::optional<std::string>* metrics_address) {
  YAML::Node root;
  try {
    root = YAML::Load(std::string(yaml_text));
  } catch (const YAML::Exception& e) {
    errors->push_back(
        {"config", fmt::format("invalid YAML at line {}, column {}: {}", e.mark.line + 1, e.mark.column + 1, e.msg)});
    return false;
  }
  if (!root.IsMap()) {
    errors->push_back({"config", "expected a mapping with a 'vms' list at the top level"});
    return false;
  }
  bool ok = true;
  YAML::Node vms;
  for (const auto& entry : root) {
    const std::string key = entry.first.IsScalar() ? entry.first.Scalar() : std::string("?");
    if (key == "metrics" && metrics_address != nullptr) {
      std::string address;
      if (yaml_scalar(entry.second, "metrics", &address, errors)) {
        *metrics_address = address;
      } else {
        ok = false;
      }
      continue;
    }
    if (key != "vms") {
      errors->push_back({"config", fmt::format("unknown top-level key '{}' (expected 'vms' or 'metrics')", key)});
      ok = false;
      continue;
    }
    vms = entry.second;
  }
  if (!vms.IsDefined() || vms.IsNull()) {
    if (ok) errors->push_back({"vms", "required: a list of VMs"});
    return false;
  }
  if (!vms.IsSequence() || vms.size() == 0) {
    errors->push_back({"vms", "expected a non-empty list of VMs"});
    return false;
  }
  std::vector<VmConfig> parsed;
  for (size_t i = 0; i < vms.size(); ++i) {
    VmConfig vm;
    if (parse_yaml_vm(vms[i], i, &vm, errors)) {
      parsed.push_back(std::move(vm));
    } else {
      ok = false;
    }
  }
  if (ok) *out = std::move(parsed);
  return ok;
}

bool load_yaml_config_file(const std::string& path, std::vector<VmConfig>* out, ConfigErrors* errors,
                           std::optional<std::string>* metrics_address) {
  std::ifstream file(path, std::ios::binary);
  if (!file) {
    errors->push_back({"--config", fmt::format("cannot open '{}': {}", path, base::errno_text(errno))});
    return false;
  }
  std::string text(static_cast<size_t>(kMaxConfigFileBytes) + 1, '\0');
  file.read(text.data(), kMaxConfigFileBytes + 1);
  if (file.bad()) {
    errors->push_back({"--config", fmt::format("cannot read '{}'", path)});
    return false;
  }
  if (file.gcount() > kMaxConfigFileBytes) {
    errors->push_back({"--config", fmt::format("'{}' is larger than {} bytes", path, kMaxConfigFileBytes)});
    return false;
  }
  text.resize(static_cast<size_t>(file.gcount()));
  return parse_yaml_config(text, out, errors, metrics_address);
}

void validate_vm(const VmConfig& vm, ConfigErrors* errors) {
  if (vm.guest_cid < kMinGuestCid || vm.guest_cid >= kCidAny) {
    errors->push_back({vm_field(vm, "guest_cid"),
                       fmt::format("{} is {} (must be >= {} and < {})", vm.guest_cid,
                                   vm.guest_cid < kMinGuestCid ? "reserved" : "out of range", kMinGuestCid, kCidAny)});
  }
  if (vm.tx_buffer_size == 0 || vm.tx_buffer_size > kMaxTxBufferSize) {
    errors->push_back({vm_field(vm, "tx_buffer_size"), fmt::format("{} is out of range (must be >= 1 and <= {})",
                                                                   vm.tx_buffer_size, kMaxTxBufferSize)});
  }
  if (std::chrono::milliseconds(vm.connect_wait_ms) > kMaxTimeout) {
    errors->push_back({vm_field(vm, "connect_wait"), fmt::format("{} is out of range (must be <= {} ms; 0 is off)",
                                                                 vm.connect_wait_ms, kMaxTimeout.count())});
  }
  if (vm.queue_size == 0 || vm.queue_size > virtio::kMaxQueueSize || !base::is_power_of_two(vm.queue_size)) {
    errors->push_back(
        {vm_field(vm, "queue_size"),
         fmt::format("{} is invalid (must be a power of two between 1 and {})", vm.queue_size, virtio::kMaxQueueSize)});
  }
  if (vm.groups.empty()) {
    errors->push_back({vm_field(vm, "groups"), "must name at least one group"});
  }
  for (const auto& group : vm.groups) {
    if (group.empty()) errors->push_back({vm_field(vm, "groups"), "has an empty group name"});
  }
  check_socket_path(vm_field(vm, "socket"), vm.socket_path, kMaxUnixPathLength, "in an AF_UNIX address", errors);
  validate_forwarding(vm, errors);
  if (vm.forward_cid && vm.uds_path.empty()) return;  // the vsock backend has no uds-path
  check_socket_path(vm_field(vm, "uds_path"), vm.uds_path, kMaxUdsPathLength,
                    "in an AF_UNIX address once '_<port>' (up to 11 bytes) is appended", errors);
}

namespace {

// The budget must give every connection of the cap its floor (see vsock/connection/credit_budget.h).
void check_tx_memory_limit(const VmConfig& vm, const RuntimeOptions& runtime, ConfigErrors* errors) {
  if (vm.tx_memory_limit > kMaxTxMemoryLimit) {
    errors->push_back({vm_field(vm, "tx_memory_limit"),
                       fmt::format("{} is out of range (must be <= {}; 0 derives it from --max-connections)",
                                   vm.tx_memory_limit, kMaxTxMemoryLimit)});
    return;
  }
  if (vm.tx_buffer_size == 0 || runtime.max_connections == 0) return;  // reported on their own
  std::string error;
  if (!vsock::derive_credit_budget(vm.tx_buffer_size, vm.tx_memory_limit, runtime.max_connections, &error)) {
    errors->push_back({vm_field(vm, "tx_memory_limit"), error});
  }
}

}  // namespace

void validate_config(const DaemonConfig& config, ConfigErrors* errors) {
  if (config.vms.empty()) {
    errors->push_back({"", "no VM configured: use --guest-cid/--socket/--uds-path, --vm or --config"});
  }
  std::map<uint64_t, std::string> cids;
  std::map<std::string, std::string> paths;
  std::map<uint32_t, std::string> listen_ports;  // every VM's listeners bind (VMADDR_CID_ANY, port)
  for (const VmConfig& vm : config.vms) {
    for (const uint32_t port : vm.forward_listen) {
      const std::string field = vm_field(vm, "forward_listen");
      if (auto [it, inserted] = listen_ports.emplace(port, field); !inserted) {
        errors->push_back({field, fmt::format("port {} is already used by {}", port, it->second)});
      }
    }
    validate_vm(vm, errors);
    check_tx_memory_limit(vm, config.runtime, errors);
    const std::string cid_field = vm_field(vm, "guest_cid");
    if (auto [it, inserted] = cids.emplace(vm.guest_cid, cid_field); !inserted) {
      errors->push_back({cid_field, fmt::format("CID {} is already used by {}", vm.guest_cid, it->second)});
    }
    // One path may serve one role only: the socket and uds-path of one VM clash too.
    for (const auto& [key, path] : {std::pair{"socket", &vm.socket_path}, std::pair{"uds_path", &vm.uds_path}}) {
      if (path->empty()) continue;
      const std::string field = vm_field(vm, key);
      if (auto [it, inserted] = paths.emplace(normalized_path(*path), field); !inserted) {
        errors->push_back({field, fmt::format("'{}' is already used by {}", *path, it->second)});
      }
    }
  }
  check_runtime(config.runtime, errors);
}

}  // namespace vhost_vsock::daemon
