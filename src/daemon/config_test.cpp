#include "daemon/config.h"

#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <string>
#include <string_view>
#include <vector>

#include "testing/temp_dir.h"

namespace vhost_vsock::daemon {
namespace {

using vhost_vsock::testing::TempDir;

std::vector<std::string> messages(const ConfigErrors& errors) {
  std::vector<std::string> out;
  for (const auto& e : errors) out.push_back(e.to_string());
  return out;
}

// True when some error is about `field` and its text contains `needle`.
bool has_error(const ConfigErrors& errors, const std::string& field, const std::string& needle) {
  return std::any_of(errors.begin(), errors.end(), [&](const ConfigError& e) {
    return e.field == field && e.message.find(needle) != std::string::npos;
  });
}

// has_error, listing all the errors when it fails; `errors` is evaluated once.
::testing::AssertionResult error_listed(const ConfigErrors& errors, const std::string& field,
                                        const std::string& needle) {
  if (has_error(errors, field, needle)) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << "no error for " << field << " containing '" << needle << "' in "
                                       << ::testing::PrintToString(messages(errors));
}

#define EXPECT_ERROR(errors, field, needle) EXPECT_TRUE(error_listed((errors), (field), (needle)))

VmConfig valid_vm(const TempDir& dir, uint64_t cid = 3) {
  VmConfig vm;
  vm.guest_cid = cid;
  vm.socket_path = dir.file("s" + std::to_string(cid));
  vm.uds_path = dir.file("u" + std::to_string(cid));
  vm.source = VmSource::kVmOption;
  vm.index = 0;
  return vm;
}

// The errors of a --vm spec (entry `index`) that must be rejected.
ConfigErrors rejected_vm_spec(std::string_view spec, size_t index = 0) {
  ConfigErrors errors;
  VmConfig vm;
  EXPECT_FALSE(parse_vm_spec(spec, index, &vm, &errors)) << spec;
  return errors;
}

// The errors of a YAML config that must be rejected; `vms` gets what was parsed.
ConfigErrors rejected_yaml(std::string_view yaml, std::vector<VmConfig>* vms = nullptr) {
  std::vector<VmConfig> parsed;
  ConfigErrors errors;
  EXPECT_FALSE(parse_yaml_config(yaml, &parsed, &errors)) << yaml;
  if (vms != nullptr) *vms = std::move(parsed);
  return errors;
}

ConfigErrors validate_one(const VmConfig& vm) {
  ConfigErrors errors;
  validate_vm(vm, &errors);
  return errors;
}

// ---- numbers and groups ----

TEST(ParseUnsigned, AcceptsDecimalWithinMax) {
  uint64_t value = 0;
  std::string error;
  EXPECT_TRUE(parse_unsigned("65536", 100000, &value, &error));
  EXPECT_EQ(value, 65536u);
  EXPECT_TRUE(parse_unsigned("+7", 10, &value, &error));
  EXPECT_EQ(value, 7u);
  EXPECT_TRUE(parse_unsigned("18446744073709551615", UINT64_MAX, &value, &error));
  EXPECT_EQ(value, UINT64_MAX);
}

TEST(ParseUnsigned, RejectsMalformedAndTooLarge) {
  uint64_t value = 42;
  std::string error;
  for (const char* bad : {"", "+", "-1", "12abc", " 12", "12 ", "0x10", "1e3", "abc"}) {
    EXPECT_FALSE(parse_unsigned(bad, UINT64_MAX, &value, &error)) << bad;
    EXPECT_FALSE(error.empty());
  }
  EXPECT_FALSE(parse_unsigned("18446744073709551616", UINT64_MAX, &value, &error));
  EXPECT_NE(error.find("out of range"), std::string::npos) << error;
  EXPECT_FALSE(parse_unsigned("11", 10, &value, &error));
  EXPECT_NE(error.find("must be <= 10"), std::string::npos) << error;
  EXPECT_EQ(value, 42u) << "output untouched on failure";
}

TEST(ParseGroups, SplitsOnPlusAndRejectsEmptyNames) {
  std::vector<std::string> groups;
  std::string error;
  ASSERT_TRUE(parse_groups("group1+groupA", &groups, &error));
  EXPECT_EQ(groups, (std::vector<std::string>{"group1", "groupA"}));
  ASSERT_TRUE(parse_groups("solo", &groups, &error));
  EXPECT_EQ(groups, (std::vector<std::string>{"solo"}));
  for (const char* bad : {"", "+a", "a+", "a++b"}) {
    EXPECT_FALSE(parse_groups(bad, &groups, &error)) << bad;
  }
}

TEST(LogLevel, ParsesTheFiveNames) {
  LogLevel level = LogLevel::kInfo;
  for (const char* name : {"trace", "debug", "info", "warn", "error"}) {
    ASSERT_TRUE(parse_log_level(name, &level)) << name;
    EXPECT_EQ(log_level_name(level), name);
  }
  EXPECT_FALSE(parse_log_level("verbose", &level));
  EXPECT_FALSE(parse_log_level("INFO", &level));
}

// ---- --vm ----

TEST(VmSpec, DashAndUnderscoreKeysAreEquivalent) {
  ConfigErrors errors;
  VmConfig dashed;
  VmConfig underscored;
  ASSERT_TRUE(parse_vm_spec("guest-cid=7,socket=/a/s,uds-path=/a/u,tx-buffer-size=32768,queue-size=256,groups=g1+g2", 0,
                            &dashed, &errors))
      << ::testing::PrintToString(messages(errors));
  ASSERT_TRUE(parse_vm_spec("guest_cid=7,socket=/a/s,uds_path=/a/u,tx_buffer_size=32768,queue_size=256,groups=g1+g2", 0,
                            &underscored, &errors));
  EXPECT_EQ(dashed, underscored);
  EXPECT_EQ(dashed.guest_cid, 7u);
  EXPECT_EQ(dashed.socket_path, "/a/s");
  EXPECT_EQ(dashed.uds_path, "/a/u");
  EXPECT_EQ(dashed.tx_buffer_size, 32768u);
  EXPECT_EQ(dashed.queue_size, 256u);
  EXPECT_EQ(dashed.groups, (std::vector<std::string>{"g1", "g2"}));
  EXPECT_EQ(dashed.source, VmSource::kVmOption);
}

TEST(VmSpec, OmittedKeysTakeVhostDeviceVsockDefaults) {
  ConfigErrors errors;
  VmConfig vm;
  ASSERT_TRUE(parse_vm_spec("socket=/a/s,uds-path=/a/u", 3, &vm, &errors));
  EXPECT_EQ(vm.guest_cid, 3u);
  EXPECT_EQ(vm.tx_buffer_size, 256u * 1024);  // ours: Linux's default, not vhost-device-vsock's 64 KiB
  EXPECT_EQ(vm.tx_memory_limit, 0u);          // derived from --max-connections
  EXPECT_EQ(vm.queue_size, 1024u);
  EXPECT_EQ(vm.groups, (std::vector<std::string>{"default"}));
  EXPECT_EQ(vm.index, 3u);
}

TEST(VmSpec, ValueKeepsEverythingAfterTheFirstEquals) {
  ConfigErrors errors;
  VmConfig vm;
  ASSERT_TRUE(parse_vm_spec(" socket=/a/x=y,uds-path=/a/u ", 0, &vm, &errors));
  EXPECT_EQ(vm.socket_path, "/a/x=y");
}

TEST(VmSpec, UnknownKeyIsNamedWithTheEntryIndex) {
  const ConfigErrors errors = rejected_vm_spec("guest-cid=3,socket=/s,uds-path=/u,colour=blue", 2);
  EXPECT_ERROR(errors, "vm[2]", "unknown key 'colour'");
}

TEST(VmSpec, RequiredKeysAreReported) {
  const ConfigErrors errors = rejected_vm_spec("guest-cid=3", 1);
  EXPECT_ERROR(errors, "vm[1].socket", "required");
  EXPECT_ERROR(errors, "vm[1].uds_path", "required");
}

TEST(VmSpec, MalformedNumbersNameTheField) {
  const ConfigErrors errors = rejected_vm_spec("guest-cid=three,socket=/s,uds-path=/u,queue-size=1k,tx-buffer-size=-1");
  EXPECT_ERROR(errors, "vm[0].guest_cid", "'three' is not a number");
  EXPECT_ERROR(errors, "vm[0].queue_size", "'1k' is not a number");
  EXPECT_ERROR(errors, "vm[0].tx_buffer_size", "'-1' is not a number");
  EXPECT_ERROR(rejected_vm_spec("socket=/s,uds-path=/u,tx-buffer-size=4294967296"), "vm[0].tx_buffer_size",
               "out of range");
}

TEST(VmSpec, RejectsItemsThatAreNotKeyValueAndRepeatedKeys) {
  EXPECT_ERROR(rejected_vm_spec("socket=/s,uds-path=/u,"), "vm[0]", "is not key=value");
  EXPECT_ERROR(rejected_vm_spec("socket=/s,uds-path=/u,=3"), "vm[0]", "is not key=value");
  EXPECT_ERROR(rejected_vm_spec("socket=/s,uds-path=/u,guest-cid=3,guest_cid=4"), "vm[0].guest_cid", "more than once");
}

// ---- YAML ----

TEST(YamlConfig, ParsesTheVhostDeviceVsockShape) {
  const char* yaml = R"(
vms:
    - guest_cid: 3
      socket: /tmp/vhost3.socket
      uds_path: /tmp/vm3.vsock
      tx_buffer_size: 65536
      queue_size: 1024
      groups: group1+groupA
    - guest_cid: 4
      socket: /tmp/vhost4.socket
      uds_path: /tmp/vm4.vsock
      tx_buffer_size: 32768
      queue_size: 256
      groups: [group2, groupB]
    - socket: /tmp/vhost5.socket
      uds-path: /tmp/vm5.vsock
)";
  std::vector<VmConfig> vms;
  ConfigErrors errors;
  ASSERT_TRUE(parse_yaml_config(yaml, &vms, &errors)) << ::testing::PrintToString(messages(errors));
  ASSERT_EQ(vms.size(), 3u);
  EXPECT_EQ(vms[0].guest_cid, 3u);
  EXPECT_EQ(vms[0].socket_path, "/tmp/vhost3.socket");
  EXPECT_EQ(vms[0].uds_path, "/tmp/vm3.vsock");
  EXPECT_EQ(vms[0].groups, (std::vector<std::string>{"group1", "groupA"}));
  EXPECT_EQ(vms[1].tx_buffer_size, 32768u);
  EXPECT_EQ(vms[1].queue_size, 256u);
  EXPECT_EQ(vms[1].groups, (std::vector<std::string>{"group2", "groupB"}));
  EXPECT_EQ(vms[1].source, VmSource::kConfigFile);
  EXPECT_EQ(vms[1].index, 1u);
  // Defaults, and the dashed spelling.
  EXPECT_EQ(vms[2].guest_cid, kDefaultGuestCid);
  EXPECT_EQ(vms[2].uds_path, "/tmp/vm5.vsock");
  EXPECT_EQ(vms[2].tx_buffer_size, kDefaultTxBufferSize);
  EXPECT_EQ(vms[2].queue_size, kDefaultQueueSize);
  EXPECT_EQ(vms[2].groups, (std::vector<std::string>{"default"}));
}

TEST(YamlConfig, UnknownKeysAreErrors) {
  EXPECT_ERROR(rejected_yaml("vms:\n  - {guest_cid: 3, socket: /s, uds_path: /u, queue_sise: 8}\n"), "vms[0]",
               "unknown key 'queue_sise'");
  std::vector<VmConfig> vms;
  EXPECT_ERROR(rejected_yaml("vms:\n  - {socket: /s, uds_path: /u}\nlog_level: debug\n", &vms), "config",
               "unknown top-level key 'log_level'");
  EXPECT_TRUE(vms.empty());
}

TEST(YamlConfig, WrongTypesNameTheField) {
  const ConfigErrors errors = rejected_yaml(R"(
vms:
  - guest_cid: [3]
    socket: {path: /s}
    uds_path:
    queue_size: lots
)");
  EXPECT_ERROR(errors, "vms[0].guest_cid", "not a list");
  EXPECT_ERROR(errors, "vms[0].socket", "not a mapping");
  EXPECT_ERROR(errors, "vms[0].uds_path", "has no value");
  EXPECT_ERROR(errors, "vms[0].queue_size", "'lots' is not a number");
}

TEST(YamlConfig, RejectsBadDocumentShapes) {
  EXPECT_ERROR(rejected_yaml("vms: [\n"), "config", "invalid YAML");
  for (const char* doc : {"", "- a\n- b\n", "vms: []\n", "vms:\n", "vms: 3\n", "vms:\n  - just-a-string\n"}) {
    EXPECT_FALSE(rejected_yaml(doc).empty()) << doc;
  }
  EXPECT_ERROR(rejected_yaml("vms:\n  - {socket: /s, uds_path: /u, socket: /t}\n"), "vms[0].socket", "more than once");
}

TEST(YamlConfig, LoadsFromFileAndReportsMissingFile) {
  TempDir dir;
  const std::string path = dir.write("c.yaml", "vms:\n  - guest_cid: 9\n    socket: /s\n    uds_path: /u\n");
  std::vector<VmConfig> vms;
  ConfigErrors errors;
  ASSERT_TRUE(load_yaml_config_file(path, &vms, &errors));
  ASSERT_EQ(vms.size(), 1u);
  EXPECT_EQ(vms[0].guest_cid, 9u);
  EXPECT_FALSE(load_yaml_config_file(dir.file("missing.yaml"), &vms, &errors));
  EXPECT_ERROR(errors, "--config", "cannot open");
}

// ---- validation ----

TEST(Validate, AcceptsAValidVm) {
  TempDir dir;
  EXPECT_TRUE(validate_one(valid_vm(dir)).empty()) << ::testing::PrintToString(messages(validate_one(valid_vm(dir))));
}

TEST(Validate, GuestCidMustBeAGuestCid) {
  TempDir dir;
  VmConfig vm = valid_vm(dir);
  vm.index = 1;
  for (uint64_t cid : {uint64_t{0}, uint64_t{1}, uint64_t{2}}) {
    vm.guest_cid = cid;
    auto errors = validate_one(vm);
    ASSERT_EQ(errors.size(), 1u);
    EXPECT_EQ(errors[0].to_string(),
              "vm[1].guest_cid: " + std::to_string(cid) + " is reserved (must be >= 3 and < 4294967295)");
  }
  for (uint64_t cid : {uint64_t{0xFFFFFFFF}, uint64_t{0x100000000}, uint64_t{UINT64_MAX}}) {
    vm.guest_cid = cid;
    EXPECT_ERROR(validate_one(vm), "vm[1].guest_cid", "out of range") << cid;
  }
  vm.guest_cid = 0xFFFFFFFE;
  EXPECT_TRUE(validate_one(vm).empty());
}

TEST(Validate, QueueSizeMustBeAPowerOfTwoUpTo32768) {
  TempDir dir;
  VmConfig vm = valid_vm(dir);
  for (uint32_t size : {1u, 2u, 128u, 1024u, 32768u}) {
    vm.queue_size = size;
    EXPECT_TRUE(validate_one(vm).empty()) << size;
  }
  for (uint32_t size : {0u, 3u, 1000u, 65536u, 4294967295u}) {
    vm.queue_size = size;
    EXPECT_ERROR(validate_one(vm), "vm[0].queue_size", "power of two") << size;
  }
}

TEST(Validate, TxBufferSizeIsCapped) {
  TempDir dir;
  VmConfig vm = valid_vm(dir);
  vm.tx_buffer_size = 1;
  EXPECT_TRUE(validate_one(vm).empty());
  vm.tx_buffer_size = kMaxTxBufferSize;
  EXPECT_TRUE(validate_one(vm).empty());
  vm.tx_buffer_size = 0;
  EXPECT_ERROR(validate_one(vm), "vm[0].tx_buffer_size", "out of range");
  vm.tx_buffer_size = kMaxTxBufferSize + 1;
  EXPECT_ERROR(validate_one(vm), "vm[0].tx_buffer_size", "out of range");
}

// A path of `max_length` bytes in `path` is valid; one byte more is an
// error about `field` containing `needle`.
void expect_path_length_limit(std::string VmConfig::*path, size_t max_length, const std::string& field,
                              const std::string& needle) {
  TempDir dir;
  VmConfig vm = valid_vm(dir);
  const size_t prefix = dir.path().size() + 1;
  vm.*path = dir.file(std::string(max_length - prefix, 'p'));
  ASSERT_EQ((vm.*path).size(), max_length);
  EXPECT_TRUE(validate_one(vm).empty()) << field;
  vm.*path += "p";
  EXPECT_ERROR(validate_one(vm), field, needle);
}

TEST(Validate, UdsPathLeavesRoomForThePortSuffix) {
  ASSERT_EQ(kMaxUdsPathLength, 96u);
  expect_path_length_limit(&VmConfig::uds_path, kMaxUdsPathLength, "vm[0].uds_path", "'_<port>'");
}

TEST(Validate, SocketPathFitsSunPath) {
  ASSERT_EQ(kMaxUnixPathLength, 107u);
  expect_path_length_limit(&VmConfig::socket_path, kMaxUnixPathLength, "vm[0].socket", "at most 107 bytes");
}

TEST(Validate, SocketDirectoryMustExistAndBeADirectory) {
  TempDir dir;
  VmConfig vm = valid_vm(dir);
  vm.socket_path = dir.file("nope/s");
  EXPECT_ERROR(validate_one(vm), "vm[0].socket", "does not exist");
  const std::string file = dir.write("plain", "x");
  vm.socket_path = valid_vm(dir).socket_path;
  vm.uds_path = file + "/u";
  EXPECT_ERROR(validate_one(vm), "vm[0].uds_path", "is not a directory");
  vm.uds_path = "";
  EXPECT_ERROR(validate_one(vm), "vm[0].uds_path", "must not be empty");
}

TEST(Validate, SocketDirectoryMustBeWritable) {
  if (::geteuid() == 0) GTEST_SKIP() << "root may write anywhere";
  TempDir dir;
  ASSERT_EQ(::mkdir(dir.file("ro").c_str(), 0555), 0);
  VmConfig vm = valid_vm(dir);
  vm.socket_path = dir.file("ro/s");
  EXPECT_ERROR(validate_one(vm), "vm[0].socket", "not writable");
}

TEST(Validate, RefusesToReplaceSomethingThatIsNotASocket) {
  TempDir dir;
  VmConfig vm = valid_vm(dir);
  vm.socket_path = dir.write("precious.txt", "data");
  EXPECT_ERROR(validate_one(vm), "vm[0].socket", "not a socket");
  ASSERT_EQ(::mkdir(dir.file("d").c_str(), 0755), 0);
  vm.socket_path = dir.file("d");
  EXPECT_ERROR(validate_one(vm), "vm[0].socket", "not a socket");
  // A stale socket file is fine: the server replaces it.
  vm.socket_path = dir.make_socket_file("stale");
  EXPECT_TRUE(validate_one(vm).empty()) << ::testing::PrintToString(messages(validate_one(vm)));
}

TEST(Validate, FlagFormErrorsUseFlagNames) {
  TempDir dir;
  VmConfig vm = valid_vm(dir);
  vm.source = VmSource::kFlags;
  vm.guest_cid = 1;
  vm.queue_size = 3;
  auto errors = validate_one(vm);
  EXPECT_ERROR(errors, "--guest-cid", "reserved");
  EXPECT_ERROR(errors, "--queue-size", "power of two");
}

TEST(ValidateConfig, DuplicateCidsAcrossVms) {
  TempDir dir;
  DaemonConfig config;
  config.vms = {valid_vm(dir, 3), valid_vm(dir, 4), valid_vm(dir, 5)};
  config.vms[2].guest_cid = 3;
  config.vms[2].socket_path = dir.file("other-s");
  config.vms[2].uds_path = dir.file("other-u");
  for (size_t i = 0; i < config.vms.size(); ++i) config.vms[i].index = i;
  ConfigErrors errors;
  validate_config(config, &errors);
  ASSERT_EQ(errors.size(), 1u) << ::testing::PrintToString(messages(errors));
  EXPECT_EQ(errors[0].to_string(), "vm[2].guest_cid: CID 3 is already used by vm[0].guest_cid");
}

TEST(ValidateConfig, DuplicatePathsAcrossVmsAndRoles) {
  TempDir dir;
  DaemonConfig config;
  config.vms = {valid_vm(dir, 3), valid_vm(dir, 4)};
  config.vms[1].index = 1;
  // Same socket, spelled differently.
  config.vms[1].socket_path = dir.path() + "/./s3";
  ConfigErrors errors;
  validate_config(config, &errors);
  EXPECT_ERROR(errors, "vm[1].socket", "already used by vm[0].socket");

  // uds-path of one VM is the socket of another.
  config.vms[1] = valid_vm(dir, 4);
  config.vms[1].index = 1;
  config.vms[1].uds_path = config.vms[0].socket_path;
  errors.clear();
  validate_config(config, &errors);
  EXPECT_ERROR(errors, "vm[1].uds_path", "already used by vm[0].socket");

  // One VM using one path for both roles.
  config.vms.resize(1);
  config.vms[0].uds_path = config.vms[0].socket_path;
  errors.clear();
  validate_config(config, &errors);
  EXPECT_ERROR(errors, "vm[0].uds_path", "already used by vm[0].socket");
}

TEST(ValidateConfig, RequiresAtLeastOneVm) {
  DaemonConfig config;
  ConfigErrors errors;
  validate_config(config, &errors);
  ASSERT_EQ(errors.size(), 1u);
  EXPECT_NE(errors[0].message.find("no VM configured"), std::string::npos);
}

TEST(ValidateConfig, RuntimeLimitsAreRangeChecked) {
  TempDir dir;
  DaemonConfig config;
  config.vms = {valid_vm(dir)};
  config.runtime.max_connections = 0;
  config.runtime.handshake_timeout = std::chrono::milliseconds(0);
  config.runtime.request_timeout = kMaxTimeout + std::chrono::milliseconds(1);
  config.runtime.shutdown_timeout = std::chrono::milliseconds(1);
  ConfigErrors errors;
  validate_config(config, &errors);
  EXPECT_ERROR(errors, "--max-connections", "out of range");
  EXPECT_ERROR(errors, "--handshake-timeout", "out of range");
  EXPECT_ERROR(errors, "--request-timeout", "out of range");
  EXPECT_FALSE(has_error(errors, "--shutdown-timeout", ""));
}

}  // namespace
}  // namespace vhost_vsock::daemon
