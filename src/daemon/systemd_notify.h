// Tells systemd (Type=notify units) when every VM socket is bound and when the
// daemon begins to stop, through $NOTIFY_SOCKET (sd_notify(3)'s protocol,
// without linking libsystemd for one datagram).
#pragma once

#include <string_view>

#include "base/unique_fd.h"

namespace vhost_vsock::daemon {

class SystemdNotifier {
 public:
  // Reads and unsets $NOTIFY_SOCKET (so children do not inherit it) and opens
  // the datagram socket now, before the sandbox is applied. Without the
  // variable every notify() is a no-op.
  SystemdNotifier();

  // Sends one state string, e.g. "READY=1". Failures are logged once and
  // otherwise ignored: systemd then times the unit out, which says enough.
  void notify(std::string_view state);

  [[nodiscard]] bool enabled() const { return socket_.get() >= 0; }

 private:
  base::UniqueFd socket_;
};

}  // namespace vhost_vsock::daemon
