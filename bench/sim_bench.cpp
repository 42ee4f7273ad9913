// The simulated guest through the real daemon: this process starts
// build/vhost-user-vsock, drives it as the guest with the src/testing/
// simulator (vhost-user front-end + virtio-vsock driver on memfd memory), and
// re-executes itself as the AF_UNIX host peer (sim_host_peer.cpp).
//
//   bench_sim stream --direction g2h|h2g --write-size 64K --bytes 1G [--streams N]
//   bench_sim rtt --count N            1-byte round trips, host -> guest -> host
//   bench_sim seqpacket --direction g2h|h2g --message-size 4K --count N
//                                      SOCK_SEQPACKET messages, each checked whole
//   bench_sim connect-host --count N   CONNECT -> OK -> close per second
//   bench_sim connect-guest --count N  guest connect -> close per second
//       both: [--parallel P]           P connections in flight (default 1: one
//                                      at a time, a latency-bound figure)
//   bench_sim idle --conns N           daemon VmRSS with N idle connections
// Common: --daemon PATH --dir DIR [--daemon-wrapper "valgrind --tool=..."]
//         [--ring split|packed]   the guest's virtqueue layout (packed: as
//                                 QEMU's packed=on, VIRTIO_F_RING_PACKED)
//         [--daemon-args "--tx-buffer-size 262144"]
//         [--daemon-cli compat]   only vhost-device-vsock's flags (--guest-cid,
//                                 --socket, --uds-path): for a peer backend
//                                 compared side by side (bench/run --peer)
// Prints one JSON line; exits 1 if data differs, the simulator saw a protocol
// violation, or the daemon died.
//
// The modes are here; the daemon and host peer processes they drive are in
// sim_processes.cpp.
#include <malloc.h>
#include <signal.h>
#include <sys/resource.h>

#include <atomic>
#include <deque>
#include <functional>
#include <memory>
#include <optional>
#include <sstream>
#include <thread>

#include "process_stats.h"
#include "sim_host_peer.h"
#include "sim_processes.h"
#include "testing/vsock_driver.h"

namespace vhost_vsock::bench {
namespace {

using testing::GuestVsockDriver;
using testing::Millis;
using testing::Stream;

void raise_fd_limit() {
  rlimit limit{};
  if (getrlimit(RLIMIT_NOFILE, &limit) == 0 && limit.rlim_cur < limit.rlim_max) {
    limit.rlim_cur = limit.rlim_max;
    setrlimit(RLIMIT_NOFILE, &limit);
  }
}

struct Bench {
  const Options& options;
  std::string self;
  DaemonProcess& daemon;
  GuestVsockDriver& guest;

