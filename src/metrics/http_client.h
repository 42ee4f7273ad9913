// A one-shot HTTP GET against a --metrics endpoint (cpp-httplib's client):
// for `vhost-user-vsock connections` and the tests.
#pragma once

#include <string>
#include <string_view>

#include "metrics/listen_address.h"

namespace vhost_vsock::metrics {

// GET `path`; true with the body on status 200, else false with `error` set.
bool http_get(const ListenAddress& address, const std::string& path, std::string* body, std::string* error,
              std::string* content_type = nullptr);

}  // namespace vhost_vsock::metrics
