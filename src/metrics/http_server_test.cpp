#include "metrics/http_server.h"

#include <gtest/gtest.h>

#include <atomic>

#include "metrics/http_client.h"

namespace vhost_vsock::metrics {
namespace {

ListenAddress loopback_any_port() {
  ListenAddress address;
  address.host = "127.0.0.1";
  address.loopback = true;
  return address;  // port 0: the kernel picks one
}

TEST(HttpServerTest, ServesMetricsAndConnectionsFromFreshSnapshots) {
  std::atomic<int> scrapes{0};
  HttpServer server(loopback_any_port(), "9.9", [&scrapes] {
    VmSnapshot vm;
    vm.cid = 3;
    vm.answered = true;
    vm.muxer.bytes_from_guest = static_cast<uint64_t>(++scrapes) * 100;
    return std::vector<VmSnapshot>{vm};
  });
  server.start();
  ListenAddress address = loopback_any_port();
  address.port = server.port();
  ASSERT_NE(address.port, 0);

  std::string body;
  std::string error;
  std::string type;
  ASSERT_TRUE(http_get(address, "/metrics", &body, &error, &type)) << error;
  EXPECT_NE(type.find("text/plain; version=0.0.4"), std::string::npos) << type;
  EXPECT_NE(body.find("vhost_user_vsock_bytes_total{cid=\"3\",direction=\"guest_to_host\"} 100"), std::string::npos)
      << body;
  ASSERT_TRUE(http_get(address, "/metrics", &body, &error)) << error;
  EXPECT_NE(body.find("direction=\"guest_to_host\"} 200"), std::string::npos) << body;  // not cached

  ASSERT_TRUE(http_get(address, "/connections", &body, &error, &type)) << error;
  EXPECT_EQ(type, "application/json");
  EXPECT_EQ(body, "[]\n");

  EXPECT_FALSE(http_get(address, "/nothing", &body, &error));
  EXPECT_NE(error.find("404"), std::string::npos) << error;
  server.stop();
  EXPECT_FALSE(http_get(address, "/metrics", &body, &error));
}

TEST(HttpServerTest, StopsRightAfterStartAndWithoutStart) {
  HttpServer started(loopback_any_port(), "v", [] { return std::vector<VmSnapshot>{}; });
  started.start();
  started.stop();
  HttpServer never_started(loopback_any_port(), "v", [] { return std::vector<VmSnapshot>{}; });
  SUCCEED();  // the destructor must not hang
}

TEST(HttpServerTest, AnAddressInUseIsAnErrorNamingIt) {
  HttpServer first(loopback_any_port(), "v", [] { return std::vector<VmSnapshot>{}; });
  ListenAddress taken = loopback_any_port();
  taken.port = first.port();
  try {
    HttpServer second(taken, "v", [] { return std::vector<VmSnapshot>{}; });
    FAIL() << "bound a port in use";
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find(taken.to_string()), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace vhost_vsock::metrics
