#include "metrics/http_client.h"

#include <fmt/format.h>
#include <httplib.h>

namespace vhost_vsock::metrics {

bool http_get(const ListenAddress& address, const std::string& path, std::string* body, std::string* error,
              std::string* content_type) {
  constexpr time_t kTimeoutSeconds = 5;
  httplib::Client client(address.host, address.port);
  client.set_connection_timeout(kTimeoutSeconds);
  client.set_read_timeout(kTimeoutSeconds);
  const httplib::Result result = client.Get(path);
  if (!result) {
    *error = fmt::format("GET http://{}{}: {}", address.to_string(), path, httplib::to_string(result.error()));
    return false;
  }
  if (result->status != 200) {
    *error = fmt::format("GET http://{}{}: HTTP status {}", address.to_string(), path, result->status);
    return false;
  }
  *body = result->body;
  if (content_type != nullptr) *content_type = result->get_header_value("Content-Type");
  return true;
}

}  // namespace vhost_vsock::metrics
