// The --metrics address: "127.0.0.1:PORT" or "[::1]:PORT" (any IPv4 literal
// or bracketed IPv6 literal, so the operator sees exactly what is bound; no
// host names, which would need a resolver). Pure parsing, no sockets.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

namespace vhost_vsock::metrics {

struct ListenAddress {
  std::string host;  // the literal without brackets: "127.0.0.1", "::1"
  uint16_t port = 0;
  bool ipv6 = false;
  bool loopback = false;  // 127.0.0.0/8, ::1 (and ::ffff:127.x.y.z)

  // "127.0.0.1:9100", "[::1]:9100"
  [[nodiscard]] std::string to_string() const;
  bool operator==(const ListenAddress&) const = default;
};

// Returns false and sets `error` on anything but ADDRESS:PORT with a numeric
// address and a port 1..65535.
bool parse_listen_address(std::string_view text, ListenAddress* out, std::string* error);

}  // namespace vhost_vsock::metrics
