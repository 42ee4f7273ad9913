// Counters of one vhost-user server, shared by its sessions.
#pragma once

#include <cstdint>

namespace vhost_vsock::vhost_user {

struct ServerStats {
  uint64_t frontends_accepted = 0;
  uint64_t frontend_disconnects = 0;
  uint64_t protocol_errors = 0;  // malformed or out-of-order messages
  uint64_t messages = 0;
};

}  // namespace vhost_vsock::vhost_user
