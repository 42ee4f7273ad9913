// Shared fixture for the muxer tests: a MuxerHarness with short timeouts,
// 64 posted RX buffers, and helpers for the host programs' side.
#pragma once

#include <gtest/gtest.h>
#include <poll.h>
#include <sys/socket.h>

#include <algorithm>
#include <map>
#include <string>

#include "testing/muxer_test_harness.h"

using namespace std::chrono_literals;

namespace vhost_vsock::vsock::test {

using namespace std::chrono_literals;

constexpr uint32_t kGuestPort = 40000;
constexpr uint32_t kHostPort = 1234;

inline std::span<const uint8_t> bytes_of(const std::string& s) {
  return std::span(reinterpret_cast<const uint8_t*>(s.data()), s.size());
}
inline std::string text(const std::vector<uint8_t>& v) {
  return std::string(v.begin(), v.end());
}

inline std::vector<uint8_t> pattern(size_t n, size_t seed = 0) {
  std::vector<uint8_t> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = static_cast<uint8_t>((i * 31 + seed * 7 + (i >> 8)) & 0xFF);
  return v;
}

// Reads what is available now (non-blocking fd), waiting up to `wait` for the first byte.
inline std::string read_some(int fd, std::chrono::milliseconds wait = 200ms) {
  pollfd p{fd, POLLIN, 0};
  ::poll(&p, 1, static_cast<int>(wait.count()));
  std::string out;
  char buf[65536];
  for (;;) {
    ssize_t n = ::read(fd, buf, sizeof(buf));
    if (n <= 0) break;
    out.append(buf, static_cast<size_t>(n));
  }
  return out;
}

inline size_t count_op(const std::vector<GuestPacket>& packets, Op op) {
  return static_cast<size_t>(
      std::count_if(packets.begin(), packets.end(), [op](const GuestPacket& p) { return p.header.operation() == op; }));
}

inline size_t rw_payload_bytes(const std::vector<GuestPacket>& packets) {
  size_t bytes = 0;
  for (const auto& p : packets) {
    if (p.header.operation() == Op::kRw) bytes += p.payload.size();
  }
  return bytes;
}

// Returns true once the peer is closed (read returns 0 or ECONNRESET).
inline bool peer_closed(int fd) {
  char c;
  ssize_t n = ::recv(fd, &c, 1, MSG_DONTWAIT | MSG_PEEK);
  return n == 0 || (n < 0 && errno == ECONNRESET);
}

class MuxerTest : public ::testing::Test {
 protected:
  virtual MuxerLimits limits() {
    MuxerLimits l;
    l.tx_buffer_size = 16 * 1024;
    l.handshake_timeout = 300ms;
    l.request_timeout = 300ms;
    l.shutdown_timeout = 300ms;
    return l;
  }
  void SetUp() override {
    h = std::make_unique<MuxerHarness>(limits());
    h->post_rx_buffers(64);
  }

  std::vector<GuestPacket> drain(std::chrono::milliseconds max = 200ms) {
    h->pump(max);
    return h->received();
  }

  // Runs the loop until the guest receives a packet (up to `max`); returns
  // the packets of the pass that brought it, or none.
  std::vector<GuestPacket> wait_for_packet(std::chrono::milliseconds max = testing::kEventDeadline) {
    std::vector<GuestPacket> packets;
    h->run_until(
        [&] {
          packets = h->received();
          return !packets.empty();
        },
        max);
    return packets;
  }

  // Guest connects to host port `port` whose listener exists; returns the accepted host fd.
  // An established connection whose guest grants `guest_window` bytes of
  // credit, after its host peer wrote `host_bytes`; returns the drained packets.
  std::vector<GuestPacket> host_writes_beyond_guest_credit(base::UniqueFd& host, uint32_t guest_window,
                                                           size_t host_bytes) {
    host = establish_guest_connection();
    h->guest_buf_alloc = guest_window;
    h->send(h->guest_header(Op::kCreditUpdate, kGuestPort, kHostPort));
    drain();
    auto data = pattern(host_bytes);
    EXPECT_EQ(::write(host.get(), data.data(), data.size()), static_cast<ssize_t>(host_bytes));
    return drain();
  }

  base::UniqueFd establish_guest_connection(uint32_t guest_port = kGuestPort, uint32_t port = kHostPort) {
    if (!listeners.contains(port)) listeners[port] = MuxerHarness::listen_unix(h->port_path(port));
    h->send(h->guest_header(Op::kRequest, guest_port, port));
    auto packets = drain();
    EXPECT_EQ(packets.size(), 1u);
    if (packets.size() == 1) {
      EXPECT_EQ(packets[0].header.operation(), Op::kResponse);
      EXPECT_EQ(packets[0].header.src_port, port);
      EXPECT_EQ(packets[0].header.dst_port, guest_port);
      EXPECT_EQ(packets[0].header.dst_cid, MuxerHarness::kGuestCid);
      EXPECT_EQ(packets[0].header.buf_alloc, 16u * 1024);
    }
    base::UniqueFd accepted(::accept4(listeners[port].get(), nullptr, nullptr, SOCK_NONBLOCK));
    EXPECT_TRUE(accepted.valid());
    return accepted;
  }

  // Host connects through uds-path; returns the host fd and the REQUEST the guest saw.
  std::pair<base::UniqueFd, PacketHeader> start_host_connection(const std::string& line, uint32_t port = kGuestPort) {
    auto fd = MuxerHarness::connect_unix(h->uds_path());
    EXPECT_TRUE(fd.valid());
    if (!line.empty()) {
      EXPECT_EQ(::write(fd.get(), line.data(), line.size()), static_cast<ssize_t>(line.size()));
    }
    auto packets = drain();
    EXPECT_EQ(packets.size(), 1u);
    PacketHeader request{};
    if (!packets.empty()) {
      request = packets[0].header;
      EXPECT_EQ(request.operation(), Op::kRequest);
      EXPECT_EQ(request.dst_port, port);
      EXPECT_GE(request.src_port, 1u << 30);
      EXPECT_LT(request.src_port, 1u << 31);
    }
    return {std::move(fd), request};
  }

  std::unique_ptr<MuxerHarness> h;
  std::map<uint32_t, base::UniqueFd> listeners;
};

}  // namespace vhost_vsock::vsock::test
