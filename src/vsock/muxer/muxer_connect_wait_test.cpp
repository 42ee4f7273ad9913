// Connect-wait: a host CONNECT the guest refuses (nothing listens yet) is
// retried with backoff for MuxerLimits::connect_wait, then given up.
#include <gtest/gtest.h>

#include <chrono>
#include <string>

#include "vsock/muxer/muxer_test_fixture.h"

namespace vhost_vsock::vsock::test {
namespace {

class ConnectWaitTest : public MuxerTest {
 protected:
  void SetUp() override {
    MuxerLimits waiting = limits();
    waiting.connect_wait = 400ms;
    waiting.request_timeout = 2000ms;  // only the guest's RSTs end an attempt here
    h = std::make_unique<MuxerHarness>(waiting);
    h->post_rx_buffers(64);
  }

  // The guest refuses `request`; returns the next REQUEST the device sends for
  // the same ports within `within`, or nullopt.
  std::optional<PacketHeader> refuse_and_wait_retry(const PacketHeader& request, std::chrono::milliseconds within) {
    h->send(h->guest_header(Op::kRst, kGuestPort, request.src_port));
    const auto deadline = std::chrono::steady_clock::now() + within;
    while (std::chrono::steady_clock::now() < deadline) {
      h->run_for(5ms);
      for (const auto& packet : h->received()) {
        const PacketHeader& header = packet.header;
        if (header.operation() == Op::kRequest && header.src_port == request.src_port &&
            header.dst_port == request.dst_port) {
          return header;
        }
      }
    }
    return std::nullopt;
  }
};

TEST_F(ConnectWaitTest, GuestRstIsRetriedUntilTheGuestAccepts) {
  auto [host, request] = start_host_connection("CONNECT 40000\n");
  auto retry = refuse_and_wait_retry(request, 100ms);
  ASSERT_TRUE(retry) << "no second REQUEST after the guest's RST";
  EXPECT_FALSE(peer_closed(host.get())) << "the host program was closed while waiting";
  retry = refuse_and_wait_retry(*retry, 100ms);
  ASSERT_TRUE(retry) << "no third REQUEST";
  // The guest's listener is up now.
  h->send(h->guest_header(Op::kResponse, kGuestPort, request.src_port));
  EXPECT_EQ(read_some(host.get()), "OK " + std::to_string(request.src_port) + "\n");
  EXPECT_EQ(h->stats().connect_wait_retries, 2u);
  EXPECT_EQ(h->stats().handshake_failures, 0u);
  EXPECT_EQ(h->stats().connections_opened, 1u);
}

TEST_F(ConnectWaitTest, AGuestThatKeepsRefusingIsGivenUpAfterTheWait) {
  const auto start = std::chrono::steady_clock::now();
  auto [host, request] = start_host_connection("CONNECT 40000\n");
  std::optional<PacketHeader> attempt = request;
  int attempts = 1;
  while (attempt && std::chrono::steady_clock::now() - start < 4s) {
    attempt = refuse_and_wait_retry(*attempt, 1000ms);
    if (attempt) ++attempts;
  }
  h->pump(50ms);
  const auto elapsed = std::chrono::steady_clock::now() - start;
  EXPECT_TRUE(peer_closed(host.get()));
  EXPECT_EQ(read_some(host.get(), 0ms), "");  // no OK line
  EXPECT_GE(elapsed, 400ms) << "gave up before connect_wait";
  EXPECT_LT(elapsed, 4s) << "kept retrying past connect_wait";
  EXPECT_GE(attempts, 3);
  EXPECT_EQ(h->stats().connect_wait_retries, static_cast<uint64_t>(attempts - 1));
  EXPECT_EQ(h->stats().handshake_failures, 1u);
  EXPECT_EQ(h->stats().connections_active, 0u);
}

// As without connect-wait, a host program may write and leave before the
// guest answers: its bytes still reach the guest, then EOF.
TEST_F(ConnectWaitTest, BytesOfAHostProgramThatLeftWhileWaitingAreDelivered) {
  auto [host, request] = start_host_connection("CONNECT 40000\nbye");
  host.reset();
  auto retry = refuse_and_wait_retry(request, 100ms);
  ASSERT_TRUE(retry);
  h->send(h->guest_header(Op::kResponse, kGuestPort, request.src_port));
  std::string delivered;
  bool shutdown_seen = false;
  for (int i = 0; i < 10 && !shutdown_seen; ++i) {
    for (const auto& packet : drain(20ms)) {
      if (packet.header.operation() == Op::kRw) delivered += text(packet.payload);
      if (packet.header.operation() == Op::kShutdown) shutdown_seen = true;
    }
  }
  EXPECT_EQ(delivered, "bye");
  EXPECT_TRUE(shutdown_seen) << "the guest was not told the host side is gone";
}

}  // namespace
}  // namespace vhost_vsock::vsock::test
