// --metrics end to end: the real daemon (under --seccomp, so the HTTP
// server's syscalls are covered) moves data for the simulated guest while
// the test scrapes GET /metrics and GET /connections over HTTP.
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdio>
#include <nlohmann/json.hpp>
#include <string>

#include "fixture.h"
#include "metrics/http_client.h"
#include "testing/prometheus_text.h"

namespace vhost_vsock::integration {
namespace {

class MetricsTest : public DaemonTest {
 protected:
  void SetUp() override {
    endpoint_.host = "127.0.0.1";
    endpoint_.port = free_loopback_port();
    endpoint_.loopback = true;
    ASSERT_NE(endpoint_.port, 0);
    DaemonOptions options;
    options.extra_args = {"--metrics", endpoint_.to_string(), "--seccomp"};
    start(options);
  }

  std::string get(const std::string& path) {
    std::string body;
    std::string error;
    EXPECT_TRUE(metrics::http_get(endpoint_, path, &body, &error)) << error;
    return body;
  }

  testing::PrometheusText scrape() {
    const std::string text = get("/metrics");
    testing::PrometheusText parsed = testing::parse_prometheus_text(text);
    EXPECT_TRUE(parsed.errors.empty()) << (parsed.errors.empty() ? "" : parsed.errors.front()) << "\n" << text;
    EXPECT_FALSE(parsed.samples.empty());
    return parsed;
  }

  static double value(const testing::PrometheusText& text, const char* name, const char* label = nullptr,
                      const char* label_value = nullptr) {
    std::map<std::string, std::string> match{{"cid", std::to_string(kGuestCid)}};
    if (label != nullptr) match[label] = label_value;
    return text.value(name, match);
  }

