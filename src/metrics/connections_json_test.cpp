#include "metrics/connections_json.h"

#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

namespace vhost_vsock::metrics {
namespace {

VmSnapshot vm_with_connections() {
  VmSnapshot vm;
  vm.cid = 3;
  vm.answered = true;
  vsock::ConnectionInfo from_guest;
  from_guest.guest_port = 1234;
  from_guest.host_port = 5000;
  from_guest.host_path = "/run/vm3.vsock_5000";
  from_guest.guest_initiated = true;
  from_guest.type = "stream";
  from_guest.state = "established";
  from_guest.age = std::chrono::milliseconds(61'500);
  from_guest.bytes_from_guest = 100;
  from_guest.bytes_to_guest = 200;
  from_guest.buffered_to_host = 7;
  from_guest.guest_credit = 65536;
  from_guest.peer_credit = 4096;
  vsock::ConnectionInfo from_host = from_guest;
  from_host.guest_initiated = false;
  from_host.host_path = "/run/vm3 \"odd\".vsock";
  from_host.state = "awaiting-response";
  vm.connections = {from_guest, from_host};
  return vm;
}

TEST(ConnectionsJsonTest, OneObjectPerConnectionWithEveryField) {
  const nlohmann::json list = nlohmann::json::parse(connections_json({vm_with_connections(), VmSnapshot{}}));
  ASSERT_TRUE(list.is_array());
  ASSERT_EQ(list.size(), 2u);
  const auto& first = list[0];
  EXPECT_EQ(first["cid"], 3);
  EXPECT_EQ(first["guest_port"], 1234);
  EXPECT_EQ(first["host_port"], 5000);
  EXPECT_EQ(first["host_path"], "/run/vm3.vsock_5000");
  EXPECT_EQ(first["direction"], "guest_to_host");
  EXPECT_EQ(first["type"], "stream");
  EXPECT_EQ(first["state"], "established");
  EXPECT_EQ(first["age_ms"], 61500);
  EXPECT_EQ(first["bytes_from_guest"], 100);
  EXPECT_EQ(first["bytes_to_guest"], 200);
  EXPECT_EQ(first["buffered_to_host"], 7);
  EXPECT_EQ(first["guest_credit"], 65536);
  EXPECT_EQ(first["peer_credit"], 4096);
  EXPECT_EQ(list[1]["direction"], "host_to_guest");
  EXPECT_EQ(list[1]["host_path"], "/run/vm3 \"odd\".vsock");  // escaped and read back intact
}

TEST(ConnectionsJsonTest, NoConnectionsIsAnEmptyArray) {
  EXPECT_EQ(connections_json({}), "[]\n");
}

TEST(ConnectionsJsonTest, TableHasAHeaderAndALinePerConnection) {
  std::string table;
  std::string error;
  ASSERT_TRUE(connections_table(connections_json({vm_with_connections()}), &table, &error)) << error;
  EXPECT_EQ(std::count(table.begin(), table.end(), '\n'), 3);
  EXPECT_EQ(table.rfind("CID", 0), 0u);
  EXPECT_NE(table.find("g->h"), std::string::npos);
  EXPECT_NE(table.find("h->g"), std::string::npos);
  EXPECT_NE(table.find("/run/vm3.vsock_5000"), std::string::npos);
  EXPECT_NE(table.find("1m01s"), std::string::npos);
  EXPECT_NE(table.find("awaiting-response"), std::string::npos);
}

TEST(ConnectionsJsonTest, TableRefusesWhatIsNotAListing) {
  std::string table;
  std::string error;
  EXPECT_FALSE(connections_table("{\"cid\":3}", &table, &error));
  EXPECT_FALSE(error.empty());
  EXPECT_FALSE(connections_table("[{\"cid\":3}]", &table, &error));  // fields missing
  EXPECT_FALSE(connections_table("not json", &table, &error));
}

}  // namespace
}  // namespace vhost_vsock::metrics
