// --forward-cid / --forward-listen through the muxer, with stand-in address
// families (never AF_VSOCK on the test host): AF_UNIX for connects that
// finish at once and for the listeners, AF_INET loopback for connects that
// are still in progress (the router's kConnectingToHost state).
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/un.h>

#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

#include "base/unix_socket_address.h"
#include "vsock/muxer/muxer_test_fixture.h"
#include "vsock/transport/forward_test_support.h"

namespace vhost_vsock::vsock::test {
namespace {

using namespace forward_test;

constexpr uint32_t kForwardCid = 1;
constexpr uint32_t kListenPort = 9001;

class ForwardTest : public MuxerTest {
 protected:
  void SetUp() override {
    char dir_template[] = "/tmp/vmfXXXXXX";
    ASSERT_NE(::mkdtemp(dir_template), nullptr);
    dir = dir_template;
  }
  void TearDown() override {
    h.reset();
    std::error_code ignored;
    std::filesystem::remove_all(dir, ignored);
  }

  // Guest connects to port P go to `connect_to(P)`; kListenPort listens on an AF_UNIX stand-in.
  void start(ForwardAddressFor connect_to, MuxerLimits limits_used) {
    h = std::make_unique<MuxerHarness>(limits_used, 256, 64 << 20, true, "/tmp", false, [&](MuxerOptions& options) {
      VsockForwarding forward;
      forward.cid = kForwardCid;
      forward.listen_ports = {kListenPort};
      forward.connect_address = std::move(connect_to);
      forward.listen_address = [this](uint32_t port) { return unix_address(listen_path(port)); };
      options.forward = std::move(forward);
    });
    h->post_rx_buffers(64);
  }
  void start(ForwardAddressFor connect_to) { start(std::move(connect_to), limits()); }
  std::string listen_path(uint32_t port) const { return dir + "/fl" + std::to_string(port); }

