// SIGHUP reload: which VMs a new file adds, removes or restarts, and that a
// bad file is rejected whole.
#include "daemon/config_reload.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "testing/temp_dir.h"

namespace vhost_vsock::daemon {
namespace {

using vhost_vsock::testing::TempDir;

VmConfig vm(uint64_t cid, const std::string& dir) {
  VmConfig out;
  out.guest_cid = cid;
  out.socket_path = dir + "/vhost" + std::to_string(cid) + ".sock";
  out.uds_path = dir + "/vm" + std::to_string(cid) + ".vsock";
  out.source = VmSource::kConfigFile;
  return out;
}

std::string yaml_vm(uint64_t cid, const std::string& dir, const std::string& extra = "") {
  return "  - guest_cid: " + std::to_string(cid) + "\n    socket: " + dir + "/vhost" + std::to_string(cid) +
         ".sock\n    uds_path: " + dir + "/vm" + std::to_string(cid) + ".vsock\n" + extra;
}

TEST(DiffVmSets, SortsVmsIntoAddedRemovedChangedAndUnchanged) {
  const std::vector<VmConfig> running = {vm(3, "/d"), vm(4, "/d"), vm(5, "/d")};
  VmConfig five = vm(5, "/d");
  five.tx_buffer_size = 1024;
  five.groups = {"a", "b"};
  VmConfig four = vm(4, "/d");
  four.index = 7;  // only its place in the file moved
  const VmSetChange change = diff_vm_sets(running, {vm(6, "/d"), four, five});
  ASSERT_EQ(change.added.size(), 1u);
  EXPECT_EQ(change.added[0].guest_cid, 6u);
  ASSERT_EQ(change.removed.size(), 1u);
  EXPECT_EQ(change.removed[0].guest_cid, 3u);
  ASSERT_EQ(change.changed.size(), 1u);
  EXPECT_EQ(change.changed[0].after.guest_cid, 5u);
  EXPECT_EQ(change.changed[0].keys, (std::vector<std::string>{"tx_buffer_size", "groups"}));
  EXPECT_EQ(change.unchanged, (std::vector<uint64_t>{4}));
  EXPECT_FALSE(change.empty());
  EXPECT_EQ(describe_vm_set_change(change).size(), 3u);
}

TEST(DiffVmSets, TheSameSetIsNoChange) {
  const std::vector<VmConfig> running = {vm(3, "/d"), vm(4, "/d")};
  const VmSetChange change = diff_vm_sets(running, running);
  EXPECT_TRUE(change.empty());
  EXPECT_EQ(change.unchanged.size(), 2u);
  EXPECT_TRUE(describe_vm_set_change(change).empty());
}

TEST(ChangedVmKeys, NamesEveryDifferingKey) {
  VmConfig a = vm(3, "/d");
  VmConfig b = vm(3, "/e");
  b.queue_size = 256;
  b.connect_wait_ms = 100;
  EXPECT_EQ(changed_vm_keys(a, b), (std::vector<std::string>{"socket", "uds_path", "queue_size", "connect_wait"}));
}

class ReloadConfigFile : public ::testing::Test {
 protected:
  DaemonConfig running() {
    DaemonConfig config;
    config.config_file = dir_.file("vms.yaml");
    config.vms = {vm(3, dir_.path())};
    config.runtime.max_connections = 77;
    return config;
  }
  TempDir dir_;
};

TEST_F(ReloadConfigFile, ReadsTheNewVmsAndKeepsTheCommandLineOptions) {
  dir_.write("vms.yaml", "vms:\n" + yaml_vm(3, dir_.path()) + yaml_vm(4, dir_.path()));
  DaemonConfig next;
  ConfigErrors errors;
  std::vector<std::string> warnings;
  ASSERT_TRUE(reload_config_file(running(), &next, &errors, &warnings)) << errors.front().to_string();
  ASSERT_EQ(next.vms.size(), 2u);
  EXPECT_EQ(next.vms[1].guest_cid, 4u);
  EXPECT_EQ(next.runtime.max_connections, 77u);
  EXPECT_EQ(next.config_file, dir_.file("vms.yaml"));
  EXPECT_TRUE(warnings.empty());
}

TEST_F(ReloadConfigFile, RejectsDuplicateCidsPathClashesAndParseErrors) {
  const std::string bad_files[] = {
      "vms:\n" + yaml_vm(3, dir_.path()) + yaml_vm(3, dir_.path() + "/x"),  // CID twice
      "vms:\n" + yaml_vm(3, dir_.path()) + "  - guest_cid: 4\n    socket: " + dir_.path() +
          "/vhost3.sock\n    uds_path: " + dir_.path() + "/vm4.vsock\n",  // path clash
      "vms: [ {guest_cid: 3,\n",                                          // YAML syntax
      "vms:\n" + yaml_vm(3, dir_.path(), "    queue_size: 1000\n"),       // not a power of two
      "vms:\n  - guest_cid: 4\n    socket: /nonexistent-dir/s\n    uds_path: /nonexistent-dir/u\n",
  };
  for (const auto& text : bad_files) {
    dir_.write("vms.yaml", text);
    DaemonConfig next;
    next.vms = {vm(99, "/untouched")};
    ConfigErrors errors;
    std::vector<std::string> warnings;
    EXPECT_FALSE(reload_config_file(running(), &next, &errors, &warnings)) << text;
    EXPECT_FALSE(errors.empty()) << text;
    ASSERT_EQ(next.vms.size(), 1u) << "a rejected file leaves the output alone";
    EXPECT_EQ(next.vms[0].guest_cid, 99u);
  }
}

TEST_F(ReloadConfigFile, AMissingFileIsRejected) {
  DaemonConfig next;
  ConfigErrors errors;
  std::vector<std::string> warnings;
  EXPECT_FALSE(reload_config_file(running(), &next, &errors, &warnings));
  ASSERT_EQ(errors.size(), 1u);
  EXPECT_NE(errors[0].message.find("cannot open"), std::string::npos) << errors[0].message;
}

TEST_F(ReloadConfigFile, AChangedMetricsAddressIsReportedAndNotApplied) {
  dir_.write("vms.yaml", "metrics: 127.0.0.1:9999\nvms:\n" + yaml_vm(3, dir_.path()));
  DaemonConfig next;
  ConfigErrors errors;
  std::vector<std::string> warnings;
  ASSERT_TRUE(reload_config_file(running(), &next, &errors, &warnings));
  ASSERT_EQ(warnings.size(), 1u);
  EXPECT_NE(warnings[0].find("stays off"), std::string::npos) << warnings[0];
  EXPECT_FALSE(next.metrics.address.has_value());
}

}  // namespace
}  // namespace vhost_vsock::daemon
