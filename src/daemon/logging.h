// spdlog to stderr with timestamps; one logger for the whole process
// (thread-safe sink), level from --log-level, format from --log-format.
#pragma once

#include <string>
#include <string_view>

#include "daemon/config.h"

namespace vhost_vsock::daemon {

void setup_logging(LogLevel level, LogFormat format = LogFormat::kText);

// `text` as the inside of a JSON string (quotes, backslashes and control
// characters escaped; other bytes as they are). Exposed for tests.
void append_json_escaped(std::string_view text, std::string* out);

}  // namespace vhost_vsock::daemon