  JsonLine stream() {
    const std::string direction = options.text("direction", "g2h");
    const size_t write_size = static_cast<size_t>(options.size("write-size", uint64_t{64} * 1024));
    const uint64_t bytes = options.size("bytes", 256ull << 20);
    const int streams = options.integer("streams", 1);
    if (write_size == 0 || write_size > (1u << 20) || streams < 1 || streams > 64) fail("option out of range");
    const std::vector<std::string> extra = {"--streams", std::to_string(streams),   "--bytes", std::to_string(bytes),
                                            "--io-size", std::to_string(write_size)};
    std::vector<Stream> socks;
    std::vector<std::unique_ptr<Pattern>> patterns;
    patterns.reserve(static_cast<size_t>(streams));
    for (int i = 0; i < streams; ++i) patterns.push_back(std::make_unique<Pattern>(1 + i, write_size));
    double elapsed = 0;
    std::string peer_json;
    CpuWindow cpu;
    if (direction == "g2h") {
      HostPeer peer(self, "recv", daemon.uds_path(), extra);
      peer.expect("ready");
      for (int i = 0; i < streams; ++i) {
        Stream s = guest.connect(kBasePort + static_cast<uint32_t>(i));
        if (!s.established()) fail("guest connect to port " + std::to_string(kBasePort + i) + " failed");
        socks.push_back(s);
      }
      cpu.start(daemon.pid());
      const double t0 = now_seconds();
      for (uint64_t off = 0; off < bytes; off += write_size) {
        const size_t len = static_cast<size_t>(std::min<uint64_t>(write_size, bytes - off));
        for (int i = 0; i < streams; ++i)
          if (!socks[i].send(std::span(patterns[i]->at(off), len)))
            fail("guest send failed on stream " + std::to_string(i) + " at byte " + std::to_string(off));
      }
      peer_json = peer.expect("done");
      elapsed = now_seconds() - t0;
      cpu.stop(daemon.pid());
      peer.finish();
    } else if (direction == "h2g") {
      for (int i = 0; i < streams; ++i) guest.listen(kBasePort + static_cast<uint32_t>(i));
      HostPeer peer(self, "send", daemon.uds_path(), extra);
      for (int i = 0; i < streams; ++i) {
        auto s = guest.accept(kBasePort + static_cast<uint32_t>(i), Millis(10000));
        if (!s) fail("guest accept on port " + std::to_string(kBasePort + i) + " timed out");
        socks.push_back(*s);
      }
      peer.expect("ready");
      std::vector<uint8_t> buffer(write_size);
      std::vector<uint64_t> received(streams, 0);
      cpu.start(daemon.pid());
      const double t0 = now_seconds();
      peer.go();
      for (int left = streams; left > 0;) {
        for (int i = 0; i < streams; ++i) {
          if (received[i] == bytes) continue;
          const size_t n = socks[i].recv_into(buffer, Millis(10000));
          if (n == 0) fail(stall_report(i, received[i], socks[i]));
          if (received[i] + n > bytes || !patterns[i]->matches(received[i], buffer.data(), n))
            fail("guest stream " + std::to_string(i) + " data mismatch near byte " + std::to_string(received[i]));
          received[i] += n;
          if (received[i] == bytes) --left;
        }
      }
      elapsed = now_seconds() - t0;
      peer_json = peer.expect("done");
      cpu.stop(daemon.pid());
      peer.finish();
    } else {
      fail("--direction must be g2h or h2g");
    }
    for (auto& s : socks) s.close();
    const uint64_t total = bytes * static_cast<uint64_t>(streams);
    // Guest-side events per MiB: how often each side had to wake the other
    // and how much credit traffic the transfer needed.
    const testing::DriverStats st = guest.stats();
    const double mib = static_cast<double>(total) / (1 << 20);
    JsonLine out;
    out.add("bench", "sim_stream")
        .add("direction", direction)
        .add("ring", options.text("ring", "split"))
        .add("write_size", uint64_t{write_size})
        .add("streams", streams)
        .add("bytes", total)
        .add("seconds", elapsed)
        .add("gbit_per_s", gbit_per_second(total, elapsed))
        .add("cpu_guest_sim_s", cpu.guest)
        .add("cpu_daemon_s", cpu.daemon)
        .add("cpu_host_peer_s", json_number(peer_json, "cpu_s"))
        .add("packets_to_guest_per_mib", static_cast<double>(st.packets_received) / mib)
        .add("packets_from_guest_per_mib", static_cast<double>(st.packets_sent) / mib)
        .add("credit_updates_to_guest_per_mib", static_cast<double>(st.credit_updates_received) / mib)
        .add("credit_updates_from_guest_per_mib", static_cast<double>(st.credit_updates_sent) / mib)
        .add("credit_requests_to_guest_per_mib", static_cast<double>(st.credit_requests_received) / mib)
        .add("rx_interrupts_per_mib", static_cast<double>(st.rx_interrupts) / mib)
        .add("tx_interrupts_per_mib", static_cast<double>(st.tx_interrupts) / mib)
        .add("rx_kicks_per_mib", static_cast<double>(st.rx_kicks) / mib)
        .add("tx_kicks_per_mib", static_cast<double>(st.tx_kicks) / mib)
        .add("daemon_read_calls_per_mib", static_cast<double>(cpu.daemon_read_calls) / mib)
        .add("daemon_write_calls_per_mib", static_cast<double>(cpu.daemon_write_calls) / mib)
        .add("daemon_wakeups_per_mib", static_cast<double>(cpu.daemon_wakeups) / mib)
        .add("daemon_preemptions_per_mib", static_cast<double>(cpu.daemon_preemptions) / mib);
    return out;
  }

