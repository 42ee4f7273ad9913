// Drives a Muxer with a random script: guest TX packets (valid-looking and
// hostile), RX buffer posts, host programs connecting / writing / closing, and
// loop turns. Checks that nothing crashes or leaks past the limits and that
// every RX packet the device publishes is well formed and addressed from the
// host to this guest.
#include <spdlog/spdlog.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <string>
#include <vector>

#include "fuzz_check.h"
#include "testing/muxer_test_harness.h"

using namespace vhost_vsock;
using namespace vhost_vsock::vsock;

namespace {

class Script {
 public:
  Script(const uint8_t* data, size_t size) : data_(data), size_(size) {}
  bool done() const { return pos_ >= size_; }
  uint8_t u8() { return pos_ < size_ ? data_[pos_++] : 0; }
  uint16_t u16() { return static_cast<uint16_t>(u8() | (u8() << 8)); }
  uint32_t u32() { return u16() | (static_cast<uint32_t>(u16()) << 16); }

 private:
  const uint8_t* data_;
  size_t size_;
  size_t pos_ = 0;
};

constexpr uint32_t kPorts[] = {1, 2, 1234, 1u << 30, (1u << 30) + 1, 0xFFFFFFFF};

void check_rx(test::MuxerHarness& h) {
  std::vector<test::GuestPacket> packets;
  try {
    packets = h.received();
  } catch (const std::exception&) {
    std::abort();  // device published a used length that does not match its header
  }
  for (const auto& p : packets) {
    // Everything comes from the host, except the RST that refuses a packet
    // for another CID: it comes from the CID the guest addressed (sibling
    // routing), which may be any 32-bit CID the fuzzer wrote.
    CHECK(p.header.src_cid == kCidHost ||
          (p.header.op == static_cast<uint16_t>(Op::kRst) && p.header.src_cid <= 0xFFFFFFFFu));
    CHECK(p.header.dst_cid == test::MuxerHarness::kGuestCid);
    CHECK(p.header.op >= 1 && p.header.op <= 7);
    CHECK(p.header.op == static_cast<uint16_t>(Op::kRw) || p.header.len == 0);
    // Data packets carry no flags, or EOM|EOR on a seqpacket message's last packet.
    if (p.header.op == static_cast<uint16_t>(Op::kRw)) {
      CHECK(p.header.flags == 0 ||
            (p.header.type == static_cast<uint16_t>(SocketType::kSeqpacket) && p.header.flags == (kSeqEom | kSeqEor)));
    }
  }
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  spdlog::set_level(spdlog::level::off);  // the muxer logs every guest misdeed; keep runs fast
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 2) return 0;
  Script script(data, size);
  MuxerLimits limits;
  limits.tx_buffer_size = 1024u << (script.u8() % 8);  // 1 KiB .. 128 KiB
  limits.max_connections = 1 + script.u8() % 8;
  // Either every timer fires on the next loop turn, or none within a run.
  const std::chrono::milliseconds timeout(limits.max_connections % 2 ? 0 : 60000);
  limits.handshake_timeout = limits.request_timeout = limits.shutdown_timeout = timeout;
  static const std::string temp_base = ::access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp";
  test::MuxerHarness h(limits, 64, 32 << 20, true, temp_base);
  // Half the runs negotiate SEQPACKET: type-2 packets are routed, otherwise refused.
  if (script.u8() % 2) h.muxer().set_negotiated_features(kFeatureStream | kFeatureSeqpacket);
  std::vector<base::UniqueFd> host_fds;  // host programs' sockets
  std::vector<base::UniqueFd> listeners;
  std::vector<uint8_t> payload(kMaxPacketPayload + 64);

