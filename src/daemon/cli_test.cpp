#include "daemon/cli.h"

#include <gtest/gtest.h>

#include <algorithm>

#include "testing/temp_dir.h"

namespace vhost_vsock::daemon {
namespace {

using vhost_vsock::testing::TempDir;

bool has_line(const CliOutcome& outcome, const std::string& needle) {
  return std::any_of(outcome.errors.begin(), outcome.errors.end(),
                     [&](const std::string& line) { return line.find(needle) != std::string::npos; });
}

#define EXPECT_USAGE_ERROR(outcome, needle)                                                   \
  do {                                                                                        \
    EXPECT_FALSE((outcome).config.has_value());                                               \
    EXPECT_EQ((outcome).exit_code, kExitUsage);                                               \
    EXPECT_TRUE(has_line((outcome), (needle))) << ::testing::PrintToString((outcome).errors); \
  } while (0)

TEST(Cli, SingleVmFlags) {
  TempDir dir;
  auto outcome = parse_command_line({"--guest-cid", "5", "--socket", dir.file("s"), "--uds-path", dir.file("u"),
                                     "--tx-buffer-size=32768", "--queue-size=256", "--groups=a+b"});
  ASSERT_TRUE(outcome.config) << ::testing::PrintToString(outcome.errors);
  ASSERT_EQ(outcome.config->vms.size(), 1u);
  const VmConfig& vm = outcome.config->vms[0];
  EXPECT_EQ(vm.guest_cid, 5u);
  EXPECT_EQ(vm.socket_path, dir.file("s"));
  EXPECT_EQ(vm.uds_path, dir.file("u"));
  EXPECT_EQ(vm.tx_buffer_size, 32768u);
  EXPECT_EQ(vm.queue_size, 256u);
  EXPECT_EQ(vm.groups, (std::vector<std::string>{"a", "b"}));
}

TEST(Cli, SingleVmDefaultsMatchVhostDeviceVsock) {
  TempDir dir;
  auto outcome = parse_command_line({"--socket=" + dir.file("s"), "--uds-path=" + dir.file("u")});
  ASSERT_TRUE(outcome.config) << ::testing::PrintToString(outcome.errors);
  const VmConfig& vm = outcome.config->vms[0];
  EXPECT_EQ(vm.guest_cid, 3u);
  EXPECT_EQ(vm.tx_buffer_size, 262144u);  // ours: Linux's default, not vhost-device-vsock's 64 KiB
  EXPECT_EQ(vm.queue_size, 1024u);
  EXPECT_EQ(vm.groups, (std::vector<std::string>{"default"}));
  const RuntimeOptions& runtime = outcome.config->runtime;
  EXPECT_EQ(runtime.log_level, LogLevel::kInfo);
  EXPECT_EQ(runtime.max_connections, kDefaultMaxConnections);
  EXPECT_EQ(runtime.handshake_timeout.count(), 5000);
  EXPECT_EQ(runtime.request_timeout.count(), 2000);
  EXPECT_EQ(runtime.shutdown_timeout.count(), 2000);
}

// Connect-wait is ours: off unless asked for, in all three forms.
TEST(Cli, ConnectWaitInEveryForm) {
  TempDir dir;
  auto single = parse_command_line({"--socket", dir.file("s"), "--uds-path", dir.file("u"), "--connect-wait", "3000"});
  ASSERT_TRUE(single.config) << ::testing::PrintToString(single.errors);
  EXPECT_EQ(single.config->vms[0].connect_wait_ms, 3000u);

  auto vms = parse_command_line(
      {"--vm", "guest-cid=3,socket=" + dir.file("a") + ",uds-path=" + dir.file("b") + ",connect-wait=250", "--vm",
       "guest-cid=4,socket=" + dir.file("c") + ",uds-path=" + dir.file("d")});
  ASSERT_TRUE(vms.config) << ::testing::PrintToString(vms.errors);
  EXPECT_EQ(vms.config->vms[0].connect_wait_ms, 250u);
  EXPECT_EQ(vms.config->vms[1].connect_wait_ms, 0u) << "off by default";

  const std::string yaml = dir.write("vms.yaml", "vms:\n  - guest_cid: 3\n    socket: " + dir.file("e") +
                                                     "\n    uds_path: " + dir.file("f") + "\n    connect_wait: 100\n");
  auto file = parse_command_line({"--config", yaml});
  ASSERT_TRUE(file.config) << ::testing::PrintToString(file.errors);
  EXPECT_EQ(file.config->vms[0].connect_wait_ms, 100u);

  EXPECT_USAGE_ERROR(
      parse_command_line({"--socket", dir.file("s"), "--uds-path", dir.file("u"), "--connect-wait", "3600001"}),
      "--connect-wait: 3600001 is out of range");
  EXPECT_USAGE_ERROR(
      parse_command_line({"--socket", dir.file("s"), "--uds-path", dir.file("u"), "--connect-wait", "soon"}),
      "--connect-wait");
}

// Busy polling is ours (vhost-device-vsock has no such flag): off unless
// asked for; --poll-us is global, the poll-us key sets one VM's value.
TEST(Cli, PollUsIsGlobalWithAPerVmKeyAndCapped) {
  TempDir dir;
  auto off = parse_command_line({"--socket", dir.file("s"), "--uds-path", dir.file("u")});
  ASSERT_TRUE(off.config) << ::testing::PrintToString(off.errors);
  EXPECT_EQ(off.config->runtime.poll_us, 0u);
  EXPECT_FALSE(off.config->vms[0].poll_us.has_value());
  EXPECT_EQ(off.config->vms[0].poll_us.value_or(off.config->runtime.poll_us), 0u);

  auto single = parse_command_line({"--socket", dir.file("s"), "--uds-path", dir.file("u"), "--poll-us", "50"});
  ASSERT_TRUE(single.config) << ::testing::PrintToString(single.errors);
  EXPECT_EQ(single.config->runtime.poll_us, 50u);
  EXPECT_EQ(single.config->vms[0].poll_us.value_or(single.config->runtime.poll_us), 50u);

  auto vms = parse_command_line({"--poll-us", "20", "--vm",
                                 "guest-cid=3,socket=" + dir.file("a") + ",uds-path=" + dir.file("b") + ",poll-us=0",
                                 "--vm", "guest-cid=4,socket=" + dir.file("c") + ",uds-path=" + dir.file("d")});
  ASSERT_TRUE(vms.config) << ::testing::PrintToString(vms.errors);
  EXPECT_EQ(vms.config->vms[0].poll_us.value_or(vms.config->runtime.poll_us), 0u) << "the key wins";
  EXPECT_EQ(vms.config->vms[1].poll_us.value_or(vms.config->runtime.poll_us), 20u) << "the flag's value";

  for (const char* key : {"poll_us", "poll-us"}) {
    const std::string yaml = dir.write("vms.yaml", "vms:\n  - guest_cid: 3\n    socket: " + dir.file("e") +
                                                       "\n    uds_path: " + dir.file("f") + "\n    " + key + ": 75\n");
    auto file = parse_command_line({"--config", yaml});
    ASSERT_TRUE(file.config) << ::testing::PrintToString(file.errors);
    EXPECT_EQ(file.config->vms[0].poll_us, 75u) << key;
  }

  EXPECT_USAGE_ERROR(
      parse_command_line({"--socket", dir.file("s"), "--uds-path", dir.file("u"), "--poll-us", "1000001"}),
      "error: --poll-us: 1000001 is out of range (must be <= 1000000)");
  EXPECT_USAGE_ERROR(parse_command_line({"--socket", dir.file("s"), "--uds-path", dir.file("u"), "--poll-us", "5ms"}),
                     "error: --poll-us: '5ms' is not a number");
  EXPECT_USAGE_ERROR(parse_command_line({"--vm", "guest-cid=3,socket=" + dir.file("a") + ",uds-path=" + dir.file("b") +
                                                     ",poll-us=2000000"}),
                     "vm[0].poll_us: 2000000 is out of range");
}

TEST(Cli, TxMemoryLimitInEveryFormAndRefusedWhenTooSmallForTheCap) {
  TempDir dir;
  auto single =
      parse_command_line({"--socket", dir.file("s"), "--uds-path", dir.file("u"), "--tx-memory-limit", "8589934592"});
  ASSERT_TRUE(single.config) << ::testing::PrintToString(single.errors);
  EXPECT_EQ(single.config->vms[0].tx_memory_limit, 8589934592u);

  auto vms = parse_command_line(
      {"--vm", "guest-cid=3,socket=" + dir.file("a") + ",uds-path=" + dir.file("b") + ",tx-memory-limit=1048576",
       "--max-connections", "256"});
  ASSERT_TRUE(vms.config) << ::testing::PrintToString(vms.errors);
  EXPECT_EQ(vms.config->vms[0].tx_memory_limit, 1048576u);

  const std::string yaml =
      dir.write("vms.yaml", "vms:\n  - guest_cid: 3\n    socket: " + dir.file("e") +
                                "\n    uds_path: " + dir.file("f") + "\n    tx_memory_limit: 134217728\n");
  auto file = parse_command_line({"--config", yaml});
  ASSERT_TRUE(file.config) << ::testing::PrintToString(file.errors);
  EXPECT_EQ(file.config->vms[0].tx_memory_limit, 134217728u);

  // 1 MiB cannot give 16384 connections a page each.
  EXPECT_USAGE_ERROR(
      parse_command_line({"--socket", dir.file("s"), "--uds-path", dir.file("u"), "--tx-memory-limit", "1048576"}),
      "raise the limit to 67108864 or lower --max-connections");
  EXPECT_USAGE_ERROR(parse_command_line({"--socket", dir.file("s"), "--uds-path", dir.file("u"), "--tx-memory-limit",
                                         "1099511627777"}),
                     "out of range");
}

TEST(Cli, SingleVmNeedsSocketAndUdsPath) {
  TempDir dir;
  auto outcome = parse_command_line({"--guest-cid", "3", "--uds-path", dir.file("u")});
  EXPECT_USAGE_ERROR(outcome, "error: --socket: required");
  outcome = parse_command_line({"--socket", dir.file("s")});
  EXPECT_USAGE_ERROR(outcome, "error: --uds-path: required");
}

TEST(Cli, SingleVmMalformedNumbersNameTheFlag) {
  TempDir dir;
  auto outcome = parse_command_line(
      {"--guest-cid", "x3", "--socket", dir.file("s"), "--uds-path", dir.file("u"), "--queue-size", "big"});
  EXPECT_USAGE_ERROR(outcome, "error: --guest-cid: 'x3' is not a number");
  EXPECT_USAGE_ERROR(outcome, "error: --queue-size: 'big' is not a number");
}

TEST(Cli, RepeatedVmOptionWithBothKeySpellings) {
  TempDir dir;
  auto outcome = parse_command_line(
      {"--vm", "guest-cid=3,socket=" + dir.file("s3") + ",uds-path=" + dir.file("u3") + ",groups=group1+groupA", "--vm",
       "guest_cid=4,socket=" + dir.file("s4") + ",uds_path=" + dir.file("u4") +
           ",tx_buffer_size=32768,queue_size=256"});
  ASSERT_TRUE(outcome.config) << ::testing::PrintToString(outcome.errors);
  ASSERT_EQ(outcome.config->vms.size(), 2u);
  EXPECT_EQ(outcome.config->vms[0].guest_cid, 3u);
  EXPECT_EQ(outcome.config->vms[0].groups, (std::vector<std::string>{"group1", "groupA"}));
  EXPECT_EQ(outcome.config->vms[1].guest_cid, 4u);
  EXPECT_EQ(outcome.config->vms[1].uds_path, dir.file("u4"));
  EXPECT_EQ(outcome.config->vms[1].tx_buffer_size, 32768u);
  EXPECT_EQ(outcome.config->vms[1].queue_size, 256u);
  EXPECT_EQ(outcome.config->vms[1].index, 1u);
}

TEST(Cli, ReservedCidInSecondVmIsNamedExactly) {
  TempDir dir;
  auto outcome = parse_command_line({"--vm", "guest-cid=3,socket=" + dir.file("s3") + ",uds-path=" + dir.file("u3"),
                                     "--vm", "guest-cid=2,socket=" + dir.file("s2") + ",uds-path=" + dir.file("u2")});
  ASSERT_FALSE(outcome.config);
  EXPECT_EQ(outcome.exit_code, kExitUsage);
  ASSERT_EQ(outcome.errors.size(), 1u) << ::testing::PrintToString(outcome.errors);
  EXPECT_EQ(outcome.errors[0], "error: vm[1].guest_cid: 2 is reserved (must be >= 3 and < 4294967295)");
}

TEST(Cli, DuplicatesAcrossVmOptions) {
  TempDir dir;
  auto outcome = parse_command_line({"--vm", "guest-cid=3,socket=" + dir.file("s") + ",uds-path=" + dir.file("u3"),
                                     "--vm", "guest-cid=3,socket=" + dir.file("s") + ",uds-path=" + dir.file("u3")});
  EXPECT_USAGE_ERROR(outcome, "vm[1].guest_cid: CID 3 is already used by vm[0].guest_cid");
  EXPECT_USAGE_ERROR(outcome, "vm[1].socket: '" + dir.file("s") + "' is already used by vm[0].socket");
  EXPECT_USAGE_ERROR(outcome, "vm[1].uds_path: '" + dir.file("u3") + "' is already used by vm[0].uds_path");
}

TEST(Cli, UnknownVmKey) {
  TempDir dir;
  auto outcome = parse_command_line({"--vm", "guest-cid=3,socket=/s,uds-path=/u,queue-sizes=8"});
  EXPECT_USAGE_ERROR(outcome, "error: vm[0]: unknown key 'queue_sizes'");
}

TEST(Cli, ConfigFile) {
  TempDir dir;
  const std::string path = dir.write(
      "vms.yaml", "vms:\n  - guest_cid: 7\n    socket: " + dir.file("s") + "\n    uds_path: " + dir.file("u") + "\n");
  auto outcome = parse_command_line({"--config", path, "--log-level", "debug"});
  ASSERT_TRUE(outcome.config) << ::testing::PrintToString(outcome.errors);
  ASSERT_EQ(outcome.config->vms.size(), 1u);
  EXPECT_EQ(outcome.config->vms[0].guest_cid, 7u);
  EXPECT_EQ(outcome.config->runtime.log_level, LogLevel::kDebug);
}

TEST(Cli, ConfigFileErrorsAreUsageErrors) {
  TempDir dir;
  const std::string path = dir.write(
      "vms.yaml", "vms:\n  - guest_cid: 1\n    socket: " + dir.file("s") + "\n    uds_path: " + dir.file("u") + "\n");
  EXPECT_USAGE_ERROR(parse_command_line({"--config", path}), "error: vms[0].guest_cid: 1 is reserved");
  EXPECT_USAGE_ERROR(parse_command_line({"--config", dir.file("none.yaml")}), "error: --config: cannot open");
}

TEST(Cli, ExactlyOneForm) {
  TempDir dir;
  const std::string vm = "guest-cid=3,socket=" + dir.file("s") + ",uds-path=" + dir.file("u");
  const std::string yaml = dir.write("c.yaml", "vms:\n  - {socket: /s, uds_path: /u}\n");
  EXPECT_USAGE_ERROR(parse_command_line({"--vm", vm, "--config", yaml}), "exactly one form");
  EXPECT_USAGE_ERROR(parse_command_line({"--vm", vm, "--guest-cid", "4"}), "exactly one form");
  EXPECT_USAGE_ERROR(parse_command_line({"--config", yaml, "--socket", dir.file("s2")}), "exactly one form");
  EXPECT_USAGE_ERROR(parse_command_line({}), "no VM configured");
  EXPECT_USAGE_ERROR(parse_command_line({"--log-level", "info"}), "no VM configured");
}

TEST(Cli, RuntimeOptions) {
  TempDir dir;
  auto outcome = parse_command_line({"--socket", dir.file("s"), "--uds-path", dir.file("u"), "--log-level", "trace",
                                     "--max-connections", "128", "--handshake-timeout", "100", "--request-timeout",
                                     "200", "--shutdown-timeout", "300"});
  ASSERT_TRUE(outcome.config) << ::testing::PrintToString(outcome.errors);
  const RuntimeOptions& runtime = outcome.config->runtime;
  EXPECT_EQ(runtime.log_level, LogLevel::kTrace);
  EXPECT_EQ(runtime.max_connections, 128u);
  EXPECT_EQ(runtime.handshake_timeout.count(), 100);
  EXPECT_EQ(runtime.request_timeout.count(), 200);
  EXPECT_EQ(runtime.shutdown_timeout.count(), 300);
}

TEST(Cli, BadRuntimeOptions) {
  TempDir dir;
  const std::vector<std::string> vm{"--socket", dir.file("s"), "--uds-path", dir.file("u")};
  auto with = [&](std::vector<std::string> extra) {
    extra.insert(extra.end(), vm.begin(), vm.end());
    return parse_command_line(extra);
  };
  EXPECT_USAGE_ERROR(with({"--log-level", "loud"}), "error: --log-level: 'loud' is not one of");
  EXPECT_USAGE_ERROR(with({"--max-connections", "0"}), "error: --max-connections: 0 is out of range");
  EXPECT_USAGE_ERROR(with({"--max-connections", "many"}), "error: --max-connections: 'many' is not a number");
  EXPECT_USAGE_ERROR(with({"--handshake-timeout", "0"}), "error: --handshake-timeout: 0 ms is out of range");
  EXPECT_USAGE_ERROR(with({"--request-timeout", "99999999"}), "error: --request-timeout: 99999999 is out of range");
  EXPECT_USAGE_ERROR(with({"--shutdown-timeout", "1s"}), "error: --shutdown-timeout: '1s' is not a number");
}

TEST(Cli, UnknownFlagIsAUsageError) {
  auto outcome = parse_command_line({"--guest-cidd", "3"});
  EXPECT_FALSE(outcome.config);
  EXPECT_EQ(outcome.exit_code, kExitUsage);
  ASSERT_FALSE(outcome.errors.empty());
  EXPECT_EQ(outcome.errors[0].rfind("error: ", 0), 0u);
}

TEST(Cli, HelpAndVersion) {
  auto help = parse_command_line({"--help"});
  EXPECT_FALSE(help.config);
  EXPECT_EQ(help.exit_code, kExitOk);
  for (const char* flag : {"--guest-cid", "--socket", "--uds-path", "--tx-buffer-size", "--queue-size", "--groups",
                           "--vm", "--config", "--log-level", "--max-connections", "--handshake-timeout",
                           "--request-timeout", "--shutdown-timeout", "--poll-us", "--version"}) {
    EXPECT_NE(help.output.find(flag), std::string::npos) << flag;
  }
  auto version = parse_command_line({"--version"});
  EXPECT_FALSE(version.config);
  EXPECT_EQ(version.exit_code, kExitOk);
  EXPECT_EQ(version.output, version_string() + "\n");
  EXPECT_EQ(version_string().rfind("vhost-user-vsock ", 0), 0u);
  EXPECT_TRUE(version.errors.empty());
}

}  // namespace
}  // namespace vhost_vsock::daemon
