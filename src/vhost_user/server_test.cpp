// Drives the Server through a real Unix socket with a small test front-end
// that sends real messages, with fds passed as SCM_RIGHTS.
#include "vhost_user/server.h"

#include <gtest/gtest.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <optional>

#include "base/unix_socket_address.h"
#include "testing/fd_passing.h"
#include "testing/temp_dir.h"
#include "vhost_user/message.h"
#include "vhost_user/session.h"
#include "vhost_user/test_support.h"

namespace vhost_vsock::vhost_user {
namespace {

using test::FakeDevice;
using test::GuestRam;
using test::kRingSize;
using test::kUserBase;
using test::Reply;

base::UniqueFd connect_to(const std::string& path) {
  base::UniqueFd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  const sockaddr_un address = base::unix_socket_address(path);
  if (::connect(fd.get(), reinterpret_cast<const sockaddr*>(&address), sizeof(address)) != 0) return {};
  return fd;
}

// A minimal vhost-user front-end. The server runs on the same thread, so
// every wait pumps the event loop.
class TestFrontend {
 public:
  TestFrontend(base::EventLoop& loop, const std::string& path) : loop_(loop), socket_(connect_to(path)) {
    pump_once();  // let the server accept
  }
  [[nodiscard]] bool connected() const { return socket_.valid(); }

  // Sends raw bytes; `fds` ride along with the first byte.
  bool send_bytes(std::span<const uint8_t> bytes, const std::vector<int>& fds = {}) {
    const iovec iov{const_cast<uint8_t*>(bytes.data()), bytes.size()};
    return testing::send_with_fds(socket_.get(), {&iov, 1}, fds, MSG_NOSIGNAL) == static_cast<ssize_t>(bytes.size());
  }

  bool send(Request request, const std::vector<uint8_t>& payload = {}, const std::vector<int>& fds = {},
            uint32_t flags = kFlagVersion) {
    return send_bytes(encode_message(static_cast<uint32_t>(request), flags, payload), fds);
  }

  // Waits (pumping the server) for one complete reply.
  std::optional<Reply> read_reply() {
    for (auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
         std::chrono::steady_clock::now() < deadline;) {
      if (buffer_.size() >= kHeaderSize) {
        auto header = decode_header(std::span<const uint8_t, kHeaderSize>(buffer_.data(), kHeaderSize));
        if (buffer_.size() >= kHeaderSize + header.size) {
          Reply reply{header,
                      std::vector<uint8_t>(buffer_.begin() + kHeaderSize,
                                           buffer_.begin() + static_cast<std::ptrdiff_t>(kHeaderSize + header.size))};
          buffer_.erase(buffer_.begin(), buffer_.begin() + static_cast<std::ptrdiff_t>(kHeaderSize + header.size));
          return reply;
        }
      }
      if (!pump_once()) return std::nullopt;
    }
    return std::nullopt;
  }

  std::optional<uint64_t> request_u64(Request request, const std::vector<uint8_t>& payload = {},
                                      const std::vector<int>& fds = {}) {
    if (!send(request, payload, fds, kFlagVersion | kFlagNeedReply)) return std::nullopt;
    auto reply = read_reply();
    if (!reply || reply->header.request != static_cast<uint32_t>(request)) return std::nullopt;
    EXPECT_EQ(reply->header.flags, kFlagVersion | kFlagReply);
    return decode_u64(reply->payload);
  }

  // True once the server has closed its end.
  bool wait_for_close() {
    for (int i = 0; i < 500; ++i) {
      if (!pump_once()) return true;
    }
    return false;
  }

  // Runs the server's loop briefly and collects what it sent; false on EOF.
  bool pump_once() {
    loop_.run_once(std::chrono::milliseconds(5));
    if (!socket_) return false;
    pollfd poll_fd{socket_.get(), POLLIN, 0};
    if (::poll(&poll_fd, 1, 0) <= 0) return true;
    uint8_t chunk[4096];
    ssize_t n = ::recv(socket_.get(), chunk, sizeof(chunk), MSG_DONTWAIT);
    if (n == 0 || (n < 0 && errno != EAGAIN)) return false;
    if (n > 0) buffer_.insert(buffer_.end(), chunk, chunk + n);
    return true;
  }