  // A loopback TCP listener (in *port) whose backlog of 0 is already taken
  // by one unaccepted connection, so the next connect to it stays in
  // progress; both stay open until the test ends.
  void fill_backlog(uint16_t* port) {
    full_listener_ = tcp_listener(port, 0, SOCK_NONBLOCK);
    backlog_filler_.reset(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
    const ForwardAddress address = loopback_address(*port);
    ASSERT_EQ(::connect(backlog_filler_.get(), reinterpret_cast<const sockaddr*>(&address.storage), address.length), 0);
  }

  std::string dir;  // the stand-ins' AF_UNIX sockets
  base::UniqueFd full_listener_;
  base::UniqueFd backlog_filler_;
};

TEST_F(ForwardTest, AConnectThatFinishesAtOnceIsAnsweredWithResponse) {
  start([&](uint32_t port) { return unix_address(dir + "/peer" + std::to_string(port)); });
  base::UniqueFd listener = MuxerHarness::listen_unix(dir + "/peer" + std::to_string(kHostPort));
  h->send(h->guest_header(Op::kRequest, kGuestPort, kHostPort));
  auto packets = drain();
  ASSERT_EQ(packets.size(), 1u);
  EXPECT_EQ(packets[0].header.operation(), Op::kResponse);
  base::UniqueFd host(::accept4(listener.get(), nullptr, nullptr, SOCK_NONBLOCK));
  ASSERT_TRUE(host.valid());
  h->send(h->guest_header(Op::kRw, kGuestPort, kHostPort, 5), bytes_of("hello"));
  drain();
  EXPECT_EQ(read_some(host.get()), "hello");
  EXPECT_EQ(h->stats().connections_from_guest, 1u);
}

TEST_F(ForwardTest, ForwardingReplacesTheUdsPathDialer) {
  start([](uint32_t) { return std::optional<ForwardAddress>(); });  // refuses every port
  auto uds_listener = MuxerHarness::listen_unix(h->port_path(kHostPort));
  h->send(h->guest_header(Op::kRequest, kGuestPort, kHostPort));
  auto packets = drain();
  ASSERT_EQ(packets.size(), 1u);
  EXPECT_EQ(packets[0].header.operation(), Op::kRst);
  base::UniqueFd none(::accept4(uds_listener.get(), nullptr, nullptr, SOCK_NONBLOCK));
  EXPECT_FALSE(none.valid()) << "<uds-path>_<port> was dialed although forwarding is on";
  EXPECT_EQ(h->stats().host_connects_refused, 1u);
}

TEST_F(ForwardTest, AConnectInProgressAnswersOnceConnectedAndCarriesData) {
  uint16_t tcp_port = 0;
  base::UniqueFd listener = tcp_listener(&tcp_port, 16, SOCK_NONBLOCK);
  start([&](uint32_t) { return loopback_address(tcp_port); });
  h->send(h->guest_header(Op::kRequest, kGuestPort, kHostPort));
  auto packets = wait_for_packet();
  ASSERT_EQ(packets.size(), 1u);
  EXPECT_EQ(packets[0].header.operation(), Op::kResponse);
  EXPECT_EQ(packets[0].header.src_port, kHostPort);
  EXPECT_EQ(packets[0].header.dst_port, kGuestPort);
  EXPECT_EQ(h->stats().connections_opened, 1u);
  EXPECT_EQ(h->stats().connections_from_guest, 1u);
  base::UniqueFd host;
  ASSERT_TRUE(h->run_until([&] {
    host = base::UniqueFd(::accept4(listener.get(), nullptr, nullptr, SOCK_NONBLOCK));
    return host.valid();
  }));
  h->send(h->guest_header(Op::kRw, kGuestPort, kHostPort, 4), bytes_of("ping"));
  drain();
  EXPECT_EQ(read_some(host.get()), "ping");
  ASSERT_EQ(::write(host.get(), "pong", 4), 4);
  packets = drain();
  ASSERT_EQ(packets.size(), 1u);
  EXPECT_EQ(packets[0].header.operation(), Op::kRw);
  EXPECT_EQ(text(packets[0].payload), "pong");
}

// A request timeout far past the wait shows the RST did not wait for it,
// however slowly a loaded machine runs the test.
TEST_F(ForwardTest, ARefusedConnectIsAnsweredWithRst) {
  uint16_t tcp_port = 0;
  { base::UniqueFd closed = tcp_listener(&tcp_port, 16, SOCK_NONBLOCK); }  // nothing listens there any more
  MuxerLimits slow_timeout = limits();
  slow_timeout.request_timeout = 60s;
  start([&](uint32_t) { return loopback_address(tcp_port); }, slow_timeout);
  h->send(h->guest_header(Op::kRequest, kGuestPort, kHostPort));
  auto packets = wait_for_packet();  // up to 5 s, well before the request timeout
  ASSERT_EQ(packets.size(), 1u) << "no RST before the request timeout";
  EXPECT_EQ(packets[0].header.operation(), Op::kRst);
  EXPECT_EQ(packets[0].header.dst_port, kGuestPort);
  EXPECT_EQ(h->stats().host_connects_refused, 1u);
  EXPECT_EQ(h->stats().connections_active, 0u);
  EXPECT_EQ(h->stats().resets_timeout, 0u);
}

TEST_F(ForwardTest, AConnectThatNeverFinishesIsResetAfterTheRequestTimeout) {
  uint16_t tcp_port = 0;
  ASSERT_NO_FATAL_FAILURE(fill_backlog(&tcp_port));
  start([&](uint32_t) { return loopback_address(tcp_port); });  // request_timeout 300 ms
  const auto requested_by = std::chrono::steady_clock::now();
  h->send(h->guest_header(Op::kRequest, kGuestPort, kHostPort));
  EXPECT_EQ(h->stats().connections_active, 1u);
  auto packets = wait_for_packet();
  const auto answered_after = std::chrono::steady_clock::now() - requested_by;
  ASSERT_EQ(packets.size(), 1u);
  if (packets[0].header.operation() == Op::kResponse) {
    GTEST_SKIP() << "SKIPPED: the kernel accepted past a full backlog; no connect stays in progress here";
  }
  EXPECT_EQ(packets[0].header.operation(), Op::kRst);
  // The first answer is this RST: not before the request timeout, and not much after.
  EXPECT_GE(answered_after, limits().request_timeout) << "answered before the request timeout";
  EXPECT_LT(answered_after, limits().request_timeout + testing::kTimerSlack);
  EXPECT_EQ(h->stats().resets_timeout, 1u);
  EXPECT_EQ(h->stats().connections_active, 0u);
  EXPECT_EQ(h->stats().connections_opened, 0u);
}

TEST_F(ForwardTest, ConnectsInProgressCountAgainstTheCap) {
  uint16_t tcp_port = 0;
  ASSERT_NO_FATAL_FAILURE(fill_backlog(&tcp_port));
  MuxerLimits capped = limits();
  capped.max_connections = 1;
  capped.request_timeout = 2000ms;
  start([&](uint32_t) { return loopback_address(tcp_port); }, capped);
  h->send(h->guest_header(Op::kRequest, kGuestPort, kHostPort));
  h->run_for(50ms);
  ASSERT_TRUE(h->received().empty()) << "the first connect did not stay in progress";
  h->send(h->guest_header(Op::kRequest, kGuestPort + 1, kHostPort));
  auto packets = wait_for_packet();
  ASSERT_EQ(packets.size(), 1u);
  EXPECT_EQ(packets[0].header.operation(), Op::kRst);
  EXPECT_EQ(packets[0].header.dst_port, kGuestPort + 1);
  EXPECT_EQ(h->stats().resets_cap, 1u);
  EXPECT_EQ(h->stats().connections_active, 1u);
}

TEST_F(ForwardTest, AGuestRstWhileConnectingForgetsTheConnection) {
  uint16_t tcp_port = 0;
  ASSERT_NO_FATAL_FAILURE(fill_backlog(&tcp_port));
  // The fixture's 300 ms request timeout could pass while the test thread
  // is stalled before the RST goes in; its RST would then fail the first
  // check. A second leaves room for that and still keeps the test short.
  MuxerLimits slower = limits();
  slower.request_timeout = 1000ms;
  start([&](uint32_t) { return loopback_address(tcp_port); }, slower);
  h->send(h->guest_header(Op::kRequest, kGuestPort, kHostPort));
  h->run_for(50ms);
  ASSERT_TRUE(h->received().empty());
  h->send(h->guest_header(Op::kRst, kGuestPort, kHostPort));
  EXPECT_TRUE(drain(100ms).empty()) << "an RST was answered";
  EXPECT_EQ(h->stats().connections_active, 0u);
  h->run_for(slower.request_timeout);  // past the request timeout: the cancelled timer sends nothing
  EXPECT_TRUE(h->received().empty());
  EXPECT_EQ(h->stats().resets_timeout, 0u);
}

TEST_F(ForwardTest, DataBeforeTheResponseIsAProtocolViolation) {
  uint16_t tcp_port = 0;
  ASSERT_NO_FATAL_FAILURE(fill_backlog(&tcp_port));
  MuxerLimits patient = limits();
  patient.request_timeout = 60s;  // a stalled test thread must not meet it: only the violation may answer
  start([&](uint32_t) { return loopback_address(tcp_port); }, patient);
  h->send(h->guest_header(Op::kRequest, kGuestPort, kHostPort));
  h->run_for(50ms);
  ASSERT_TRUE(h->received().empty());
  h->send(h->guest_header(Op::kCreditUpdate, kGuestPort, kHostPort));  // credit news is fine
  h->run_for(20ms);
  EXPECT_TRUE(h->received().empty());
  h->send(h->guest_header(Op::kRw, kGuestPort, kHostPort, 1), bytes_of("x"));
  auto packets = drain();
  ASSERT_EQ(packets.size(), 1u);
  EXPECT_EQ(packets[0].header.operation(), Op::kRst);
  EXPECT_EQ(h->stats().protocol_violations, 1u);
}

TEST_F(ForwardTest, ForwardListenConnectionsAskTheGuestWithoutAHandshake) {
  start([](uint32_t) { return std::optional<ForwardAddress>(); });
  EXPECT_FALSE(std::filesystem::exists(h->uds_path())) << "the hybrid listener opened although forwarding is on";
  auto host = MuxerHarness::connect_unix(listen_path(kListenPort));
  ASSERT_TRUE(host.valid());
  auto packets = wait_for_packet();
  ASSERT_EQ(packets.size(), 1u);
  const PacketHeader request = packets[0].header;
  EXPECT_EQ(request.operation(), Op::kRequest);
  EXPECT_EQ(request.dst_port, kListenPort);
  h->send(h->guest_header(Op::kResponse, kListenPort, request.src_port));
  h->send(h->guest_header(Op::kRw, kListenPort, request.src_port, 3), bytes_of("abc"));
  drain();
  EXPECT_EQ(read_some(host.get()), "abc") << "no greeting may precede the guest's bytes";
  ASSERT_EQ(::write(host.get(), "xyz", 3), 3);
  packets = drain();
  ASSERT_EQ(packets.size(), 1u);
  EXPECT_EQ(text(packets[0].payload), "xyz");
  EXPECT_EQ(h->stats().connections_from_host, 1u);
  std::vector<ConnectionInfo> listing;
  h->muxer().list_connections(&listing);
  ASSERT_EQ(listing.size(), 1u);
  EXPECT_EQ(listing[0].host_path, "vsock-listen:9001");
}

}  // namespace
}  // namespace vhost_vsock::vsock::test
