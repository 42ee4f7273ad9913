// The vsock backend's keys (forward-cid, forward-listen) in every form:
// parsing, the checks, the command-line flags and a reload.
#include <gtest/gtest.h>

#include <algorithm>
#include <string>
#include <vector>

#include "daemon/cli.h"
#include "daemon/config.h"
#include "daemon/config_reload.h"
#include "testing/temp_dir.h"

namespace vhost_vsock::daemon {
namespace {

using vhost_vsock::testing::TempDir;

::testing::AssertionResult has_error(const ConfigErrors& errors, const std::string& field, const std::string& needle) {
  for (const auto& e : errors) {
    if (e.field == field && e.message.find(needle) != std::string::npos) return ::testing::AssertionSuccess();
  }
  auto failure = ::testing::AssertionFailure() << "no error for " << field << " containing '" << needle << "' in:";
  for (const auto& e : errors) failure << "\n  " << e.to_string();
  return failure;
}

ConfigErrors spec_errors(const std::string& spec) {
  VmConfig vm;
  ConfigErrors errors;
  if (parse_vm_spec(spec, 0, &vm, &errors)) validate_vm(vm, &errors);
  return errors;
}

bool has_line(const CliOutcome& outcome, const std::string& needle) {
  return std::any_of(outcome.errors.begin(), outcome.errors.end(),
                     [&](const std::string& line) { return line.find(needle) != std::string::npos; });
}

TEST(ForwardPorts, SplitOnPlusAndRejectJunk) {
  std::vector<uint32_t> ports;
  std::string error;
  ASSERT_TRUE(parse_forward_ports("9001+9002+1", &ports, &error)) << error;
  EXPECT_EQ(ports, (std::vector<uint32_t>{9001, 9002, 1}));
  for (const char* bad : {"", "9001+", "+9001", "9001++9002", "90x1", "4294967295", "4294967296", "-1"}) {
    EXPECT_FALSE(parse_forward_ports(bad, &ports, &error)) << bad;
  }
  EXPECT_FALSE(parse_forward_ports("9001+9001", &ports, &error));
  EXPECT_NE(error.find("port 9001 is listed twice"), std::string::npos) << error;
}

TEST(ForwardKeys, VmSpecTakesBothSpellingsInsteadOfUdsPath) {
  TempDir dir;
  VmConfig vm;
  ConfigErrors errors;
  ASSERT_TRUE(parse_vm_spec("guest-cid=4,socket=" + dir.file("s") + ",forward-cid=1,forward_listen=9001+9002", 0, &vm,
                            &errors));
  validate_vm(vm, &errors);
  EXPECT_TRUE(errors.empty()) << errors.front().to_string();
  EXPECT_EQ(vm.forward_cid, 1u);
  EXPECT_EQ(vm.forward_listen, (std::vector<uint32_t>{9001, 9002}));
  EXPECT_TRUE(vm.uds_path.empty());
}

TEST(ForwardKeys, InvalidCombinationsAreNamed) {
  EXPECT_TRUE(has_error(spec_errors("socket=/tmp/s,uds-path=/tmp/u,forward-cid=1"), "vm[0].forward_cid",
                        "cannot be combined with vm[0].uds_path"));
  EXPECT_TRUE(has_error(spec_errors("socket=/tmp/s,uds-path=/tmp/u,forward-listen=9001"), "vm[0].forward_listen",
                        "needs vm[0].forward_cid"));
  EXPECT_TRUE(has_error(spec_errors("socket=/tmp/s,forward-cid=4294967295"), "vm[0].forward_cid", "VMADDR_CID_ANY"));
  EXPECT_TRUE(has_error(spec_errors("socket=/tmp/s"), "vm[0].uds_path", "required (or vm[0].forward_cid"));
  EXPECT_TRUE(has_error(spec_errors("socket=/tmp/s,forward-cid=one"), "vm[0].forward_cid", "not a number"));
  EXPECT_TRUE(has_error(spec_errors("socket=/tmp/s,forward-cid=1,forward-listen=9001+x"), "vm[0].forward_listen",
                        "not a list of ports"));
}

TEST(ForwardKeys, YamlTakesBothSpellingsAndAListenPortBelongsToOneVm) {
  TempDir dir;
  const std::string yaml =
      "vms:\n  - guest_cid: 3\n    socket: " + dir.file("s3") +
      "\n    forward-cid: 1\n    forward-listen: 9001+9002\n  - guest_cid: 4\n    socket: " + dir.file("s4") +
      "\n    forward_cid: 2\n    forward_listen: 9002\n";
  DaemonConfig config;
  ConfigErrors errors;
  ASSERT_TRUE(parse_yaml_config(yaml, &config.vms, &errors)) << errors.front().to_string();
  ASSERT_EQ(config.vms.size(), 2u);
  EXPECT_EQ(config.vms[0].forward_listen, (std::vector<uint32_t>{9001, 9002}));
  EXPECT_EQ(config.vms[1].forward_cid, 2u);
  validate_config(config, &errors);
  EXPECT_TRUE(has_error(errors, "vms[1].forward_listen", "port 9002 is already used by vms[0].forward_listen"));
  EXPECT_EQ(errors.size(), 1u);
}

TEST(ForwardFlags, SingleVmFormAndTheSandboxFlag) {
  TempDir dir;
  auto outcome = parse_command_line(
      {"--guest-cid", "5", "--socket", dir.file("s"), "--forward-cid", "1", "--forward-listen", "9001+9002"});
  ASSERT_TRUE(outcome.config) << ::testing::PrintToString(outcome.errors);
  ASSERT_EQ(outcome.config->vms.size(), 1u);
  EXPECT_EQ(outcome.config->vms[0].forward_cid, 1u);
  EXPECT_EQ(outcome.config->vms[0].forward_listen, (std::vector<uint32_t>{9001, 9002}));
  EXPECT_TRUE(outcome.config->sandbox.vsock_forwarding);

  auto hybrid = parse_command_line({"--socket", dir.file("s"), "--uds-path", dir.file("u")});
  ASSERT_TRUE(hybrid.config);
  EXPECT_FALSE(hybrid.config->sandbox.vsock_forwarding) << "AF_VSOCK allowed without forwarding";

  auto both = parse_command_line({"--socket", dir.file("s"), "--uds-path", dir.file("u"), "--forward-cid", "1"});
  EXPECT_FALSE(both.config);
  EXPECT_TRUE(has_line(both, "error: --forward-cid: cannot be combined with --uds-path"))
      << ::testing::PrintToString(both.errors);
  auto neither = parse_command_line({"--socket", dir.file("s")});
  EXPECT_TRUE(has_line(neither, "error: --uds-path: required")) << ::testing::PrintToString(neither.errors);
  auto bad_port = parse_command_line({"--socket", dir.file("s"), "--forward-cid", "1", "--forward-listen", "x"});
  EXPECT_TRUE(has_line(bad_port, "error: --forward-listen: 'x' is not a list of ports"))
      << ::testing::PrintToString(bad_port.errors);
}

TEST(ForwardFlags, HelpListsThem) {
  auto outcome = parse_command_line({"--help"});
  EXPECT_NE(outcome.output.find("--forward-cid"), std::string::npos);
  EXPECT_NE(outcome.output.find("--forward-listen"), std::string::npos);
}

TEST(ForwardReload, KeysAreNamedWhenTheyChange) {
  VmConfig before;
  VmConfig after = before;
  after.forward_cid = 1;
  after.forward_listen = {9001};
  EXPECT_EQ(changed_vm_keys(before, after), (std::vector<std::string>{"forward_cid", "forward_listen"}));
}

TEST(ForwardReload, AddingForwardingUnderAFilterWithoutAfVsockIsRejected) {
  TempDir dir;
  dir.write("vms.yaml", "vms:\n  - guest_cid: 3\n    socket: " + dir.file("s3") + "\n    forward_cid: 1\n");
  DaemonConfig running;
  running.config_file = dir.file("vms.yaml");
  running.sandbox.seccomp = SeccompMode::kKill;
  DaemonConfig next;
  ConfigErrors errors;
  std::vector<std::string> warnings;
  EXPECT_FALSE(reload_config_file(running, &next, &errors, &warnings));
  EXPECT_TRUE(has_error(errors, "forward_cid", "needs a restart"));

  running.sandbox.vsock_forwarding = true;  // started with forwarding: the filter allows it
  errors.clear();
  EXPECT_TRUE(reload_config_file(running, &next, &errors, &warnings)) << errors.front().to_string();
  running.sandbox = {};  // no filter at all
  errors.clear();
  EXPECT_TRUE(reload_config_file(running, &next, &errors, &warnings)) << errors.front().to_string();
}

}  // namespace
}  // namespace vhost_vsock::daemon