  for (int step = 0; step < 200 && !script.done(); ++step) {
    try {
      switch (script.u8() % 10) {
        case 0:
        case 1:
        case 2: {  // a guest packet
          PacketHeader header =
              h.guest_header(static_cast<Op>(1 + script.u8() % 8), kPorts[script.u8() % 6], kPorts[script.u8() % 6]);
          const uint8_t mutate = script.u8();
          if (mutate & 1) header.src_cid = script.u8();
          if (mutate & 2) header.dst_cid = script.u8();
          if (mutate & 4) header.type = script.u8() % 4;
          if (mutate & 8) header.flags = script.u8();
          if (mutate & 64) header.flags = (mutate & 128) ? kSeqEom : kSeqEom | kSeqEor;
          header.buf_alloc = script.u32();
          header.fwd_cnt = script.u32();
          const uint32_t len = script.u16() % (kMaxPacketPayload + 2);
          header.len = len;
          // Sometimes lie: carry fewer bytes than len says.
          const uint32_t carried = (mutate & 16) ? len / 2 : len;
          if (h.tx_ring().free_descriptors() < 2) h.reclaim_tx();
          if (h.tx_ring().free_descriptors() < 2) break;
          h.queue_tx(header, std::span(payload.data(), std::min<size_t>(carried, payload.size())));
          if (!(mutate & 32)) h.kick_tx();
          break;
        }
        case 3: {  // a hostile TX chain: a header split at a random point or simply too short
          const uint64_t gpa = h.ram().alloc(128);
          const uint32_t first = script.u8() % 60;
          const testing::DriverVring::Buffer buffers[] = {{gpa, first, false},
                                                          {gpa + 64, static_cast<uint32_t>(script.u8() % 60), false}};
          auto bytes = encode_header(h.guest_header(static_cast<Op>(script.u8() % 9), 1, 1234));
          std::memcpy(h.ram().host(gpa, 128), bytes.data(), std::min<size_t>(first, bytes.size()));
          if (first < bytes.size()) std::memcpy(h.ram().host(gpa + 64, 64), bytes.data() + first, bytes.size() - first);
          if (h.tx_ring().free_descriptors() >= 2) h.tx_ring().add_chain(buffers);
          h.kick_tx();
          break;
        }
        case 4: {  // RX buffers, sometimes too small
          const uint8_t n = script.u8() % 8;
          if (h.rx_ring().free_descriptors() >= 2 * n) h.post_rx_buffers(n, 1 + script.u16() % 8192);
          h.kick_rx();
          break;
        }
        case 5: {  // a host program connects to uds-path and speaks
          const uint8_t kind = script.u8();
          auto fd = (kind & 8) ? test::MuxerHarness::connect_unix(h.uds_path() + "_seqpacket", SOCK_SEQPACKET)
                               : test::MuxerHarness::connect_unix(h.uds_path());
          if (!fd) break;
          std::string line = (kind & 1) ? "CONNECT " + std::to_string(kPorts[kind % 6]) + "\n" : "connect x\n";
          if (kind & 2) line += "trailing payload";
          if (kind & 4) line = std::string(100, 'C');
          [[maybe_unused]] auto n = ::write(fd.get(), line.data(), line.size());
          if (host_fds.size() < 16) host_fds.push_back(std::move(fd));
          break;
        }
        case 6: {  // a host listener for guest connects
          const uint8_t which = script.u8();
          if (listeners.size() < 4) {
            listeners.push_back(test::MuxerHarness::listen_unix(h.port_path(kPorts[which % 6]),
                                                                (which & 8) ? SOCK_SEQPACKET : SOCK_STREAM));
          }
          break;
        }
        case 7: {  // host programs accept, write, read or close
          for (auto& l : listeners) {
            if (!l) continue;
            base::UniqueFd accepted(::accept4(l.get(), nullptr, nullptr, SOCK_NONBLOCK));
            if (accepted && host_fds.size() < 16) host_fds.push_back(std::move(accepted));
          }
          if (host_fds.empty()) break;
          auto& fd = host_fds[script.u8() % host_fds.size()];
          const uint8_t action = script.u8() % 4;
          if (action == 0) {
            [[maybe_unused]] auto n =
                ::send(fd.get(), payload.data(), script.u16() % 70000, MSG_DONTWAIT | MSG_NOSIGNAL);
          } else if (action == 1) {
            [[maybe_unused]] auto n = ::recv(fd.get(), payload.data(), payload.size(), MSG_DONTWAIT);
          } else if (action == 2) {
            ::shutdown(fd.get(), SHUT_WR);
          } else {
            fd.reset();
          }
          break;
        }
        case 8:
          h.loop().run_once(std::chrono::milliseconds(0));
          break;
        case 9:
          if (script.u8() % 16 == 0) h.muxer().reset_all_connections();
          check_rx(h);
          break;
      }
    } catch (const std::bad_alloc&) {
      // The harness's guest RAM is a bump allocator: out of room ends the script.
      break;
    }
    CHECK(h.stats().connections_active <= limits.max_connections);
  }
  for (int i = 0; i < 4; ++i) h.loop().run_once(std::chrono::milliseconds(0));
  check_rx(h);
  return 0;
}
