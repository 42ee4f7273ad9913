// spdlog to stderr with timestamps; one logger for the whole process
// (thread-safe sink), level from --log-level.
#pragma once

#include "daemon/config.h"

namespace vhost_vsock::daemon {

void setup_logging(LogLevel level);

}  // namespace vhost_vsock::daemon
