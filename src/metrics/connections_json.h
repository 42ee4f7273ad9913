// GET /connections: every live connection of every VM as a JSON array, and
// the `vhost-user-vsock connections` table made from that JSON (like `ss`).
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "metrics/snapshot.h"

namespace vhost_vsock::metrics {

// [{"cid":3,"guest_port":1234,"host_port":5000,"host_path":"/run/vm3.vsock_5000",
//   "direction":"guest_to_host","type":"stream","state":"established","age_ms":12,
//   "bytes_from_guest":10,"bytes_to_guest":20,"buffered_to_host":0,
//   "guest_credit":65536,"peer_credit":262144}, ...]
std::string connections_json(const std::vector<VmSnapshot>& vms);

// The table for humans, one line per connection under a header. Returns
// false and sets `error` when `json` is not what connections_json() makes.
bool connections_table(std::string_view json, std::string* table, std::string* error);

}  // namespace vhost_vsock::metrics