  metrics::ListenAddress endpoint_;
};

TEST_F(MetricsTest, BytesAndPacketsGrowPerDirectionAndConnectionsAreListed) {
  HostListener listener(daemon().uds_port_path(1234));
  Connected from_guest = guest_connects(listener, 1234);
  ASSERT_TRUE(from_guest.guest.established());
  guest().listen(77);
  Connected from_host = host_connects(77);
  ASSERT_TRUE(from_host.host.valid());

  const std::string up(100'000, 'u');
  const std::string down(50'000, 'd');
  ASSERT_TRUE(from_guest.guest.send(up));
  ASSERT_EQ(read_exactly(from_guest.host.get(), up.size()).size(), up.size());
  ASSERT_TRUE(write_all(from_host.host.get(), down));
  ASSERT_EQ(from_host.guest.recv_exactly(down.size()).size(), down.size());

  const testing::PrometheusText first = scrape();
  EXPECT_EQ(value(first, "vhost_user_vsock_vm_up"), 1);
  EXPECT_EQ(value(first, "vhost_user_vsock_frontend_connected"), 1);
  EXPECT_EQ(value(first, "vhost_user_vsock_connections_active"), 2);
  EXPECT_EQ(value(first, "vhost_user_vsock_connections_total", "direction", "guest_to_host"), 1);
  EXPECT_EQ(value(first, "vhost_user_vsock_connections_total", "direction", "host_to_guest"), 1);
  const double up_bytes = value(first, "vhost_user_vsock_bytes_total", "direction", "guest_to_host");
  const double down_bytes = value(first, "vhost_user_vsock_bytes_total", "direction", "host_to_guest");
  EXPECT_GE(up_bytes, 100'000);
  EXPECT_GE(down_bytes, 50'000);
  const double up_packets = value(first, "vhost_user_vsock_packets_total", "direction", "guest_to_host");
  EXPECT_GT(up_packets, 0);
  EXPECT_GT(
      first.value("vhost_user_vsock_queue_notifications_total", {{"cid", "3"}, {"queue", "tx"}, {"kind", "kick"}}), 0);
  EXPECT_GT(
      first.value("vhost_user_vsock_queue_notifications_total", {{"cid", "3"}, {"queue", "rx"}, {"kind", "call"}}), 0);

  // More traffic each way: the next scrape is fresh, not cached.
  ASSERT_TRUE(from_guest.guest.send(up));
  ASSERT_EQ(read_exactly(from_guest.host.get(), up.size()).size(), up.size());
  ASSERT_TRUE(write_all(from_guest.host.get(), down));
  ASSERT_EQ(from_guest.guest.recv_exactly(down.size()).size(), down.size());
  const testing::PrometheusText second = scrape();
  EXPECT_GE(value(second, "vhost_user_vsock_bytes_total", "direction", "guest_to_host"), up_bytes + 100'000);
  EXPECT_GE(value(second, "vhost_user_vsock_bytes_total", "direction", "host_to_guest"), down_bytes + 50'000);
  EXPECT_GT(value(second, "vhost_user_vsock_packets_total", "direction", "guest_to_host"), up_packets);

  const nlohmann::json listing = nlohmann::json::parse(get("/connections"));
  ASSERT_TRUE(listing.is_array());
  ASSERT_EQ(listing.size(), 2u) << listing.dump();
  bool saw_guest = false;
  bool saw_host = false;
  for (const auto& c : listing) {
    EXPECT_EQ(c["cid"], kGuestCid);
    EXPECT_EQ(c["type"], "stream");
    EXPECT_EQ(c["state"], "established");
    EXPECT_GE(c["age_ms"].get<int64_t>(), 0);
    if (c["direction"] == "guest_to_host") {
      saw_guest = true;
      EXPECT_EQ(c["host_port"], 1234);
      EXPECT_EQ(c["host_path"], daemon().uds_port_path(1234));
      EXPECT_EQ(c["guest_port"], from_guest.guest.local_port());
      EXPECT_EQ(c["bytes_from_guest"], 200'000);
      EXPECT_EQ(c["bytes_to_guest"], 50'000);
    } else {
      saw_host = true;
      EXPECT_EQ(c["guest_port"], 77);
      EXPECT_EQ(c["host_path"], daemon().uds_path());
      EXPECT_EQ(c["bytes_to_guest"], 50'000);
    }
  }
  EXPECT_TRUE(saw_guest && saw_host) << listing.dump();
}

TEST_F(MetricsTest, ConnectionsCommandPrintsATable) {
  HostListener listener(daemon().uds_port_path(4321));
  Connected c = guest_connects(listener, 4321);
  ASSERT_TRUE(c.guest.established());
  const std::string command = DaemonProcess::binary_path() + " connections --metrics " + endpoint_.to_string();
  FILE* pipe = ::popen(command.c_str(), "r");
  ASSERT_NE(pipe, nullptr);
  std::string output;
  char buffer[512];
  while (std::fgets(buffer, sizeof(buffer), pipe) != nullptr) output += buffer;
  EXPECT_EQ(::pclose(pipe), 0) << output;
  EXPECT_EQ(output.rfind("CID", 0), 0u) << output;
  EXPECT_EQ(std::count(output.begin(), output.end(), '\n'), 2) << output;
  EXPECT_NE(output.find(daemon().uds_port_path(4321)), std::string::npos) << output;
}

TEST_F(MetricsTest, ClosedConnectionsLeaveTheListing) {
  HostListener listener(daemon().uds_port_path(555));
  {
    Connected c = guest_connects(listener, 555);
    ASSERT_TRUE(c.guest.established());
    EXPECT_EQ(nlohmann::json::parse(get("/connections")).size(), 1u);
    c.host.reset();  // host closes; the guest's close completes the shutdown
    c.guest.close();
  }
  std::string listing;
  for (int i = 0; i < 100; ++i) {
    listing = get("/connections");
    if (listing == "[]\n") break;
    ::usleep(50'000);
  }
  EXPECT_EQ(listing, "[]\n");
  EXPECT_EQ(value(scrape(), "vhost_user_vsock_connections_active"), 0);
}

}  // namespace
}  // namespace vhost_vsock::integration