  // What the simulator knows when a stream stops moving: for a bug report.
  std::string stall_report(int index, uint64_t at, const Stream& s) const {
    const testing::DriverStats st = guest.stats();
    std::ostringstream out;
    out << "guest stream " << index << " stalled at byte " << at << " (state " << static_cast<int>(s.state())
        << ", readable " << s.readable_bytes() << ", rx packets " << st.packets_received << ", rx bytes "
        << st.bytes_received << ", credit updates sent " << st.credit_updates_sent << ", rx interrupts "
        << st.rx_interrupts << ", rx kicks " << st.rx_kicks << ", used found by polling " << st.used_found_on_timeout
        << ", violations " << st.violations << ")\n"
        << guest.debug_state();
    return out.str();
  }

  JsonLine rtt() {
    const int count = options.integer("count", 20000);
    guest.listen(kBasePort);
    HostPeer peer(self, "rtt", daemon.uds_path(), {"--count", std::to_string(count)});
    auto s = guest.accept(kBasePort, Millis(10000));
    if (!s) fail("guest accept timed out");
    peer.expect("ready");
    peer.go();
    uint8_t byte = 0;
    for (int i = 0; i < count + 100; ++i) {
      if (s->recv_into(std::span(&byte, 1), Millis(10000)) != 1 || !s->send(std::span<const uint8_t>(&byte, 1)))
        fail("guest echo failed at round trip " + std::to_string(i));
    }
    const std::string json = peer.expect("done");
    peer.finish();
    s->close();
    JsonLine out;
    out.add("bench", "sim_rtt")
        .add("count", count)
        .add("mean_us", json_number(json, "mean_us"))
        .add("p50_us", json_number(json, "p50_us"))
        .add("p99_us", json_number(json, "p99_us"));
    return out;
  }

  // One seqpacket connection; message i is `size` bytes of pattern 5 from i * size on both sides.
  JsonLine seqpacket() {
    const std::string direction = options.text("direction", "g2h");
    const size_t size = static_cast<size_t>(options.size("message-size", 4096));
    const int count = options.integer("count", 100000);
    if (size == 0 || size > (1u << 20) || count < 1) fail("option out of range");
    const std::vector<std::string> extra = {"--count", std::to_string(count), "--io-size", std::to_string(size)};
    const Pattern pattern(5, size);
    double elapsed = 0;
    if (direction == "g2h") {
      HostPeer peer(self, "seq-recv", daemon.uds_path(), extra);
      peer.expect("ready");
      Stream s = guest.connect(kBasePort, Millis(5000), vsock::SocketType::kSeqpacket);
      if (!s.established()) fail("guest seqpacket connect failed");
      const double t0 = now_seconds();
      for (int i = 0; i < count; ++i)
        if (!s.send_message(std::span(pattern.at(static_cast<uint64_t>(i) * size), size)))
          fail("guest send_message " + std::to_string(i) + " failed");
      peer.expect("done");
      elapsed = now_seconds() - t0;
      peer.finish();
      s.close();
    } else if (direction == "h2g") {
      guest.listen(kBasePort, vsock::SocketType::kSeqpacket);
      HostPeer peer(self, "seq-send", daemon.uds_path(), extra);
      auto s = guest.accept(kBasePort, Millis(10000));
      if (!s) fail("guest seqpacket accept timed out");
      peer.expect("ready");
      const double t0 = now_seconds();
      peer.go();
      for (int i = 0; i < count; ++i) {
        auto message = s->recv_message(Millis(10000));
        if (!message || message->size() != size ||
            !pattern.matches(static_cast<uint64_t>(i) * size, reinterpret_cast<const uint8_t*>(message->data()), size))
          fail("guest message " + std::to_string(i) + (message ? " differs" : " missing"));
      }
      elapsed = now_seconds() - t0;
      peer.expect("done");
      peer.finish();
      s->close();
    } else {
      fail("--direction takes g2h or h2g");
    }
    JsonLine out;
    out.add("bench", "sim_seqpacket")
        .add("direction", direction)
        .add("message_size", static_cast<uint64_t>(size))
        .add("count", count)
        .add("seconds", elapsed)
        .add("messages_per_s", count / elapsed)
        .add("gbit_per_s", gbit_per_second(static_cast<uint64_t>(size) * static_cast<uint64_t>(count), elapsed));
    return out;
  }

