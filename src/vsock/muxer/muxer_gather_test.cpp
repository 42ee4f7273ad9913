// Guest data of one TX pass goes to each host socket with one call per
// connection, interleaved connections included, in the order the guest sent it.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "vsock/muxer/muxer_test_fixture.h"

namespace vhost_vsock::vsock::test {
namespace {

std::string chunk(char c, size_t n) {
  return std::string(n, c);
}

TEST_F(MuxerTest, ConsecutiveGuestPacketsOfOnePassAreWrittenTogetherInOrder) {
  auto host = establish_guest_connection();
  const std::string parts[] = {chunk('a', 3000), chunk('b', 3000), chunk('c', 3000), chunk('d', 3000)};
  for (const std::string& part : parts) {
    h->queue_tx(h->guest_header(Op::kRw, kGuestPort, kHostPort, static_cast<uint32_t>(part.size())), bytes_of(part));
  }
  h->kick_tx();
  EXPECT_EQ(read_some(host.get()), parts[0] + parts[1] + parts[2] + parts[3]);
  EXPECT_EQ(h->stats().guest_writes_gathered, 3u);
  EXPECT_EQ(h->stats().bytes_from_guest, 12000u);
  // The credit the guest hears covers all of it.
  auto packets = drain();
  ASSERT_FALSE(packets.empty());
  EXPECT_EQ(packets.back().header.fwd_cnt, 12000u);
}

TEST_F(MuxerTest, InterleavedConnectionsEachGetOneWritePerPassInTheirOwnOrder) {
  auto first = establish_guest_connection(kGuestPort, kHostPort);
  auto second = establish_guest_connection(kGuestPort + 1, kHostPort + 1);
  const std::string a1 = chunk('1', 100), a2 = chunk('2', 200), b1 = chunk('x', 300), a3 = chunk('3', 400);
  h->queue_tx(h->guest_header(Op::kRw, kGuestPort, kHostPort, 100), bytes_of(a1));
  h->queue_tx(h->guest_header(Op::kRw, kGuestPort, kHostPort, 200), bytes_of(a2));
  h->queue_tx(h->guest_header(Op::kRw, kGuestPort + 1, kHostPort + 1, 300), bytes_of(b1));
  h->queue_tx(h->guest_header(Op::kRw, kGuestPort, kHostPort, 400), bytes_of(a3));
  h->kick_tx();
  EXPECT_EQ(read_some(first.get()), a1 + a2 + a3);
  EXPECT_EQ(read_some(second.get()), b1);
  EXPECT_EQ(h->stats().guest_writes_gathered, 2u);  // a2 and a3 join a1's run; b1 starts its own
}

TEST_F(MuxerTest, MoreInterleavedConnectionsThanGatherRunsStillKeepEachStreamsOrder) {
  constexpr int kConnections = 10;  // more than the router's runs: it writes them all and starts again
  std::vector<base::UniqueFd> hosts;
  for (int i = 0; i < kConnections; ++i) {
    hosts.push_back(
        establish_guest_connection(kGuestPort + static_cast<uint32_t>(i), kHostPort + static_cast<uint32_t>(i)));
  }
  for (char round : {'p', 'q'}) {
    for (int i = 0; i < kConnections; ++i) {
      const std::string part = chunk(static_cast<char>(round + i), 100);
      h->queue_tx(
          h->guest_header(Op::kRw, kGuestPort + static_cast<uint32_t>(i), kHostPort + static_cast<uint32_t>(i), 100),
          bytes_of(part));
    }
  }
  h->kick_tx();
  for (int i = 0; i < kConnections; ++i) {
    EXPECT_EQ(read_some(hosts[static_cast<size_t>(i)].get()),
              chunk(static_cast<char>('p' + i), 100) + chunk(static_cast<char>('q' + i), 100))
        << "connection " << i;
  }
  EXPECT_EQ(h->stats().bytes_from_guest, 2000u);
}

TEST_F(MuxerTest, ShutdownInTheSamePassFollowsTheGatheredData) {
  auto host = establish_guest_connection();
  const std::string one = chunk('s', 1500), two = chunk('t', 1500);
  h->queue_tx(h->guest_header(Op::kRw, kGuestPort, kHostPort, 1500), bytes_of(one));
  h->queue_tx(h->guest_header(Op::kRw, kGuestPort, kHostPort, 1500), bytes_of(two));
  h->queue_tx(h->guest_header(Op::kShutdown, kGuestPort, kHostPort, 0, kShutdownRcv | kShutdownSend), {});
  h->kick_tx();
  EXPECT_EQ(read_some(host.get()), one + two);
  EXPECT_TRUE(peer_closed(host.get()));
  auto packets = drain();
  ASSERT_FALSE(packets.empty());
  EXPECT_EQ(packets.back().header.operation(), Op::kRst);
  EXPECT_EQ(h->stats().guest_writes_gathered, 1u);
}

TEST_F(MuxerTest, CreditViolationAfterGatheredDataStillDeliversWhatWasAccepted) {
  auto host = establish_guest_connection();
  const std::string fits = chunk('f', 1000);
  const std::string too_much(16 * 1024, 'x');  // with `fits` beyond the 16 KiB window
  h->queue_tx(h->guest_header(Op::kRw, kGuestPort, kHostPort, 1000), bytes_of(fits));
  h->queue_tx(h->guest_header(Op::kRw, kGuestPort, kHostPort, static_cast<uint32_t>(too_much.size())),
              bytes_of(too_much));
  h->kick_tx();
  EXPECT_EQ(read_some(host.get()), fits);
  EXPECT_EQ(h->stats().credit_violations, 1u);
  EXPECT_TRUE(peer_closed(host.get()));
}

}  // namespace
}  // namespace vhost_vsock::vsock::test
