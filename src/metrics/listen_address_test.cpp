#include "metrics/listen_address.h"

#include <gtest/gtest.h>

namespace vhost_vsock::metrics {
namespace {

ListenAddress parsed(std::string_view text) {
  ListenAddress address;
  std::string error;
  EXPECT_TRUE(parse_listen_address(text, &address, &error)) << text << ": " << error;
  return address;
}

std::string rejected(std::string_view text) {
  ListenAddress address;
  std::string error;
  EXPECT_FALSE(parse_listen_address(text, &address, &error)) << text;
  return error;
}

TEST(ListenAddressTest, Ipv4LoopbackAndPort) {
  const ListenAddress a = parsed("127.0.0.1:9100");
  EXPECT_EQ(a.host, "127.0.0.1");
  EXPECT_EQ(a.port, 9100);
  EXPECT_FALSE(a.ipv6);
  EXPECT_TRUE(a.loopback);
  EXPECT_EQ(a.to_string(), "127.0.0.1:9100");
  EXPECT_TRUE(parsed("127.1.2.3:1").loopback);
}

TEST(ListenAddressTest, Ipv6LoopbackInBrackets) {
  const ListenAddress a = parsed("[::1]:65535");
  EXPECT_EQ(a.host, "::1");
  EXPECT_EQ(a.port, 65535);
  EXPECT_TRUE(a.ipv6);
  EXPECT_TRUE(a.loopback);
  EXPECT_EQ(a.to_string(), "[::1]:65535");
  EXPECT_TRUE(parsed("[::ffff:127.0.0.1]:80").loopback);
}

TEST(ListenAddressTest, OtherAddressesParseButAreNotLoopback) {
  EXPECT_FALSE(parsed("0.0.0.0:9100").loopback);
  EXPECT_FALSE(parsed("10.1.2.3:9100").loopback);
  EXPECT_FALSE(parsed("[::]:9100").loopback);
  EXPECT_FALSE(parsed("[2001:db8::1]:9100").loopback);
  EXPECT_FALSE(parsed("[::ffff:10.0.0.1]:9100").loopback);
}

TEST(ListenAddressTest, MalformedAddressesAreRefusedWithTheText) {
  EXPECT_NE(rejected("localhost:9100").find("'localhost:9100'"), std::string::npos);
  rejected("127.0.0.1");
  rejected("127.0.0.1:");
  rejected("127.0.0.1:0");
  rejected("127.0.0.1:65536");
  rejected("127.0.0.1:91x");
  rejected("::1:9100");
  rejected("[::1]9100");
  rejected("[::1]:");
  rejected("[127.0.0.1]:9100");
  rejected("");
  EXPECT_NE(rejected("::1:9100").find("brackets"), std::string::npos);
}

}  // namespace
}  // namespace vhost_vsock::metrics