  // A thread that accepts `count` guest streams on kBasePort and hands each to
  // `take`; `failed` is set if one does not come within 10 s.
  std::thread accept_in_background(int count, std::atomic<bool>& failed, std::function<void(Stream&)> take) {
    return std::thread([this, count, &failed, take = std::move(take)] {
      for (int i = 0; i < count; ++i) {
        auto s = guest.accept(kBasePort, Millis(10000));
        if (!s) {
          failed = true;
          return;
        }
        take(*s);
      }
    });
  }

  JsonLine connect_host() {
    const int count = options.integer("count", 10000);
    const int parallel = parallel_option();
    guest.listen(kBasePort);
    HostPeer peer(self, "connect", daemon.uds_path(),
                  {"--count", std::to_string(count), "--parallel", std::to_string(parallel)});
    std::atomic<bool> accept_failed{false};
    std::thread acceptor = accept_in_background(count, accept_failed, [](Stream& s) { s.close(); });
    peer.expect("ready");
    peer.go();
    const std::string json = peer.expect("done");
    acceptor.join();
    peer.finish();
    if (accept_failed) fail("guest accept timed out");
    JsonLine out;
    out.add("bench", "sim_connect_host")
        .add("count", count)
        .add("parallel", parallel)
        .add("per_second", json_number(json, "per_second"));
    return out;
  }

  // Connections in flight at once (connect-host, connect-guest): 1 measures
  // one handshake's latency across three processes, more what the daemon can take.
  int parallel_option() const {
    const int parallel = options.integer("parallel", 1);
    if (parallel < 1 || parallel > 1024) fail("--parallel takes 1..1024");
    return parallel;
  }

  // The guest side of one connect-guest connection: the daemon answered with
  // RESPONSE, not RST (the host peer closes at once, so it may be closing already).
  static void check_guest_connect(Stream& s, int i) {
    s.wait_established(Millis(5000));
    if (s.state() == testing::StreamState::kConnecting || s.refused())
      fail("guest connect " + std::to_string(i) + (s.refused() ? " refused" : " timed out"));
    s.close();
  }

  JsonLine connect_guest() {
    const int count = options.integer("count", 10000);
    HostPeer peer(self, "accept", daemon.uds_path(), {"--count", std::to_string(count)});
    peer.expect("ready");
    const auto parallel = static_cast<size_t>(parallel_option());
    const double t0 = now_seconds();
    // A window of `parallel` requests, checked oldest first.
    std::deque<Stream> in_flight;
    int checked = 0;
    for (int i = 0; i < count; ++i) {
      in_flight.push_back(guest.connect_async(kBasePort));
      if (in_flight.size() < parallel) continue;
      check_guest_connect(in_flight.front(), checked++);
      in_flight.pop_front();
    }
    for (; !in_flight.empty(); in_flight.pop_front()) check_guest_connect(in_flight.front(), checked++);
    const double elapsed = now_seconds() - t0;
    peer.expect("done");
    peer.finish();
    JsonLine out;
    out.add("bench", "sim_connect_guest")
        .add("count", count)
        .add("parallel", static_cast<int>(parallel))
        .add("per_second", count / elapsed);
    return out;
  }

