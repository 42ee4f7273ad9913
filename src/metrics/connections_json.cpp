#include "metrics/connections_json.h"

#include <fmt/format.h>

#include <nlohmann/json.hpp>

#include "vsock/packet/header.h"

namespace vhost_vsock::metrics {
namespace {

nlohmann::json connection_object(uint64_t cid, const vsock::ConnectionInfo& c) {
  return {
      {"cid", cid},
      {"peer_cid", c.peer_cid},
      {"guest_port", c.guest_port},
      {"host_port", c.host_port},
      {"host_path", c.host_path},
      {"direction", c.peer_cid == vsock::kCidHost ? (c.guest_initiated ? "guest_to_host" : "host_to_guest")
                                                  : (c.guest_initiated ? "guest_to_sibling" : "sibling_to_guest")},
      {"type", c.type},
      {"state", c.state},
      {"age_ms", c.age.count()},
      {"bytes_from_guest", c.bytes_from_guest},
      {"bytes_to_guest", c.bytes_to_guest},
      {"buffered_to_host", c.buffered_to_host},
      {"guest_credit", c.guest_credit},
      {"peer_credit", c.peer_credit},
  };
}

std::string age_text(uint64_t ms) {
  if (ms < 1000) return fmt::format("{}ms", ms);
  const uint64_t s = ms / 1000;
  if (s < 3600) return fmt::format("{}m{:02}s", s / 60, s % 60);
  return fmt::format("{}h{:02}m", s / 3600, (s / 60) % 60);
}

constexpr const char* kRowFormat = "{:<8} {:<5} {:<9} {:<18} {:>10} {:<36} {:>8} {:>12} {:>12} {:>9} {:>9}\n";

std::string row(const nlohmann::json& c) {
  const std::string direction = c.at("direction").get<std::string>();
  const char* arrow = direction == "guest_to_host"      ? "g->h"
                      : direction == "host_to_guest"    ? "h->g"
                      : direction == "guest_to_sibling" ? "g->s"
                                                        : "s->g";
  // A sibling connection has no host path: its peer is "cid <CID>:<port>".
  const uint64_t peer_cid = c.value("peer_cid", uint64_t{vsock::kCidHost});
  const std::string peer = peer_cid == vsock::kCidHost
                               ? c.at("host_path").get<std::string>()
                               : fmt::format("cid {}:{}", peer_cid, c.at("host_port").get<uint32_t>());
  return fmt::format(kRowFormat, c.at("cid").get<uint64_t>(), arrow, c.at("type").get<std::string>(),
                     c.at("state").get<std::string>(), c.at("guest_port").get<uint32_t>(), peer,
                     age_text(c.at("age_ms").get<uint64_t>()), c.at("bytes_from_guest").get<uint64_t>(),
                     c.at("bytes_to_guest").get<uint64_t>(), c.at("buffered_to_host").get<uint64_t>(),
                     c.at("peer_credit").get<uint64_t>());
}

}  // namespace

std::string connections_json(const std::vector<VmSnapshot>& vms) {
  nlohmann::json list = nlohmann::json::array();
  for (const VmSnapshot& vm : vms) {
    for (const vsock::ConnectionInfo& connection : vm.connections)
      list.push_back(connection_object(vm.cid, connection));
  }
  return list.dump() + "\n";
}

bool connections_table(std::string_view json, std::string* table, std::string* error) {
  try {
    const nlohmann::json list = nlohmann::json::parse(json);
    if (!list.is_array()) {
      *error = "expected a JSON array of connections";
      return false;
    }
    std::string out = fmt::format(kRowFormat, "CID", "DIR", "TYPE", "STATE", "GUEST-PORT", "HOST", "AGE", "FROM-GUEST",
                                  "TO-GUEST", "BUFFERED", "CREDIT");
    for (const auto& connection : list) out += row(connection);
    *table = std::move(out);
    return true;
  } catch (const nlohmann::json::exception& e) {
    *error = fmt::format("malformed connection listing: {}", e.what());
    return false;
  }
}

}  // namespace vhost_vsock::metrics
