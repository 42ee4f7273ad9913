#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <string>
#include <thread>

#include "vsock/muxer/muxer_test_fixture.h"

namespace vhost_vsock::vsock::test {
namespace {

using Clock = std::chrono::steady_clock;
using testing::kTimerSlack;

TEST_F(MuxerTest, GuestConnectWithoutListenerIsResetAtOnce) {
  h->send(h->guest_header(Op::kRequest, kGuestPort, 4321));
  auto packets = drain();
  ASSERT_EQ(packets.size(), 1u);
  EXPECT_EQ(packets[0].header.operation(), Op::kRst);
  EXPECT_EQ(packets[0].header.src_port, 4321u);
  EXPECT_EQ(packets[0].header.dst_port, kGuestPort);
  EXPECT_EQ(packets[0].header.src_cid, kCidHost);
  EXPECT_EQ(h->stats().host_connects_refused, 1u);
  EXPECT_EQ(h->stats().connections_active, 0u);
}

TEST_F(MuxerTest, GuestConnectAndDataBothWays) {
  auto host = establish_guest_connection();
  EXPECT_EQ(h->stats().connections_opened, 1u);
  h->send(h->guest_header(Op::kRw, kGuestPort, kHostPort, 5), bytes_of("hello"));
  EXPECT_EQ(read_some(host.get()), "hello");
  ASSERT_EQ(::write(host.get(), "world", 5), 5);
  auto packets = drain();
  ASSERT_EQ(packets.size(), 1u);
  EXPECT_EQ(packets[0].header.operation(), Op::kRw);
  EXPECT_EQ(text(packets[0].payload), "world");
  EXPECT_EQ(packets[0].header.fwd_cnt, 5u);  // every packet carries fresh credit
  EXPECT_EQ(h->stats().bytes_from_guest, 5u);
  EXPECT_EQ(h->stats().bytes_to_guest, 5u);
}

TEST_F(MuxerTest, ManyConnectionsOpenAndCloseCleanly) {
  listeners[kHostPort] = MuxerHarness::listen_unix(h->port_path(kHostPort));
  for (uint32_t port = 1; port <= 100; ++port) h->send(h->guest_header(Op::kRequest, port, kHostPort));
  h->pump();
  EXPECT_EQ(h->stats().connections_active, 100u);
  size_t responses = 0;
  for (int i = 0; i < 10; ++i) {
    for (auto& p : h->received()) responses += p.header.operation() == Op::kResponse;
    h->kick_rx();  // the guest kicks after refilling its ring
    h->pump(20ms);
  }
  EXPECT_EQ(responses, 100u);
  for (uint32_t port = 1; port <= 100; ++port) h->send(h->guest_header(Op::kRst, port, kHostPort));
  EXPECT_EQ(h->stats().connections_active, 0u);
  EXPECT_EQ(h->stats().connections_opened, 100u);
}

TEST_F(MuxerTest, HostDataIsSharedFairlyAcrossConnections) {
  auto a = establish_guest_connection(1);
  auto b = establish_guest_connection(2);
  auto data = pattern(200000);
  ASSERT_GT(::write(a.get(), data.data(), data.size()), 100000);
  ASSERT_GT(::write(b.get(), data.data(), data.size()), 100000);
  h->pump();
  // 64 buffers of 4 KiB: neither connection may take them all.
  size_t to_a = 0, to_b = 0;
  for (auto& p : h->received(/*repost=*/false)) {
    (p.header.dst_port == 1 ? to_a : to_b) += p.payload.size();
  }
  EXPECT_GT(to_a, 0u);
  EXPECT_GT(to_b, 0u);
  EXPECT_EQ(to_a + to_b, 64u * MuxerHarness::kRxPayload);
}

TEST_F(MuxerTest, CreditViolationResets) {
  auto host = establish_guest_connection();
  // The host never reads; the guest ignores our buf_alloc of 16 KiB.
  int size = 1;
  ::setsockopt(host.get(), SOL_SOCKET, SO_RCVBUF, &size, sizeof(size));
  auto chunk = pattern(kMaxPacketPayload);
  for (int i = 0; i < 20 && h->stats().credit_violations == 0; ++i) {
    h->send(h->guest_header(Op::kRw, kGuestPort, kHostPort, static_cast<uint32_t>(chunk.size())), chunk);
  }
  EXPECT_EQ(h->stats().credit_violations, 1u);
  auto packets = drain();
  ASSERT_FALSE(packets.empty());
  EXPECT_EQ(packets.back().header.operation(), Op::kRst);
  EXPECT_EQ(h->stats().connections_active, 0u);
}

TEST_F(MuxerTest, NonReadingHostThrottlesGuestByCreditThenResumes) {
  auto host = establish_guest_connection();
  // Fill the host socket first so everything after it must be buffered.
  std::vector<uint8_t> sent;
  uint32_t guest_sent = 0;
  uint32_t peer_fwd_cnt = 0;
  const uint32_t buf_alloc = 16 * 1024;
  // A well-behaved guest: sends only what its view of our credit allows.
  for (int round = 0; round < 2000; ++round) {
    const uint32_t credit = buf_alloc - (guest_sent - peer_fwd_cnt);
    if (credit == 0) break;
    auto data = pattern(std::min<uint32_t>(credit, 4096), static_cast<size_t>(round));
    h->send(h->guest_header(Op::kRw, kGuestPort, kHostPort, static_cast<uint32_t>(data.size())), data);
    sent.insert(sent.end(), data.begin(), data.end());
    guest_sent += static_cast<uint32_t>(data.size());
    for (auto& p : drain(5ms)) peer_fwd_cnt = p.header.fwd_cnt;
  }
  EXPECT_EQ(h->stats().credit_violations, 0u);
  EXPECT_EQ(guest_sent - peer_fwd_cnt, buf_alloc);  // stalled exactly at zero credit
  // Now the host reads everything; the guest must hear about the freed credit.
  std::string received;
  for (int i = 0; i < 200 && received.size() < sent.size(); ++i) {
    received += read_some(host.get(), 5ms);
    h->pump(5ms);
  }
  ASSERT_EQ(received.size(), sent.size());
  EXPECT_TRUE(std::equal(received.begin(), received.end(), reinterpret_cast<const char*>(sent.data())));
  for (auto& p : h->received()) peer_fwd_cnt = p.header.fwd_cnt;
  EXPECT_EQ(peer_fwd_cnt, guest_sent);  // no stall with everything forwarded
}

TEST_F(MuxerTest, HostToGuestRespectsGuestCreditAndAsksOnce) {
  base::UniqueFd host;
  auto packets = host_writes_beyond_guest_credit(host, 8192, 20000);
  EXPECT_EQ(rw_payload_bytes(packets), 8192u);
  // This guest never returns credit unasked: after credit_request_delay the device asks, once.
  size_t credit_requests = count_op(packets, Op::kCreditRequest);
  if (credit_requests == 0) credit_requests = count_op(wait_for_packet(), Op::kCreditRequest);
  h->run_for(50ms);
  credit_requests += count_op(h->received(), Op::kCreditRequest);
  EXPECT_EQ(credit_requests, 1u);
  // The guest consumed it all: 8 KiB more may flow.
  h->guest_fwd_cnt = 8192;
  h->send(h->guest_header(Op::kCreditUpdate, kGuestPort, kHostPort));
  EXPECT_EQ(rw_payload_bytes(drain()), 8192u);
}

TEST_F(MuxerTest, HostDataWithoutGuestCreditLeavesTheLoopIdle) {
  base::UniqueFd host;
  ASSERT_EQ(rw_payload_bytes(host_writes_beyond_guest_credit(host, 4096, 20000)), 4096u);
  // Host bytes wait for credit; the RX path must sleep, not poll for it.
  const uint64_t passes = h->stats().rx_passes;
  h->run_for(50ms);
  EXPECT_LE(h->stats().rx_passes - passes, 1u);
  h->guest_fwd_cnt = 4096;
  h->send(h->guest_header(Op::kCreditUpdate, kGuestPort, kHostPort));
  EXPECT_EQ(rw_payload_bytes(drain()), 4096u);
}

TEST_F(MuxerTest, BulkHostToGuestFillsManySmallBuffersIntact) {
  auto host = establish_guest_connection();
  h->post_rx_buffers(64);  // 128 in all: the whole ring
  const size_t total = 1 << 20;
  auto data = pattern(total, 3);
  size_t written = 0;
  std::vector<uint8_t> got;
  for (int i = 0; i < 5000 && got.size() < total; ++i) {
    if (written < total) {
      ssize_t n = ::write(host.get(), data.data() + written, total - written);
      if (n > 0) written += static_cast<size_t>(n);
    }
    h->loop().run_once(1ms);
    for (auto& p : h->received()) {
      ASSERT_EQ(p.header.operation(), Op::kRw);
      ASSERT_LE(p.payload.size(), MuxerHarness::kRxPayload);
      got.insert(got.end(), p.payload.begin(), p.payload.end());
    }
    // The guest reads as it goes and tells us.
    h->guest_fwd_cnt = static_cast<uint32_t>(got.size());
    h->send(h->guest_header(Op::kCreditUpdate, kGuestPort, kHostPort));
  }
  ASSERT_EQ(got.size(), total);
  EXPECT_EQ(got, data);
  EXPECT_GE(h->stats().packets_to_guest, total / MuxerHarness::kRxPayload);
}

TEST_F(MuxerTest, GuestHalfCloseThenHostStillSends) {
  auto host = establish_guest_connection();
  h->send(h->guest_header(Op::kRw, kGuestPort, kHostPort, 3), bytes_of("abc"));
  h->send(h->guest_header(Op::kShutdown, kGuestPort, kHostPort, 0, kShutdownSend));
  EXPECT_EQ(read_some(host.get()), "abc");
  EXPECT_TRUE(peer_closed(host.get()));  // EOF for the host's reads
  ASSERT_EQ(::write(host.get(), "reply", 5), 5);
  auto packets = drain();
  ASSERT_EQ(packets.size(), 1u);
  EXPECT_EQ(text(packets[0].payload), "reply");
}

TEST_F(MuxerTest, HostHalfCloseThenGuestStillSends) {
  auto host = establish_guest_connection();
  ASSERT_EQ(::write(host.get(), "last", 4), 4);
  ::shutdown(host.get(), SHUT_WR);
  auto packets = drain();
  ASSERT_EQ(packets.size(), 2u);
  EXPECT_EQ(text(packets[0].payload), "last");
  EXPECT_EQ(packets[1].header.operation(), Op::kShutdown);
  EXPECT_EQ(packets[1].header.flags, kShutdownSend);
  h->send(h->guest_header(Op::kRw, kGuestPort, kHostPort, 4), bytes_of("more"));
  EXPECT_EQ(read_some(host.get()), "more");
}

TEST_F(MuxerTest, GuestCloseGetsRstAndHostSeesEof) {
  auto host = establish_guest_connection();
  h->send(h->guest_header(Op::kShutdown, kGuestPort, kHostPort, 0, kShutdownRcv | kShutdownSend));
  auto packets = drain();
  ASSERT_EQ(packets.size(), 1u);
  EXPECT_EQ(packets[0].header.operation(), Op::kRst);
  EXPECT_TRUE(peer_closed(host.get()));
  EXPECT_EQ(h->stats().connections_active, 0u);
}

TEST_F(MuxerTest, HostCloseSendsFullShutdownThenForgetsOnGuestRst) {
  auto host = establish_guest_connection();
  host.reset();
  auto packets = drain();
  ASSERT_EQ(packets.size(), 1u);
  EXPECT_EQ(packets[0].header.operation(), Op::kShutdown);
  EXPECT_EQ(packets[0].header.flags, kShutdownRcv | kShutdownSend);
  EXPECT_EQ(h->stats().connections_active, 1u);
  h->send(h->guest_header(Op::kRst, kGuestPort, kHostPort));
  EXPECT_EQ(h->stats().connections_active, 0u);
  EXPECT_TRUE(drain().empty());
}

// The RST comes when shutdown_timeout runs out (the clock starts before the
// host closes), not before and not much after.
TEST_F(MuxerTest, HostCloseKillTimerSendsRstIfGuestStaysSilent) {
  auto host = establish_guest_connection();
  const auto closed_by = Clock::now();
  host.reset();
  ASSERT_EQ(drain().size(), 1u);
  auto packets = wait_for_packet();
  const auto reset_after = Clock::now() - closed_by;
  h->pump();
  for (auto& later : h->received()) packets.push_back(std::move(later));
  ASSERT_EQ(packets.size(), 1u);
  EXPECT_EQ(packets[0].header.operation(), Op::kRst);
  EXPECT_GE(reset_after, limits().shutdown_timeout) << "reset before shutdown_timeout";
  EXPECT_LT(reset_after, limits().shutdown_timeout + kTimerSlack) << "reset long after shutdown_timeout";
  EXPECT_EQ(h->stats().connections_active, 0u);
}

// A well-behaved guest writes to a host that does not read until our buffer
// is full; returns what it sent, or nothing if it never stalled.
std::vector<uint8_t> send_until_credit_runs_out(MuxerHarness& h, uint32_t buf_alloc) {
  std::vector<uint8_t> sent;
  uint32_t guest_sent = 0, peer_fwd_cnt = 0;
  for (int round = 0; round < 5000; ++round) {
    const uint32_t credit = buf_alloc - (guest_sent - peer_fwd_cnt);
    if (credit == 0) return sent;
    auto data = pattern(std::min<uint32_t>(credit, 4096), static_cast<size_t>(round));
    h.send(h.guest_header(Op::kRw, kGuestPort, kHostPort, static_cast<uint32_t>(data.size())), data);
    sent.insert(sent.end(), data.begin(), data.end());
    guest_sent += static_cast<uint32_t>(data.size());
    h.pump(2ms);
    for (auto& p : h.received()) peer_fwd_cnt = p.header.fwd_cnt;
  }
  return {};
}

// Review finding: a guest write racing the host's close reset the connection,
// so the guest lost the reply the host had written just before closing.
TEST_F(MuxerTest, GuestWriteRacingHostCloseStillDeliversTheHostsReply) {
  auto host = establish_guest_connection();
  ASSERT_EQ(::write(host.get(), "reply", 5), 5);
  host.reset();
  // The guest's next write is processed before the device has seen the close.
  h->send(h->guest_header(Op::kRw, kGuestPort, kHostPort, 4), bytes_of("more"));
  std::string data;
  uint32_t shutdown_flags = 0;
  for (auto& p : drain()) {
    EXPECT_NE(p.header.operation(), Op::kRst);
    if (p.header.operation() == Op::kRw) data += text(p.payload);
    if (p.header.operation() == Op::kShutdown) shutdown_flags |= p.header.flags;
  }
  EXPECT_EQ(data, "reply");
  EXPECT_EQ(shutdown_flags, kShutdownRcv | kShutdownSend);
  EXPECT_EQ(h->stats().resets_sent, 0u);
  h->send(h->guest_header(Op::kRst, kGuestPort, kHostPort));
  EXPECT_EQ(h->stats().connections_active, 0u);
}

// Review finding: after the guest closed, a host still reading (slowly) what it
// had sent was cut off after shutdown_timeout even though it kept making
// progress, and saw a clean EOF on a truncated stream.
TEST_F(MuxerTest, SlowButSteadyHostReaderGetsEverythingAfterGuestClose) {
  MuxerLimits big = limits();
  big.tx_buffer_size = 256 * 1024;  // takes several host reads to drain
  big.shutdown_timeout = 600ms;     // a read may come 500 ms late (a stalled test thread) and still count
  h.reset();
  h = std::make_unique<MuxerHarness>(big);
  h->post_rx_buffers(64);
  auto listener = MuxerHarness::listen_unix(h->port_path(kHostPort));
  h->send(h->guest_header(Op::kRequest, kGuestPort, kHostPort));
  ASSERT_EQ(drain().size(), 1u);  // RESPONSE
  base::UniqueFd host(::accept4(listener.get(), nullptr, nullptr, SOCK_NONBLOCK));
  ASSERT_TRUE(host.valid());

  std::vector<uint8_t> sent = send_until_credit_runs_out(*h, big.tx_buffer_size);
  ASSERT_FALSE(sent.empty());
  h->send(h->guest_header(Op::kShutdown, kGuestPort, kHostPort, 0, kShutdownRcv | kShutdownSend));

  // One small read per 100 ms: each pause is shorter than shutdown_timeout,
  // all of them together much longer.
  std::string received;
  for (int i = 0; i < 20; ++i) {
    char buf[4096];
    const ssize_t n = ::read(host.get(), buf, sizeof(buf));
    if (n > 0) received.append(buf, static_cast<size_t>(n));
    h->run_for(100ms);
  }
  for (int i = 0; i < 200 && received.size() < sent.size(); ++i) {
    received += read_some(host.get(), 5ms);
    h->pump(5ms);
  }
  ASSERT_EQ(received.size(), sent.size());
  EXPECT_TRUE(std::equal(received.begin(), received.end(), reinterpret_cast<const char*>(sent.data())));
  h->pump(50ms);
  EXPECT_TRUE(peer_closed(host.get()));
  bool rst = false;
  for (auto& p : h->received()) rst |= p.header.operation() == Op::kRst;
  EXPECT_TRUE(rst);  // the normal end of a guest close
}

TEST_F(MuxerTest, SpoofedSourceIsDroppedWithoutReplyAndUnknownDestinationGetsRst) {
  auto spoofed = h->guest_header(Op::kRequest, kGuestPort, kHostPort);
  spoofed.src_cid = 4;
  h->send(spoofed);
  EXPECT_TRUE(drain().empty());
  EXPECT_EQ(h->stats().dropped_bad_address, 1u);
  // No sibling has CID 5: the guest's connect fails at once, not after its timeout.
  auto wrong_dst = h->guest_header(Op::kRequest, kGuestPort, kHostPort);
  wrong_dst.dst_cid = 5;
  h->send(wrong_dst);
  auto packets = drain();
  ASSERT_EQ(packets.size(), 1u);
  EXPECT_EQ(packets[0].header.operation(), Op::kRst);
  EXPECT_EQ(packets[0].header.src_cid, 5u);
  EXPECT_EQ(packets[0].header.dst_cid, MuxerHarness::kGuestCid);
  EXPECT_EQ(packets[0].header.src_port, kHostPort);
  EXPECT_EQ(packets[0].header.dst_port, kGuestPort);
  EXPECT_EQ(h->stats().sibling_refused, 1u);
  h->reclaim_tx();
  EXPECT_EQ(h->tx_ring().in_flight(), 0u);  // TX buffers still returned
}

TEST_F(MuxerTest, OrphanRstIsNotAnswered) {
  h->send(h->guest_header(Op::kRst, kGuestPort, kHostPort));
  EXPECT_TRUE(drain().empty());
  EXPECT_EQ(h->stats().resets_sent, 0u);
}

TEST_F(MuxerTest, PacketsForUnknownConnectionsGetRst) {
  for (Op op : {Op::kRw, Op::kShutdown, Op::kCreditUpdate, Op::kCreditRequest, Op::kResponse}) {
    h->send(h->guest_header(op, kGuestPort, kHostPort));
  }
  auto packets = drain();
  ASSERT_EQ(packets.size(), 5u);
  for (auto& p : packets) EXPECT_EQ(p.header.operation(), Op::kRst);
}

TEST_F(MuxerTest, UnknownOpResetsConnection) {
  auto host = establish_guest_connection();
  auto bad = h->guest_header(Op::kRw, kGuestPort, kHostPort);
  bad.op = 42;
  h->send(bad);
  auto packets = drain();
  ASSERT_EQ(packets.size(), 1u);
  EXPECT_EQ(packets[0].header.operation(), Op::kRst);
  EXPECT_EQ(h->stats().dropped_malformed, 1u);
  EXPECT_TRUE(peer_closed(host.get()));
}

TEST_F(MuxerTest, SeqpacketIsRefusedWithRstOfTheSameType) {
  auto request = h->guest_header(Op::kRequest, kGuestPort, kHostPort);
  request.type = static_cast<uint16_t>(SocketType::kSeqpacket);
  h->send(request);
  auto packets = drain();
  ASSERT_EQ(packets.size(), 1u);
  EXPECT_EQ(packets[0].header.operation(), Op::kRst);
  EXPECT_EQ(packets[0].header.type, static_cast<uint16_t>(SocketType::kSeqpacket));
}

TEST_F(MuxerTest, ConnectionCapRefusesWithRst) {
  h.reset();
  auto l = limits();
  l.max_connections = 2;
  h = std::make_unique<MuxerHarness>(l);
  h->post_rx_buffers(16);
  auto a = establish_guest_connection(1);
  auto b = establish_guest_connection(2);
  h->send(h->guest_header(Op::kRequest, 3, kHostPort));
  auto packets = drain();
  ASSERT_EQ(packets.size(), 1u);
  EXPECT_EQ(packets[0].header.operation(), Op::kRst);
  EXPECT_EQ(h->stats().connections_active, 2u);
}

TEST_F(MuxerTest, ControlPacketsWaitForRxBuffers) {
  h.reset();
  h = std::make_unique<MuxerHarness>(limits());
  listeners[kHostPort] = MuxerHarness::listen_unix(h->port_path(kHostPort));
  h->send(h->guest_header(Op::kRequest, kGuestPort, kHostPort));
  h->pump(20ms);
  EXPECT_TRUE(h->received().empty());
  h->post_rx_buffers(4);
  h->kick_rx();
  auto packets = drain();
  ASSERT_EQ(packets.size(), 1u);
  EXPECT_EQ(packets[0].header.operation(), Op::kResponse);
}

TEST_F(MuxerTest, StarvedRxQueueAsksForAKickWithEventIdx) {
  h.reset();
  h = std::make_unique<MuxerHarness>(limits(), 256, 64 << 20, true, "/tmp", /*event_idx=*/true);
  listeners[kHostPort] = MuxerHarness::listen_unix(h->port_path(kHostPort));
  // Use up avail_event's initial position so only a fresh one can ask for the kick.
  h->post_rx_buffers(3);
  for (uint32_t port = 1; port <= 4; ++port) h->send(h->guest_header(Op::kRw, port, 9));
  h->pump(20ms);
  EXPECT_EQ(h->received(/*repost=*/false).size(), 3u);  // three RSTs, the fourth waits
  const uint16_t old_avail = h->rx_ring().avail_idx();
  h->post_rx_buffers(1);
  EXPECT_TRUE(h->rx_ring().device_wants_kick(old_avail));
  h->kick_rx();
  auto packets = drain();
  ASSERT_EQ(packets.size(), 1u);
  EXPECT_EQ(packets[0].header.operation(), Op::kRst);
}

TEST_F(MuxerTest, TooSmallRxBufferIsReturnedEmpty) {
  h.reset();
  h = std::make_unique<MuxerHarness>(limits());
  const uint64_t tiny = h->ram().alloc(16);
  const testing::DriverVring::Buffer buffers[] = {{tiny, 16, true}};
  ASSERT_TRUE(h->rx_ring().add_chain(buffers));
  h->post_rx_buffers(1);
  h->send(h->guest_header(Op::kRw, kGuestPort, kHostPort));  // provokes an RST
  h->pump();
  auto used = h->rx_ring().pop_used();
  ASSERT_TRUE(used);
  EXPECT_EQ(used->len, 0u);
  EXPECT_EQ(h->stats().rx_chains_too_small, 1u);
  EXPECT_EQ(h->stats().resets_sent, 1u);
}

TEST_F(MuxerTest, HostThatStopsReadingAfterGuestCloseIsCutOff) {
  auto host = establish_guest_connection();
  std::vector<uint8_t> sent = send_until_credit_runs_out(*h, 16 * 1024);
  ASSERT_FALSE(sent.empty());
  const auto closed_by = Clock::now();
  h->send(h->guest_header(Op::kShutdown, kGuestPort, kHostPort, 0, kShutdownRcv | kShutdownSend));
  ASSERT_TRUE(h->run_until([&] { return h->stats().connections_active == 0; }));  // no host read meanwhile
  const auto cut_after = Clock::now() - closed_by;
  EXPECT_GE(cut_after, limits().shutdown_timeout) << "cut off before shutdown_timeout";
  EXPECT_LT(cut_after, limits().shutdown_timeout + kTimerSlack) << "cut off long after shutdown_timeout";
  h->pump();
  bool rst = false;
  for (auto& p : h->received()) rst |= p.header.operation() == Op::kRst;
  EXPECT_TRUE(rst);
  std::string received;
  for (std::string chunk = read_some(host.get(), 5ms); !chunk.empty(); chunk = read_some(host.get(), 5ms)) {
    received += chunk;
  }
  EXPECT_LT(received.size(), sent.size());  // our buffer was dropped
  EXPECT_TRUE(peer_closed(host.get()));
}

// Review finding: an RX chain the queue rejected was returned to the guest
// without an interrupt, so the guest did not learn of it.
TEST_F(MuxerTest, InvalidRxChainIsReturnedWithAnInterrupt) {
  h.reset();
  h = std::make_unique<MuxerHarness>(limits());
  h->rx_ring().write_descriptor(0, /*addr=*/1ULL << 40, 4096, testing::kDescFlagWrite, 0);  // outside guest RAM
  h->rx_ring().publish_head(0);
  h->send(h->guest_header(Op::kRw, kGuestPort, kHostPort));  // provokes an RST, which finds only the bad chain
  h->pump();
  auto used = h->rx_ring().pop_used_raw();
  ASSERT_TRUE(used);
  EXPECT_EQ(used->id, 0u);
  EXPECT_EQ(used->len, 0u);
  EXPECT_EQ(h->stats().dropped_malformed, 1u);
  EXPECT_EQ(h->rx_interrupts(), 1u);
}

// Review finding: filling RX chains with host data skipped chains it could not
// use without any bound, so a guest that kept posting bad chains as fast as
// the device returned them held the worker in one pass for as long as it liked.
TEST_F(MuxerTest, GuestFeedingBadRxChainsCannotHoldTheWorker) {
  h.reset();
  h = std::make_unique<MuxerHarness>(limits(), /*queue_size=*/4096);
  h->post_rx_buffers(1);  // for the RESPONSE; not reposted
  auto listener = MuxerHarness::listen_unix(h->port_path(kHostPort));
  h->send(h->guest_header(Op::kRequest, kGuestPort, kHostPort));
  h->pump();
  ASSERT_EQ(h->received(/*repost=*/false).size(), 1u);
  base::UniqueFd host(::accept4(listener.get(), nullptr, nullptr, SOCK_NONBLOCK));
  ASSERT_TRUE(host.valid());
  const uint16_t size = h->rx_ring().size();
  // A long chain whose last buffer lies outside guest RAM: cheap for the guest
  // to post again and again, each costs the device a walk.
  constexpr uint16_t kLength = 64;
  const uint16_t bad = static_cast<uint16_t>(size - kLength);  // free descriptors
  const uint64_t scratch = h->ram().alloc(16);
  for (uint16_t i = 0; i + 1 < kLength; ++i) {
    h->rx_ring().write_descriptor(static_cast<uint16_t>(bad + i), scratch, 16,
                                  testing::kDescFlagWrite | testing::kDescFlagNext, static_cast<uint16_t>(bad + i + 1));
  }
  h->rx_ring().write_descriptor(static_cast<uint16_t>(bad + kLength - 1), /*addr=*/1ULL << 40, 4096,
                                testing::kDescFlagWrite, 0);
  // The guest, on another vCPU, posts the chain again as soon as there is room.
  std::atomic<bool> stop{false};
  std::atomic<uint32_t> posted{0};
  std::thread guest([&] {
    const auto deadline = std::chrono::steady_clock::now() + 3s;
    testing::DriverVring& ring = h->rx_ring();
    while (!stop.load() && std::chrono::steady_clock::now() < deadline) {
      if (static_cast<uint16_t>(ring.avail_idx() - ring.device_used_idx()) < size) {
        ring.publish_head(bad);
        posted.fetch_add(1);
      }
    }
  });
  while (posted.load() < size) std::this_thread::yield();
  ASSERT_EQ(::write(host.get(), "data", 4), 4);
  // The host data sends the device looking for RX chains: no loop iteration
  // may take long or consume much more than a ring's worth.
  auto longest = std::chrono::steady_clock::duration::zero();
  uint64_t most = 0;
  for (int i = 0; i < 20; ++i) {
    const uint64_t before = h->stats().dropped_malformed;
    const auto start = std::chrono::steady_clock::now();
    h->loop().run_once(std::chrono::milliseconds(10));
    longest = std::max(longest, std::chrono::steady_clock::now() - start);
    most = std::max(most, h->stats().dropped_malformed - before);
  }
  stop = true;
  guest.join();
  EXPECT_LT(longest, 1s);
  EXPECT_LE(most, 2u * size);
  EXPECT_EQ(h->stats().connections_active, 1u);
}

TEST_F(MuxerTest, ResetAllConnectionsClosesHostSockets) {
  auto a = establish_guest_connection(1);
  auto [b, request] = start_host_connection("CONNECT 7\n", 7);
  h->muxer().reset_all_connections();
  EXPECT_EQ(h->stats().connections_active, 0u);
  EXPECT_TRUE(peer_closed(a.get()));
  EXPECT_TRUE(peer_closed(b.get()));
  h->send(h->guest_header(Op::kRw, 1, kHostPort, 1), bytes_of("x"));
  auto packets = drain();
  ASSERT_EQ(packets.size(), 1u);
  EXPECT_EQ(packets[0].header.operation(), Op::kRst);
}

TEST_F(MuxerTest, DetachedQueuesAreNotTouched) {
  h->muxer().detach_queue(Muxer::kRxQueue);
  h->muxer().detach_queue(Muxer::kTxQueue);
  h->queue_tx(h->guest_header(Op::kRequest, kGuestPort, 9), {});
  h->kick_tx();
  h->pump(20ms);
  EXPECT_EQ(h->stats().packets_from_guest, 0u);
  EXPECT_EQ(h->reclaim_tx(), 0u);
  h->muxer().attach_queue(Muxer::kTxQueue, h->tx_queue());
  h->muxer().attach_queue(Muxer::kRxQueue, h->rx_queue());
  auto packets = drain();
  EXPECT_EQ(h->stats().packets_from_guest, 1u);
  ASSERT_EQ(packets.size(), 1u);
  EXPECT_EQ(packets[0].header.operation(), Op::kRst);
}

TEST_F(MuxerTest, NegotiatedFeaturesReachTheMuxer) {
  EXPECT_EQ(h->muxer().negotiated_features(), 0u);
  const uint64_t features = virtio::kFeatureVersion1 | kFeatureStream | kFeatureSeqpacket;
  h->muxer().set_negotiated_features(features);
  EXPECT_EQ(h->muxer().negotiated_features(), features);
}

}  // namespace
}  // namespace vhost_vsock::vsock::test