  void close() { socket_.reset(); }

 private:
  base::EventLoop& loop_;
  base::UniqueFd socket_;
  std::vector<uint8_t> buffer_;
};

class ServerTest : public ::testing::Test {
 protected:
  // The QEMU 7.2 start-up sequence up to and including the rings' enable.
  void bring_up(TestFrontend& frontend, std::array<base::UniqueFd, 2>& kick_writers,
                std::array<base::UniqueFd, 2>& call_readers) {
    ASSERT_TRUE(frontend.send(Request::kSetOwner));
    auto features = frontend.request_u64(Request::kGetFeatures);
    ASSERT_TRUE(features);
    ASSERT_NE(*features & kFeatureProtocolFeatures, 0u);
    auto protocol = frontend.request_u64(Request::kGetProtocolFeatures);
    ASSERT_TRUE(protocol);
    ASSERT_TRUE(frontend.send(Request::kSetProtocolFeatures, encode_u64(*protocol)));
    EXPECT_EQ(frontend.request_u64(Request::kGetQueueNum), 2u);
    EXPECT_EQ(frontend.request_u64(Request::kSetFeatures, encode_u64(*features)), 0u);
    std::vector<MemoryRegionDescription> regions = {{0, test::kRamSize, kUserBase, 0}};
    auto ram_fd = ram.dup_fd();
    EXPECT_EQ(frontend.request_u64(Request::kSetMemTable, encode_memory_table(regions), {ram_fd.get()}), 0u);
    for (uint32_t i = 0; i < 2; ++i) {
      EXPECT_EQ(frontend.request_u64(Request::kSetVringNum, encode_vring_state({i, kRingSize})), 0u);
      EXPECT_EQ(frontend.request_u64(Request::kSetVringBase, encode_vring_state({i, 0})), 0u);
      EXPECT_EQ(frontend.request_u64(Request::kSetVringAddr, encode_vring_address(test::ring_address(i))), 0u);
      auto kick = test::make_eventfd();
      auto call = test::make_eventfd();
      EXPECT_EQ(frontend.request_u64(Request::kSetVringKick, encode_u64(i), {kick.get()}), 0u);
      EXPECT_EQ(frontend.request_u64(Request::kSetVringCall, encode_u64(i), {call.get()}), 0u);
      kick_writers[i] = std::move(kick);
      call_readers[i] = std::move(call);
    }
    EXPECT_EQ(device.count("started 0"), 0u);  // disabled until SET_VRING_ENABLE
    for (uint32_t i = 0; i < 2; ++i) {
      EXPECT_EQ(frontend.request_u64(Request::kSetVringEnable, encode_vring_state({i, 1})), 0u);
    }
  }

