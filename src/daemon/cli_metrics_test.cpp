// --metrics, --metrics-allow-remote, the YAML `metrics` key, --log-format and
// the `connections` command line.
#include <gtest/gtest.h>

#include <algorithm>
#include <fstream>

#include "daemon/cli.h"
#include "daemon/logging.h"
#include "testing/temp_dir.h"

namespace vhost_vsock::daemon {
namespace {

using vhost_vsock::testing::TempDir;

bool has_error(const CliOutcome& outcome, const std::string& needle) {
  return std::any_of(outcome.errors.begin(), outcome.errors.end(),
                     [&](const std::string& line) { return line.find(needle) != std::string::npos; });
}

std::vector<std::string> one_vm(const TempDir& dir, std::vector<std::string> more) {
  std::vector<std::string> args{"--socket", dir.file("s"), "--uds-path", dir.file("u")};
  args.insert(args.end(), more.begin(), more.end());
  return args;
}

TEST(CliMetrics, OffByDefault) {
  TempDir dir;
  const CliOutcome outcome = parse_command_line(one_vm(dir, {}));
  ASSERT_TRUE(outcome.config) << ::testing::PrintToString(outcome.errors);
  EXPECT_FALSE(outcome.config->metrics.address);
  EXPECT_FALSE(outcome.config->sandbox.metrics_server);
  EXPECT_EQ(outcome.config->runtime.log_format, LogFormat::kText);
}

TEST(CliMetrics, LoopbackAddressesAreAccepted) {
  TempDir dir;
  for (const char* text : {"127.0.0.1:9100", "[::1]:9100"}) {
    const CliOutcome outcome = parse_command_line(one_vm(dir, {"--metrics", text}));
    ASSERT_TRUE(outcome.config) << ::testing::PrintToString(outcome.errors);
    ASSERT_TRUE(outcome.config->metrics.address);
    EXPECT_EQ(outcome.config->metrics.address->to_string(), text);
    EXPECT_TRUE(outcome.config->sandbox.metrics_server);
  }
}

TEST(CliMetrics, NonLoopbackIsRefusedUnlessAllowed) {
  TempDir dir;
  const CliOutcome refused = parse_command_line(one_vm(dir, {"--metrics", "0.0.0.0:9100"}));
  EXPECT_FALSE(refused.config);
  EXPECT_EQ(refused.exit_code, kExitUsage);
  EXPECT_TRUE(has_error(refused, "--metrics-allow-remote")) << ::testing::PrintToString(refused.errors);
  const CliOutcome allowed = parse_command_line(one_vm(dir, {"--metrics", "0.0.0.0:9100", "--metrics-allow-remote"}));
  ASSERT_TRUE(allowed.config) << ::testing::PrintToString(allowed.errors);
  EXPECT_FALSE(allowed.config->metrics.address->loopback);
}

TEST(CliMetrics, MalformedAddressNamesTheFlag) {
  TempDir dir;
  const CliOutcome outcome = parse_command_line(one_vm(dir, {"--metrics", "localhost:9100"}));
  EXPECT_FALSE(outcome.config);
  EXPECT_TRUE(has_error(outcome, "--metrics: 'localhost:9100'")) << ::testing::PrintToString(outcome.errors);
}

TEST(CliMetrics, YamlKeyAndTheFlagWinsOverIt) {
  TempDir dir;
  const std::string config = dir.file("vms.yaml");
  std::ofstream(config) << "metrics: \"[::1]:9200\"\nvms:\n  - guest_cid: 3\n    socket: " << dir.file("s")
                        << "\n    uds_path: " << dir.file("u") << "\n";
  const CliOutcome from_yaml = parse_command_line({"--config", config});
  ASSERT_TRUE(from_yaml.config) << ::testing::PrintToString(from_yaml.errors);
  EXPECT_EQ(from_yaml.config->metrics.address->to_string(), "[::1]:9200");
  const CliOutcome from_flag = parse_command_line({"--config", config, "--metrics", "127.0.0.1:9300"});
  ASSERT_TRUE(from_flag.config) << ::testing::PrintToString(from_flag.errors);
  EXPECT_EQ(from_flag.config->metrics.address->to_string(), "127.0.0.1:9300");

  std::ofstream(config) << "metrics: 10.0.0.1:9100\nvms:\n  - guest_cid: 3\n    socket: " << dir.file("s")
                        << "\n    uds_path: " << dir.file("u") << "\n";
  const CliOutcome remote = parse_command_line({"--config", config});
  EXPECT_FALSE(remote.config);
  EXPECT_TRUE(has_error(remote, "metrics: 10.0.0.1:9100 is not a loopback address"))
      << ::testing::PrintToString(remote.errors);
}

TEST(CliLogFormat, TextOrJson) {
  TempDir dir;
  const CliOutcome json = parse_command_line(one_vm(dir, {"--log-format", "json"}));
  ASSERT_TRUE(json.config) << ::testing::PrintToString(json.errors);
  EXPECT_EQ(json.config->runtime.log_format, LogFormat::kJson);
  const CliOutcome bad = parse_command_line(one_vm(dir, {"--log-format", "xml"}));
  EXPECT_FALSE(bad.config);
  EXPECT_TRUE(has_error(bad, "--log-format: 'xml'")) << ::testing::PrintToString(bad.errors);
}

TEST(CliLogFormat, JsonEscapingKeepsOneObjectPerLine) {
  std::string out;
  append_json_escaped("a \"quoted\" \\path\\\nnext\tline\x01", &out);
  EXPECT_EQ(out, "a \\\"quoted\\\" \\\\path\\\\\\nnext\\tline\\u0001");
}

TEST(CliConnections, TakesTheMetricsAddress) {
  const CliOutcome outcome = parse_command_line({"connections", "--metrics", "[::1]:9100"});
  EXPECT_FALSE(outcome.config);
  ASSERT_TRUE(outcome.connections_from) << ::testing::PrintToString(outcome.errors);
  EXPECT_EQ(outcome.connections_from->to_string(), "[::1]:9100");
}

TEST(CliConnections, NeedsAValidAddress) {
  const CliOutcome missing = parse_command_line({"connections"});
  EXPECT_FALSE(missing.connections_from);
  EXPECT_EQ(missing.exit_code, kExitUsage);
  const CliOutcome bad = parse_command_line({"connections", "--metrics", "nowhere"});
  EXPECT_FALSE(bad.connections_from);
  EXPECT_EQ(bad.exit_code, kExitUsage);
  const CliOutcome help = parse_command_line({"connections", "--help"});
  EXPECT_EQ(help.exit_code, kExitOk);
  EXPECT_NE(help.output.find("--metrics"), std::string::npos);
}

TEST(CliMetrics, HelpMentionsTheNewOptions) {
  const CliOutcome help = parse_command_line({"--help"});
  for (const char* needle : {"--metrics", "--metrics-allow-remote", "--log-format", "connections --metrics"}) {
    EXPECT_NE(help.output.find(needle), std::string::npos) << needle;
  }
}

}  // namespace
}  // namespace vhost_vsock::daemon
