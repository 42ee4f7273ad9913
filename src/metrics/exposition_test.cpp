#include "metrics/exposition.h"

#include <gtest/gtest.h>

#include "testing/prometheus_text.h"

namespace vhost_vsock::metrics {
namespace {

VmSnapshot busy_vm(uint64_t cid) {
  VmSnapshot vm;
  vm.cid = cid;
  vm.answered = true;
  vm.muxer.connections_active = 2;
  vm.muxer.connections_from_guest = 5;
  vm.muxer.connections_from_host = 7;
  vm.muxer.bytes_from_guest = 1000;
  vm.muxer.bytes_to_guest = 2000;
  vm.muxer.packets_from_guest = 10;
  vm.muxer.packets_to_guest = 20;
  vm.muxer.host_connects_refused = 3;
  vm.muxer.resets_timeout = 4;
  vm.muxer.credit_stalls = 6;
  vm.muxer.credit_requests = 4;
  vm.muxer.dropped_bad_address = 8;
  vm.muxer.guest_writes_gathered = 15;
  vm.muxer.busy_poll_windows = 16;
  vm.muxer.busy_poll_finds = 17;
  vm.server.frontends_accepted = 1;
  vm.queues[kRxQueue] = {11, 12};
  vm.queues[kTxQueue] = {13, 14};
  return vm;
}

TEST(ExpositionTest, EveryNamedSeriesIsThereWithItsCidAndValue) {
  const std::string text = prometheus_text({busy_vm(3)}, "1.2.3");
  const testing::PrometheusText parsed = testing::parse_prometheus_text(text);
  ASSERT_TRUE(parsed.errors.empty()) << parsed.errors.front() << "\n" << text;
  const std::map<std::string, std::string> cid{{"cid", "3"}};
  EXPECT_EQ(parsed.value("vhost_user_vsock_build_info", {{"version", "1.2.3"}}), 1);
  EXPECT_EQ(parsed.value("vhost_user_vsock_connections_active", cid), 2);
  EXPECT_EQ(parsed.value("vhost_user_vsock_connections_total", {{"cid", "3"}, {"direction", "guest_to_host"}}), 5);
  EXPECT_EQ(parsed.value("vhost_user_vsock_connections_total", {{"cid", "3"}, {"direction", "host_to_guest"}}), 7);
  EXPECT_EQ(parsed.value("vhost_user_vsock_bytes_total", {{"cid", "3"}, {"direction", "guest_to_host"}}), 1000);
  EXPECT_EQ(parsed.value("vhost_user_vsock_bytes_total", {{"cid", "3"}, {"direction", "host_to_guest"}}), 2000);
  EXPECT_EQ(parsed.value("vhost_user_vsock_packets_total", {{"cid", "3"}, {"direction", "guest_to_host"}}), 10);
  EXPECT_EQ(parsed.value("vhost_user_vsock_packets_total", {{"cid", "3"}, {"direction", "host_to_guest"}}), 20);
  EXPECT_EQ(parsed.value("vhost_user_vsock_resets_total", {{"cid", "3"}, {"reason", "refused"}}), 3);
  EXPECT_EQ(parsed.value("vhost_user_vsock_resets_total", {{"cid", "3"}, {"reason", "timeout"}}), 4);
  EXPECT_EQ(parsed.value("vhost_user_vsock_resets_total", {{"cid", "3"}, {"reason", "credit_violation"}}), 0);
  EXPECT_EQ(parsed.value("vhost_user_vsock_credit_stalls_total", cid), 6);
  EXPECT_EQ(parsed.value("vhost_user_vsock_credit_requests_total", cid), 4);
  EXPECT_EQ(parsed.value("vhost_user_vsock_dropped_total", {{"cid", "3"}, {"reason", "bad_address"}}), 8);
  EXPECT_EQ(parsed.value("vhost_user_vsock_guest_writes_gathered_total", cid), 15);
  EXPECT_EQ(parsed.value("vhost_user_vsock_busy_poll_windows_total", cid), 16);
  EXPECT_EQ(parsed.value("vhost_user_vsock_busy_poll_finds_total", cid), 17);
  EXPECT_EQ(parsed.value("vhost_user_vsock_frontend_connected", cid), 1);
  EXPECT_EQ(
      parsed.value("vhost_user_vsock_queue_notifications_total", {{"cid", "3"}, {"queue", "rx"}, {"kind", "kick"}}),
      11);
  EXPECT_EQ(
      parsed.value("vhost_user_vsock_queue_notifications_total", {{"cid", "3"}, {"queue", "tx"}, {"kind", "call"}}),
      14);
  EXPECT_EQ(
      parsed.value("vhost_user_vsock_queue_notifications_total", {{"cid", "3"}, {"queue", "event"}, {"kind", "kick"}}),
      0);
  EXPECT_EQ(parsed.types.at("vhost_user_vsock_bytes_total"), "counter");
  EXPECT_EQ(parsed.types.at("vhost_user_vsock_connections_active"), "gauge");
  EXPECT_EQ(parsed.types.at("vhost_user_vsock_busy_poll_windows_total"), "counter");
  EXPECT_EQ(parsed.types.at("vhost_user_vsock_busy_poll_finds_total"), "counter");
  // The reader keeps no HELP lines: look for them in the text.
  for (const char* name : {"vhost_user_vsock_busy_poll_windows_total", "vhost_user_vsock_busy_poll_finds_total"}) {
    EXPECT_NE(text.find(std::string("# HELP ") + name + " Busy"), std::string::npos) << name << "\n" << text;
  }
}

TEST(ExpositionTest, SeveralVmsShareOneFamilyEachAndASilentVmIsDown) {
  VmSnapshot silent;
  silent.cid = 9;
  const std::string text = prometheus_text({busy_vm(3), busy_vm(4), silent}, "v");
  const testing::PrometheusText parsed = testing::parse_prometheus_text(text);
  ASSERT_TRUE(parsed.errors.empty()) << parsed.errors.front() << "\n" << text;  // families stay contiguous
  EXPECT_EQ(parsed.value("vhost_user_vsock_bytes_total", {{"cid", "4"}, {"direction", "guest_to_host"}}), 1000);
  EXPECT_EQ(parsed.value("vhost_user_vsock_vm_up", {{"cid", "3"}}), 1);
  EXPECT_EQ(parsed.value("vhost_user_vsock_vm_up", {{"cid", "9"}}), 0);
  EXPECT_EQ(parsed.value("vhost_user_vsock_connections_active", {{"cid", "9"}}), -1);
}

TEST(ExpositionTest, LabelValuesAreEscaped) {
  const std::string text = prometheus_text({}, "a\"b\\c\nd");
  const testing::PrometheusText parsed = testing::parse_prometheus_text(text);
  ASSERT_TRUE(parsed.errors.empty()) << parsed.errors.front() << "\n" << text;
  EXPECT_EQ(parsed.value("vhost_user_vsock_build_info", {{"version", "a\"b\\c\nd"}}), 1);
}

TEST(ExpositionTest, TheReaderRejectsBrokenText) {
  // The reader must be able to fail, or the checks above prove nothing.
  EXPECT_FALSE(testing::parse_prometheus_text("foo 1\n").errors.empty());  // no TYPE
  EXPECT_FALSE(testing::parse_prometheus_text("# TYPE foo counter\nfoo{a=\"x} 1\n").errors.empty());
  EXPECT_FALSE(testing::parse_prometheus_text("# TYPE foo counter\nfoo one\n").errors.empty());
  EXPECT_FALSE(testing::parse_prometheus_text("# TYPE a gauge\n# TYPE b gauge\na 1\nb 1\na 2\n").errors.empty());
}

}  // namespace
}  // namespace vhost_vsock::metrics