  vhost_vsock::testing::TempDir temp_dir;
  std::string directory = temp_dir.path();
  std::string path = directory + "/vhost.sock";
  base::EventLoop loop;
  FakeDevice device;
  GuestRam ram{test::kRamSize};
};

TEST_F(ServerTest, ServesTheQemuStartupSequence) {
  Server server(loop, path, device);
  TestFrontend frontend(loop, path);
  ASSERT_TRUE(frontend.connected());
  std::array<base::UniqueFd, 2> kicks, calls;
  bring_up(frontend, kicks, calls);
  EXPECT_TRUE(server.frontend_connected());
  EXPECT_EQ(device.count("started 0"), 1u);
  EXPECT_EQ(device.count("started 1"), 1u);

  // GET_CONFIG: QEMU asks for the whole 8-byte vsock config.
  ASSERT_TRUE(frontend.send(Request::kGetConfig, encode_config_access(0, 8, 0, std::vector<uint8_t>(8))));
  auto config = frontend.read_reply();
  ASSERT_TRUE(config);
  ASSERT_EQ(config->header.size, kConfigHeaderSize + 8);
  EXPECT_EQ(std::vector<uint8_t>(config->payload.begin() + kConfigHeaderSize, config->payload.end()), device.config);

  // A guest kick travels through the eventfd to the device.
  int kicks_before = device.kicks[1];
  uint64_t one = 1;
  ASSERT_EQ(::write(kicks[1].get(), &one, sizeof(one)), 8);
  for (int i = 0; i < 20 && device.kicks[1] == kicks_before; ++i) frontend.pump_once();
  EXPECT_EQ(device.kicks[1], kicks_before + 1);

  // Stop as QEMU does: disable, then GET_VRING_BASE.
  EXPECT_EQ(frontend.request_u64(Request::kSetVringEnable, encode_vring_state({0, 0})), 0u);
  ASSERT_TRUE(frontend.send(Request::kGetVringBase, encode_vring_state({0, 0})));
  auto base = frontend.read_reply();
  ASSERT_TRUE(base);
  auto state = decode_vring_state(base->payload);
  ASSERT_TRUE(state);
  EXPECT_EQ(state->index, 0u);
  EXPECT_EQ(state->num, 0u);
  EXPECT_EQ(device.count("stopped 0"), 1u);
  EXPECT_GT(server.stats().messages, 20u);
  EXPECT_EQ(server.stats().protocol_errors, 0u);
}

TEST_F(ServerTest, MessagesSplitAcrossWritesAndPipelinedAreHandled) {
  Server server(loop, path, device);
  TestFrontend frontend(loop, path);
  frontend.send(Request::kSetProtocolFeatures, encode_u64(kOfferedProtocolFeatures));

  // A SET_VRING_CALL in three pieces, its fd arriving with the first byte.
  auto message =
      encode_message(static_cast<uint32_t>(Request::kSetVringCall), kFlagVersion | kFlagNeedReply, encode_u64(0));
  auto call = test::make_eventfd();
  std::span<const uint8_t> bytes(message);
  ASSERT_TRUE(frontend.send_bytes(bytes.subspan(0, 5), {call.get()}));
  frontend.pump_once();
  ASSERT_TRUE(frontend.send_bytes(bytes.subspan(5, 10)));
  frontend.pump_once();
  ASSERT_TRUE(frontend.send_bytes(bytes.subspan(15)));
  auto reply = frontend.read_reply();
  ASSERT_TRUE(reply);
  EXPECT_EQ(decode_u64(reply->payload), 0u);  // exactly one fd was attached

  // Three messages in one write.
  std::vector<uint8_t> batch;
  for (auto request : {Request::kSetOwner, Request::kGetFeatures, Request::kGetQueueNum}) {
    auto one = encode_message(static_cast<uint32_t>(request), kFlagVersion, {});
    batch.insert(batch.end(), one.begin(), one.end());
  }
  ASSERT_TRUE(frontend.send_bytes(batch));
  auto first = frontend.read_reply();
  auto second = frontend.read_reply();
  ASSERT_TRUE(first && second);
  EXPECT_EQ(first->header.request, static_cast<uint32_t>(Request::kGetFeatures));
  EXPECT_EQ(second->header.request, static_cast<uint32_t>(Request::kGetQueueNum));
  EXPECT_TRUE(server.frontend_connected());
}

TEST_F(ServerTest, OversizedMessageDropsTheFrontend) {
  Server server(loop, path, device);
  TestFrontend frontend(loop, path);
  ASSERT_TRUE(server.frontend_connected());
  MessageHeader huge{static_cast<uint32_t>(Request::kSetMemTable), kFlagVersion, 1 << 20};
  std::vector<uint8_t> bytes(kHeaderSize);
  std::memcpy(bytes.data(), &huge, kHeaderSize);
  ASSERT_TRUE(frontend.send_bytes(bytes));
  EXPECT_TRUE(frontend.wait_for_close());
  EXPECT_FALSE(server.frontend_connected());
  EXPECT_EQ(device.count("disconnected"), 1u);
  EXPECT_EQ(server.stats().protocol_errors, 1u);
}

TEST_F(ServerTest, TooManyFdsDropTheFrontend) {
  Server server(loop, path, device);
  TestFrontend frontend(loop, path);
  std::vector<base::UniqueFd> owned;
  std::vector<int> fds;
  for (int i = 0; i < 10; ++i) {
    owned.push_back(test::make_eventfd());
    fds.push_back(owned.back().get());
  }
  ASSERT_TRUE(frontend.send(Request::kSetOwner, {}, fds));
  EXPECT_TRUE(frontend.wait_for_close());
  EXPECT_FALSE(server.frontend_connected());
}

TEST_F(ServerTest, DisconnectStopsRingsAndTheNextFrontendIsServed) {
  Server server(loop, path, device);
  {
    TestFrontend frontend(loop, path);
    std::array<base::UniqueFd, 2> kicks, calls;
    bring_up(frontend, kicks, calls);
    device.events.clear();
    frontend.close();
    for (int i = 0; i < 50 && server.frontend_connected(); ++i) loop.run_once(std::chrono::milliseconds(5));
  }
  EXPECT_FALSE(server.frontend_connected());
  EXPECT_EQ(device.events, (std::vector<std::string>{"stopped 0", "stopped 1", "disconnected"}));

  TestFrontend next(loop, path);
  ASSERT_TRUE(next.connected());
  EXPECT_TRUE(next.request_u64(Request::kGetFeatures).has_value());
  EXPECT_TRUE(server.frontend_connected());
  EXPECT_EQ(server.stats().frontends_accepted, 2u);
  EXPECT_EQ(server.stats().frontend_disconnects, 1u);
}

TEST_F(ServerTest, SecondFrontendIsTurnedAwayWhileOneIsConnected) {
  Server server(loop, path, device);
  TestFrontend first(loop, path);
  ASSERT_TRUE(first.request_u64(Request::kGetFeatures).has_value());
  TestFrontend second(loop, path);
  EXPECT_TRUE(second.wait_for_close());
  EXPECT_TRUE(first.request_u64(Request::kGetFeatures).has_value());
  EXPECT_EQ(server.stats().frontends_accepted, 1u);
}

TEST_F(ServerTest, StaleSocketFileIsReplaced) {
  {
    base::UniqueFd stale(::socket(AF_UNIX, SOCK_STREAM, 0));
    const sockaddr_un address = base::unix_socket_address(path);
    ASSERT_EQ(::bind(stale.get(), reinterpret_cast<const sockaddr*>(&address), sizeof(address)), 0);
  }  // closed without unlinking, as a crashed daemon would leave it
  ASSERT_TRUE(std::filesystem::exists(path));
  Server server(loop, path, device);
  TestFrontend frontend(loop, path);
  EXPECT_TRUE(frontend.request_u64(Request::kGetFeatures).has_value());
}

TEST_F(ServerTest, RefusesALiveListenerAndNonSockets) {
  {
    Server first(loop, path, device);
    try {
      Server second(loop, path, device);
      FAIL() << "a second server bound a live socket";
    } catch (const std::runtime_error& e) {
      EXPECT_NE(std::string(e.what()).find(path), std::string::npos) << e.what();
    }
    EXPECT_TRUE(std::filesystem::exists(path));  // the live one's file survives
  }
  EXPECT_FALSE(std::filesystem::exists(path));  // the destructor unlinks

  std::string regular = directory + "/not-a-socket";
  {
    FILE* file = std::fopen(regular.c_str(), "w");
    ASSERT_NE(file, nullptr);
    std::fclose(file);
  }
  try {
    Server server(loop, regular, device);
    FAIL() << "replaced a regular file";
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find(regular), std::string::npos) << e.what();
  }
  EXPECT_TRUE(std::filesystem::exists(regular));
  EXPECT_THROW(Server(loop, directory + "/" + std::string(200, 'x'), device), std::runtime_error);
}

}  // namespace
}  // namespace vhost_vsock::vhost_user
