// Many connections at once, and bulk transfers with checksums.
#include <poll.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <map>
#include <sstream>
#include <thread>
#include <vector>

#include "fixture.h"

namespace vhost_vsock::integration {
namespace {

using Clock = std::chrono::steady_clock;

class ScaleTest : public DaemonTest {};

std::string message_for(size_t i, size_t size) {
  std::string s = "conn " + std::to_string(i) + ":";
  std::vector<uint8_t> tail(size - std::min(size, s.size()));
  fill_pattern(tail, 1000 + i, 0);
  for (auto& b : tail) b = static_cast<uint8_t>('a' + b % 26);
  s.append(tail.begin(), tail.end());
  return s;
}

std::string reversed(std::string s) {
  return {s.rbegin(), s.rend()};
}

TEST_F(ScaleTest, ThousandConcurrentGuestConnections) {
  constexpr size_t kConnections = 1000;
  constexpr size_t kMessage = 2000;
  start();
  HostListener listener(daemon().uds_port_path(5000));

  // Host: accept everything, then serve each connection: read its message,
  // answer with the message reversed.
  // One deadline for the whole test, so a stall fails it in bounded time.
  const auto deadline = Clock::now() + std::chrono::seconds(40);
  auto left = [&] { return std::max(Millis(1), std::chrono::duration_cast<Millis>(deadline - Clock::now())); };
  std::atomic<size_t> served{0};
  std::jthread host([&] {
    std::vector<UniqueFd> fds;
    while (fds.size() < kConnections) {
      UniqueFd fd = listener.accept(left());
      if (!fd) return;
      fds.push_back(std::move(fd));
    }
    for (auto& fd : fds) {
      const std::string msg = read_exactly(fd.get(), kMessage, left());
      if (msg.size() != kMessage) return;
      if (!write_all(fd.get(), reversed(msg), left())) return;
      ++served;
    }
  });

  std::vector<Stream> streams;
  for (size_t i = 0; i < kConnections; ++i) streams.push_back(guest().connect_async(5000));
  size_t established = 0;
  size_t refused = 0;
  for (auto& s : streams) {
    established += s.wait_established(left()) ? 1 : 0;
    refused += s.refused() ? 1 : 0;
  }
  ASSERT_EQ(established, kConnections) << refused << " refused, the rest got no answer";
  // Messages are per connection: the guest port picks which one a stream sends.
  for (size_t i = 0; i < kConnections; ++i) ASSERT_TRUE(streams[i].send(message_for(i, kMessage), left()));
  size_t correct = 0;
  for (size_t i = 0; i < kConnections; ++i) {
    const std::string reply = streams[i].recv_exactly(kMessage, left());
    if (reply == reversed(message_for(i, kMessage))) ++correct;
  }
  host.join();
  EXPECT_EQ(served.load(), kConnections);
  EXPECT_EQ(correct, kConnections);
  for (auto& s : streams) s.close();
  size_t closed = 0;
  for (auto& s : streams) closed += s.wait_closed(left()) ? 1 : 0;
  EXPECT_EQ(closed, kConnections);
}

TEST_F(ScaleTest, ThousandConcurrentHostConnections) {
  constexpr size_t kConnections = 1000;
  start();
  guest().listen(5001);
  const auto deadline = Clock::now() + std::chrono::seconds(40);
  auto left = [&] { return std::max(Millis(1), std::chrono::duration_cast<Millis>(deadline - Clock::now())); };
  std::vector<UniqueFd> hosts;
  std::vector<uint64_t> ok_ports;
  // Open them all before any completes its handshake, to have 1000 in flight.
  for (size_t i = 0; i < kConnections; ++i) {
    UniqueFd fd = unix_connect(daemon().uds_path());
    ASSERT_TRUE(fd.valid()) << i;
    ASSERT_TRUE(write_all(fd.get(), "CONNECT 5001\n" + message_for(i, 100)));
    hosts.push_back(std::move(fd));
  }
  std::map<uint32_t, Stream> by_peer_port;
  for (size_t i = 0; i < kConnections; ++i) {
    auto s = guest().accept(5001, left());
    ASSERT_TRUE(s.has_value()) << "accepted only " << i;
    by_peer_port[s->peer_port()] = *s;
  }
  size_t correct = 0;
  for (size_t i = 0; i < kConnections; ++i) {
    auto line = read_line(hosts[i].get(), 64, left());
    ASSERT_TRUE(line.has_value()) << i;
    const uint32_t port = static_cast<uint32_t>(std::stoul(line->substr(3)));
    auto it = by_peer_port.find(port);
    ASSERT_NE(it, by_peer_port.end()) << "OK names a port no guest stream has: " << *line;
    // The bytes sent right after the CONNECT line arrive on the right stream.
    if (it->second.recv_exactly(100, left()) == message_for(i, 100)) ++correct;
  }
  EXPECT_EQ(correct, kConnections);
  EXPECT_EQ(by_peer_port.size(), kConnections);
}

// Streams `total` bytes of pattern `seed` from `send` to `recv` (functions
// over chunks), checking the checksum on both ends.
struct BulkResult {
  uint64_t sent_sum = 0;
  uint64_t received_sum = 0;
  uint64_t received_bytes = 0;
  bool send_ok = false;
};

constexpr size_t kBulk = 256ULL << 20;
constexpr size_t kChunk = 1 << 20;

TEST_F(ScaleTest, BulkGuestToHost256MiB) {
  start();
  HostListener listener(daemon().uds_port_path(6000));
  auto c = guest_connects(listener, 6000);
  ASSERT_TRUE(c.host.valid() && c.guest.established());
  BulkResult r;
  const auto t0 = Clock::now();
  std::jthread sender([&] {
    std::vector<uint8_t> chunk(kChunk);
    Checksum sum;
    r.send_ok = true;
    for (size_t off = 0; off < kBulk; off += kChunk) {
      fill_pattern(chunk, 42, off);
      sum.update(chunk);
      if (!c.guest.send(chunk, Millis(20000))) {
        r.send_ok = false;
        break;
      }
    }
    r.sent_sum = sum.value();
    c.guest.shutdown(SHUT_WR);
  });
  Checksum sum;
  std::string buf;
  for (;;) {
    bool eof = false;
    buf = read_some(c.host.get(), kChunk, Millis(20000), &eof);
    if (buf.empty()) break;
    sum.update(std::span(reinterpret_cast<const uint8_t*>(buf.data()), buf.size()));
  }
  sender.join();
  const double secs = std::chrono::duration<double>(Clock::now() - t0).count();
  const auto stats = guest().stats();
  std::cout << "guest->host 256 MiB in " << secs << " s (" << (kBulk / secs / (1 << 20)) << " MiB/s); rx_irq "
            << stats.rx_interrupts << " tx_irq " << stats.tx_interrupts << " rx_kicks " << stats.rx_kicks
            << " tx_kicks " << stats.tx_kicks << " used found by the fallback poll " << stats.used_found_on_timeout
            << "\n";
  // A used entry found only by the 100 ms fallback poll means the device
  // skipped an interrupt the guest asked for (used_event).
  EXPECT_LE(stats.used_found_on_timeout, 1u);
  EXPECT_TRUE(r.send_ok);
  EXPECT_EQ(sum.bytes(), kBulk);
  EXPECT_EQ(sum.value(), r.sent_sum);
}

TEST_F(ScaleTest, BulkHostToGuest256MiB) {
  start();
  guest().listen(6001);
  auto c = host_connects(6001);
  ASSERT_TRUE(c.host.valid() && c.guest.valid());
  BulkResult r;
  const auto t0 = Clock::now();
  std::jthread writer([&] {
    std::vector<uint8_t> chunk(kChunk);
    Checksum sum;
    r.send_ok = true;
    for (size_t off = 0; off < kBulk; off += kChunk) {
      fill_pattern(chunk, 43, off);
      sum.update(chunk);
      if (!write_all(c.host.get(), chunk, Millis(20000))) {
        r.send_ok = false;
        break;
      }
    }
    r.sent_sum = sum.value();
    ::shutdown(c.host.get(), SHUT_WR);
  });
  Checksum sum;
  std::vector<uint8_t> buf(kChunk);
  for (;;) {
    const size_t n = c.guest.recv_into(buf, Millis(20000));
    if (n == 0) break;
    sum.update(std::span(buf).first(n));
  }
  writer.join();
  const double secs = std::chrono::duration<double>(Clock::now() - t0).count();
  const auto stats = guest().stats();
  std::cout << "host->guest 256 MiB in " << secs << " s (" << (kBulk / secs / (1 << 20)) << " MiB/s); rx_irq "
            << stats.rx_interrupts << " tx_irq " << stats.tx_interrupts << " rx_kicks " << stats.rx_kicks
            << " tx_kicks " << stats.tx_kicks << " used found by the fallback poll " << stats.used_found_on_timeout
            << "\n";
  // A used entry found only by the 100 ms fallback poll means the device
  // skipped an interrupt the guest asked for (used_event).
  EXPECT_LE(stats.used_found_on_timeout, 1u);
  EXPECT_TRUE(r.send_ok);
  EXPECT_TRUE(c.guest.eof()) << "transfer ended without the host's SHUTDOWN";
  EXPECT_EQ(sum.bytes(), kBulk);
  EXPECT_EQ(sum.value(), r.sent_sum);
}

// A guest that floods REQUESTs past the connection cap: every REQUEST gets
// exactly one answer (RESPONSE or RST), none is lost to a full reply queue
// (the TX pass waits for RX instead), and the refusals cost a bounded number
// of log lines.
TEST_F(ScaleTest, RequestFloodPastTheCapIsAnsweredInFull) {
  // The daemon's default cap. The RESPONSEs for the connections it accepts
  // go out first, so the RSTs for the 3,616 it refuses pile up behind them
  // (it holds at most 1024).
  constexpr size_t kCap = 16384;
  constexpr size_t kRequests = 20000;
  DaemonOptions options;
  options.extra_args = {"--max-connections", std::to_string(kCap)};
  start(options);
  HostListener listener(daemon().uds_port_path(7000));
  const auto deadline = Clock::now() + std::chrono::seconds(60);
  // The host takes every connection (a full backlog would refuse some), and
  // keeps taking them after the guest's side is done: a connect completes in
  // the listener's backlog, so the guest can see all of them established
  // while the last ones still wait for accept().
  std::vector<UniqueFd> accepted;
  std::jthread host([&] {
    while (accepted.size() < kCap && Clock::now() < deadline) {
      if (UniqueFd fd = listener.accept(Millis(50))) accepted.push_back(std::move(fd));
    }
  });
  std::vector<Stream> streams;
  streams.reserve(kRequests);
  for (size_t i = 0; i < kRequests; ++i) streams.push_back(guest().connect_async(7000));
  size_t established = 0;
  size_t refused = 0;
  for (auto& s : streams) {
    while (s.state() == StreamState::kConnecting && Clock::now() < deadline) std::this_thread::sleep_for(Millis(1));
    established += s.established() ? 1 : 0;
    refused += s.refused() ? 1 : 0;
  }
  host.join();
  EXPECT_EQ(established, kCap);
  EXPECT_EQ(accepted.size(), kCap);
  EXPECT_FALSE(listener.accept(Millis(100)).valid()) << "a connection past the cap reached the host";
  EXPECT_EQ(refused, kRequests - kCap) << kRequests - established - refused << " REQUESTs got no answer";

  // The stats and the suppressed-lines summary are logged at exit.
  const auto violations = guest().violations();
  EXPECT_TRUE(violations.empty()) << violations.size() << " guest driver violations, first: " << violations.front();
  guest_.reset();
  ASSERT_TRUE(daemon().running());
  daemon().stop();
  const std::string log = daemon().log();
  EXPECT_NE(log.find("orphan_rsts_dropped=0 "), std::string::npos) << "RST replies were dropped";
  size_t limit_lines = 0;
  size_t summaries = 0;
  std::istringstream in(log);
  for (std::string line; std::getline(in, line);) {
    if (line.find("connection limit") != std::string::npos) ++limit_lines;
    if (line.find("suppressed") != std::string::npos) ++summaries;
  }
  std::cout << "[ flood    ] " << limit_lines << " 'connection limit' lines and " << summaries << " summaries for "
            << refused << " refusals\n";
  EXPECT_LE(limit_lines, 40u) << "refusals at the cap are not rate-limited";
  EXPECT_GE(summaries, 1u) << "no 'N more suppressed' summary";
  daemon_.reset();
}

}  // namespace
}  // namespace vhost_vsock::integration