  JsonLine idle() {
    const int conns = options.integer("conns", 10000);
    guest.listen(kBasePort);
    HostPeer peer(self, "idle", daemon.uds_path(), {"--count", std::to_string(conns)});
    peer.expect("ready");
    usleep(100000);
    const uint64_t before = vm_rss_kib(daemon.pid());
    std::vector<Stream> held;
    held.reserve(static_cast<size_t>(conns));
    std::atomic<bool> accept_failed{false};
    std::thread acceptor = accept_in_background(conns, accept_failed, [&held](Stream& s) { held.push_back(s); });
    peer.go();
    peer.expect("done");
    acceptor.join();
    if (accept_failed) fail("guest accept timed out");
    usleep(200000);  // let the daemon settle before sampling
    const uint64_t after = vm_rss_kib(daemon.pid());
    peer.finish();
    for (auto& s : held) s.reset();
    JsonLine out;
    out.add("bench", "sim_idle")
        .add("conns", conns)
        .add("baseline_rss_kib", before)
        .add("rss_kib", after)
        .add("per_conn_bytes", after > before ? static_cast<double>(after - before) * 1024.0 / conns : 0.0);
    return out;
  }
};

std::string make_run_dir(const std::string& parent) {
  std::string pattern = parent + "/s.XXXXXX";
  if (!mkdtemp(pattern.data())) die("mkdtemp");
  return pattern;
}

void remove_run_dir(const std::string& dir) {
  for (const char* name : {"/vhost.sock", "/v"}) unlink((dir + name).c_str());
  for (uint32_t i = 0; i < 64; ++i) unlink((dir + "/v_" + std::to_string(kBasePort + i)).c_str());
  rmdir(dir.c_str());
}

int run(const std::string& mode, const Options& options) {
  raise_fd_limit();
  signal(SIGPIPE, SIG_IGN);
  char self[4096];
  ssize_t n = readlink("/proc/self/exe", self, sizeof(self) - 1);
  if (n <= 0) die("readlink /proc/self/exe");
  self[n] = '\0';
  const std::string dir = make_run_dir(options.text("dir", "/tmp"));
  const int conns = mode == "idle" ? options.integer("conns", 10000) : 0;
  std::optional<JsonLine> result;
  std::string daemon_error;
  std::vector<std::string> violations;
  {
    DaemonProcess daemon(options, dir, static_cast<uint32_t>(std::max(4096, conns + 1024)));
    {
      testing::GuestOptions guest_options;
      guest_options.queue_size = static_cast<uint16_t>(options.integer("queue-size", guest_options.queue_size));
      guest_options.event_idx = options.integer("event-idx", 1) != 0;
      const std::string ring = options.text("ring", "split");
      if (ring != "split" && ring != "packed") fail("--ring takes split or packed, not " + ring);
      guest_options.packed_ring = ring == "packed";
      guest_options.buf_alloc = static_cast<uint32_t>(options.size("buf-alloc", guest_options.buf_alloc));
      GuestVsockDriver guest(daemon.socket_path(), guest_options);
      Bench bench{options, self, daemon, guest};
      if (mode == "stream")
        result = bench.stream();
      else if (mode == "rtt")
        result = bench.rtt();
      else if (mode == "seqpacket")
        result = bench.seqpacket();
      else if (mode == "connect-host")
        result = bench.connect_host();
      else if (mode == "connect-guest")
        result = bench.connect_guest();
      else if (mode == "idle")
        result = bench.idle();
      else
        fail("unknown mode '" + mode + "'");
      violations = guest.violations();
      guest.disconnect();
    }
    daemon_error = daemon.stop();
  }
  remove_run_dir(dir);
  if (!violations.empty()) fail("guest simulator saw a device protocol violation: " + violations.front());
  if (!daemon_error.empty()) fail(daemon_error);
  result->add("verified", true).print();
  return 0;
}

}  // namespace
}  // namespace vhost_vsock::bench

int main(int argc, char** argv) {
  using namespace vhost_vsock::bench;
  // The simulator stands in for a guest kernel, whose buffers come from slab
  // caches: keep glibc from handing each freed message back to the kernel and
  // faulting it in again for the next one.
  // NOLINTNEXTLINE(concurrency-mt-unsafe): first thing in main, before any thread starts.
  mallopt(M_TRIM_THRESHOLD, 64 << 20);
  // NOLINTNEXTLINE(concurrency-mt-unsafe): as above.
  mallopt(M_MMAP_THRESHOLD, 64 << 20);
  return run_mode(argc, argv, "bench_sim stream|rtt|seqpacket|connect-host|connect-guest|idle [--option value]...",
                  [](const std::string& mode, const Options& options) {
                    if (mode == "host-peer") return run_host_peer(options);
                    try {
                      return run(mode, options);
                    } catch (const std::exception& e) {  // simulator setup throws
                      fail(std::string("setup failed: ") + e.what());
                    }
                  });
}
