#include "metrics/listen_address.h"

#include <arpa/inet.h>
#include <fmt/format.h>

#include <array>
#include <charconv>
#include <cstring>

namespace vhost_vsock::metrics {
namespace {

bool parse_port(std::string_view text, uint16_t* out) {
  unsigned value = 0;
  const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value, 10);
  if (text.empty() || ec != std::errc() || end != text.data() + text.size() || value == 0 || value > 65535) {
    return false;
  }
  *out = static_cast<uint16_t>(value);
  return true;
}

bool is_loopback_v6(const in6_addr& address) {
  static constexpr std::array<uint8_t, 16> kLoopback{0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1};
  static constexpr std::array<uint8_t, 12> kMappedPrefix{0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
  if (std::memcmp(address.s6_addr, kLoopback.data(), kLoopback.size()) == 0) return true;
  return std::memcmp(address.s6_addr, kMappedPrefix.data(), kMappedPrefix.size()) == 0 && address.s6_addr[12] == 127;
}

}  // namespace

std::string ListenAddress::to_string() const {
  return ipv6 ? fmt::format("[{}]:{}", host, port) : fmt::format("{}:{}", host, port);
}

bool parse_listen_address(std::string_view text, ListenAddress* out, std::string* error) {
  const auto fail = [&](std::string_view why) {
    *error = fmt::format("'{}' {} (expected 127.0.0.1:PORT or [::1]:PORT)", text, why);
    return false;
  };
  ListenAddress address;
  std::string_view host;
  std::string_view port;
  if (!text.empty() && text.front() == '[') {
    const size_t close = text.find(']');
    if (close == std::string_view::npos || close + 1 >= text.size() || text[close + 1] != ':') {
      return fail("is not [IPV6]:PORT");
    }
    host = text.substr(1, close - 1);
    port = text.substr(close + 2);
    address.ipv6 = true;
  } else {
    const size_t colon = text.rfind(':');
    if (colon == std::string_view::npos) return fail("has no port");
    host = text.substr(0, colon);
    port = text.substr(colon + 1);
    if (host.find(':') != std::string_view::npos) return fail("needs brackets around an IPv6 address");
  }
  if (!parse_port(port, &address.port)) return fail("has no valid port (1-65535)");
  address.host = std::string(host);
  if (address.ipv6) {
    in6_addr parsed{};
    if (::inet_pton(AF_INET6, address.host.c_str(), &parsed) != 1) return fail("has no valid IPv6 address");
    address.loopback = is_loopback_v6(parsed);
  } else {
    in_addr parsed{};
    if (::inet_pton(AF_INET, address.host.c_str(), &parsed) != 1) return fail("has no valid IPv4 address");
    address.loopback = (ntohl(parsed.s_addr) >> 24) == 127;
  }
  *out = std::move(address);
  return true;
}

}  // namespace vhost_vsock::metrics
