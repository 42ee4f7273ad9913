// GuestVsockDriver: memory and ring setup, the I/O thread, and the packet
// plumbing between the rings and the stream layer (vsock_stream.cpp).
#include <spdlog/spdlog.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <stdexcept>

#include "testing/guest_header.h"
#include "testing/packed_driver_vring.h"
#include "testing/vsock_driver_impl.h"

namespace vhost_vsock::testing {

namespace {

constexpr size_t kMaxViolationLog = 1000;
constexpr size_t kMaxCaptured = 1 << 20;
constexpr int kFallbackPollMs = 100;

size_t align_up(size_t value, size_t align) {
  return (value + align - 1) & ~(align - 1);
}

// Descriptors a packet needs in the main table, worst case.
uint16_t descriptors_per_packet(BufferLayout layout, bool indirect) {
  if (indirect) return 1;
  switch (layout) {
    case BufferLayout::kSplit:
      return 2;
    case BufferLayout::kMerged:
      return 1;
    case BufferLayout::kFragmented:
      return 5;
  }
  return 5;
}

// Splits [gpa, gpa+len) into up to three non-empty pieces.
void append_in_pieces(std::vector<GuestRing::Buffer>& out, uint64_t gpa, uint32_t len, bool writable) {
  const uint32_t a = len / 3;
  const uint32_t b = len / 3;
  const uint32_t pieces[3] = {a, b, len - a - b};
  for (uint32_t piece : pieces) {
    if (piece == 0) continue;
    out.push_back({gpa, piece, writable});
    gpa += piece;
  }
}

void packet_buffers(BufferLayout layout, uint64_t base, uint32_t payload_len, bool writable,
                    std::vector<GuestRing::Buffer>& out) {
  out.clear();
  const auto header = static_cast<uint32_t>(vsock::kHeaderSize);
  switch (layout) {
    case BufferLayout::kSplit:
      out.push_back({base, header, writable});
      if (payload_len > 0) out.push_back({base + header, payload_len, writable});
      break;
    case BufferLayout::kMerged:
      out.push_back({base, header + payload_len, writable});
      break;
    case BufferLayout::kFragmented:
      out.push_back({base, 10, writable});
      out.push_back({base + 10, header - 10, writable});
      append_in_pieces(out, base + header, payload_len, writable);
      break;
  }
}

}  // namespace

// ---------------------------------------------------------------------------
// Construction and teardown

GuestVsockDriver::GuestVsockDriver(const std::string& vhost_socket, GuestOptions options)
    : impl_(std::make_unique<Impl>(*this, options_)), options_(options) {
  if (options_.rx_buffer_size == 0 || options_.tx_max_payload == 0 || options_.buf_alloc == 0) {
    throw std::invalid_argument("GuestOptions: buffer sizes must be > 0");
  }
  Impl& s = *impl_;
  const size_t qs = options_.queue_size;
  size_t ram_size = options_.ram_size;
  if (ram_size == 0) {
    const size_t rings = 2 * (26 * qs + 64) + 2 * qs * 16 * 5;                              // rings + indirect tables
    const size_t rx = 2 * qs * align_up(vsock::kHeaderSize + options_.rx_buffer_size, 16);  // ring + spare
    const size_t tx = qs * align_up(vsock::kHeaderSize + options_.tx_max_payload, 16);
    ram_size = align_up(rings + rx + tx + (1 << 20), 1 << 21);
  }
  s.ram = std::make_unique<GuestRam>(ram_size);
  // Rings first, so that a split memory table keeps them inside region 0.
  auto make_ring = [&]() -> std::unique_ptr<GuestRing> {
    if (options_.packed_ring)
      return std::make_unique<PackedDriverVring>(*s.ram, options_.queue_size, options_.event_idx);
    return std::make_unique<DriverVring>(*s.ram, options_.queue_size, options_.event_idx);
  };
  s.rx_ring = make_ring();
  s.tx_ring = make_ring();
  s.setup_buffers();
  s.wake_fd.reset(::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC));
  if (!s.wake_fd) throw std::runtime_error("eventfd failed");

  FrontendOptions frontend_options;
  frontend_options.event_idx = options_.event_idx;
  frontend_options.indirect_desc = options_.indirect;
  frontend_options.split_memory_regions = options_.split_memory_regions;
  frontend_options.seqpacket = options_.seqpacket;
  frontend_options.reply_timeout = options_.setup_timeout;
  frontend_ = std::make_unique<VhostUserFrontend>(vhost_socket, frontend_options, options_.setup_timeout);
  s.frontend = frontend_.get();
  guest_cid_ = frontend_->start(*s.ram, *s.rx_ring, *s.tx_ring);
  s.guest_cid = guest_cid_;
  s.seqpacket_negotiated = (frontend_->acked_features() & kVsockFeatureSeqpacket) != 0;
  s.watch_interrupts();

  std::unique_lock lock(s.mu);
  s.refill_rx();
  s.running = true;
  s.io_thread = std::thread([&s] { s.io_loop(); });
}

GuestVsockDriver::~GuestVsockDriver() {
  std::unique_lock lock(impl_->mu);
  impl_->stop_io_thread(lock);
}

void GuestVsockDriver::Impl::setup_buffers() {
  const size_t qs = options.queue_size;
  rx_slot_of_head.assign(qs, -1);
  tx_slot_of_head.assign(qs, -1);
  // The ring holds at most qs RX buffers; as many again are spares that
  // streams keep until read (Linux allocates a fresh buffer for each one it
  // queues on a socket), so holding them never leaves the ring short.
  spare_rx_slots = static_cast<uint32_t>(qs);
  for (size_t i = 0; i < qs + spare_rx_slots; ++i) {
    rx_slots.push_back(ram->alloc(vsock::kHeaderSize + options.rx_buffer_size, 16));
  }
  for (size_t i = 0; i < qs; ++i) tx_slots.push_back(ram->alloc(vsock::kHeaderSize + options.tx_max_payload, 16));
  // Handed out from the back: slot 0 first.
  for (size_t i = rx_slots.size(); i-- > 0;) free_rx_slots.push_back(static_cast<uint32_t>(i));
  for (size_t i = qs; i-- > 0;) free_tx_slots.push_back(static_cast<uint32_t>(i));
}

void GuestVsockDriver::Impl::stop_io_thread(std::unique_lock<std::mutex>& lock) {
  stopping = true;
  wake_io_thread();
  if (io_thread.joinable()) {
    lock.unlock();
    io_thread.join();
    lock.lock();
  }
}

void GuestVsockDriver::disconnect() {
  std::unique_lock lock(impl_->mu);
  Impl& s = *impl_;
  s.stop_io_thread(lock);
  frontend_->disconnect();
  s.running = false;
  for (auto& [key, conn] : s.connections) {
    conn->state = StreamState::kClosed;
    conn->in_table = false;
  }
  s.connections.clear();
  s.listeners.clear();
  s.cv.notify_all();
}

bool GuestVsockDriver::seqpacket_negotiated() const {
  std::lock_guard lock(impl_->mu);
  return impl_->seqpacket_negotiated;
}

bool GuestVsockDriver::connected() const {
  std::lock_guard lock(impl_->mu);
  return impl_->running;
}

// ---------------------------------------------------------------------------
// I/O thread

void GuestVsockDriver::Impl::wake_io_thread() const {
  const uint64_t one = 1;
  [[maybe_unused]] const ssize_t n = ::write(wake_fd.get(), &one, sizeof(one));
}

// The call eventfds and wake_fd are watched edge-triggered and never read:
// each eventfd write is a new edge. A Linux guest takes an interrupt without
// any acknowledging syscall; reading every fired eventfd after each wake-up
// cost the simulator 1-2 read()s per interrupt the guest does not have.
void GuestVsockDriver::Impl::watch_interrupts() {
  epoll_fd.reset(::epoll_create1(EPOLL_CLOEXEC));
  if (!epoll_fd) throw std::runtime_error("epoll_create1 failed");
  const int fds[3] = {frontend->call_fd(0), frontend->call_fd(1), wake_fd.get()};
  for (uint32_t i = 0; i < 3; ++i) {
    epoll_event event{};
    event.events = EPOLLIN | EPOLLET;
    event.data.u32 = i;
    if (::epoll_ctl(epoll_fd.get(), EPOLL_CTL_ADD, fds[i], &event) != 0) throw std::runtime_error("epoll_ctl failed");
  }
}

void GuestVsockDriver::Impl::io_loop() {
  std::unique_lock lock(mu);
  bool wake_waiters = false;
  while (!stopping) {
    lock.unlock();
    // Waiters are woken after the lock is released, so that a woken
    // application thread does not preempt us only to block on the mutex
    // (Linux wakes socket readers with a sync wake-up, which does not preempt
    // the waker).
    if (wake_waiters) cv.notify_all();
    epoll_event events[3];
    const int ready = ::epoll_wait(epoll_fd.get(), events, 3, kFallbackPollMs);
    lock.lock();
    if (stopping) break;
    for (int i = 0; i < ready; ++i) {
      if (events[i].data.u32 == 0) ++stats.rx_interrupts;
      if (events[i].data.u32 == 1) ++stats.tx_interrupts;
    }
    if (ready == 0 && ((!rx_paused && rx_ring->has_used()) || tx_ring->has_used())) ++stats.used_found_on_timeout;
    wake_waiters = process_used();
    wake_waiters = check_close_timers() || wake_waiters || stats_waiters > 0;
  }
}

// Whether a waiter may have something to do: as in Linux, where a socket's
// reader or writer is woken by a packet for it (sk_data_ready, or
// sk_write_space when it brings credit) and reaping TX completions wakes
// nobody (virtio_transport_tx_work), only a thread waiting for a TX buffer is
// woken for a TX-only pass.
bool GuestVsockDriver::Impl::process_used() {
  // TX first: it frees buffers for the control packets RX may generate.
  const uint64_t bad_tx_before = tx_ring->bad_used_ids();
  const size_t free_tx_before = free_tx_slots.size();
  bool rx_reaped = false;
  while (auto used = tx_ring->pop_used()) {
    const int32_t slot = tx_slot_of_head[used->id];
    tx_slot_of_head[used->id] = -1;
    if (slot < 0) {
      violation("TX used element for head " + std::to_string(used->id) + " we never published");
      continue;
    }
    free_tx_slots.push_back(static_cast<uint32_t>(slot));
  }
  if (tx_ring->bad_used_ids() != bad_tx_before) violation("device returned an unknown or stale TX used id");

  if (!rx_paused) {
    const uint64_t bad_rx_before = rx_ring->bad_used_ids();
    // Bounded: one pass over what the device published so far.
    for (uint32_t budget = rx_ring->size(); budget > 0; --budget) {
      auto used = rx_ring->pop_used();
      if (!used) break;
      rx_reaped = true;
      const int32_t slot = rx_slot_of_head[used->id];
      rx_slot_of_head[used->id] = -1;
      if (slot < 0) {
        violation("RX used element for head " + std::to_string(used->id) + " we never published");
        continue;
      }
      if (!handle_rx_buffer(static_cast<uint32_t>(slot), used->len))
        free_rx_slots.push_back(static_cast<uint32_t>(slot));
    }
    if (rx_ring->bad_used_ids() != bad_rx_before) violation("device returned an unknown or stale RX used id");
    refill_rx();
  }
  flush_pending();
  flush_tx_kick();
  return rx_reaped || (tx_space_waiters > 0 && free_tx_slots.size() != free_tx_before);
}

void GuestVsockDriver::Impl::refill_rx() {
  const uint16_t old_idx = rx_ring->avail_position();
  std::vector<GuestRing::Buffer> buffers;
  bool added = false;
  while (!free_rx_slots.empty()) {
    const uint32_t slot = free_rx_slots.back();
    packet_buffers(options.rx_layout, rx_slots[slot], options.rx_buffer_size, true, buffers);
    const auto head = options.indirect ? rx_ring->add_indirect_chain(buffers) : rx_ring->add_chain(buffers);
    if (!head) break;
    rx_slot_of_head[*head] = static_cast<int32_t>(slot);
    free_rx_slots.pop_back();
    added = true;
  }
  if (added && rx_ring->device_wants_kick(old_idx)) {
    frontend->kick(0);
    ++stats.rx_kicks;
  }
}

bool GuestVsockDriver::Impl::handle_rx_buffer(uint32_t slot, uint32_t used_len) {
  const size_t capacity = vsock::kHeaderSize + options.rx_buffer_size;
  if (used_len < vsock::kHeaderSize) {
    violation("RX used len " + std::to_string(used_len) + " is shorter than a header");
    return false;
  }
  if (used_len > capacity) {
    violation("RX used len " + std::to_string(used_len) + " exceeds the buffer (" + std::to_string(capacity) + ")");
    used_len = static_cast<uint32_t>(capacity);
  }
  const uint8_t* base = ram->host(rx_slots[slot], capacity);
  vsock::HeaderBytes bytes;
  std::memcpy(bytes.data(), base, bytes.size());
  const vsock::PacketHeader header = vsock::decode_header(bytes);
  const uint32_t room = used_len - static_cast<uint32_t>(vsock::kHeaderSize);
  if (header.len > room) {
    violation("RX packet len " + std::to_string(header.len) + " exceeds the " + std::to_string(room) +
              " bytes written: " + vsock::describe(header));
    return false;
  }
  if (header.len != room) {
    violation("RX used len " + std::to_string(used_len) + " != header + payload: " + vsock::describe(header));
  }
  ++stats.packets_received;
  std::span<const uint8_t> payload(base + vsock::kHeaderSize, header.len);
  if (options.capture_packets && captured.size() < kMaxCaptured) {
    captured.push_back({header, std::string(payload.begin(), payload.end())});
  }
  return handle_packet(header, payload, slot);
}

size_t GuestVsockDriver::Impl::read_stream(Connection& conn, std::span<uint8_t> out) {
  return conn.rx.pop(
      out, [this](uint32_t slot) { return held_payload(slot); }, [this](uint32_t slot) { release_held(slot); });
}

size_t GuestVsockDriver::Impl::drop_stream_rx(Connection& conn) {
  uint8_t sink[4096];
  size_t dropped = 0;
  while (!conn.rx.empty()) dropped += read_stream(conn, sink);
  return dropped;
}

void GuestVsockDriver::Impl::unhold_stream_rx(Connection& conn) {
  conn.rx.unhold([this](uint32_t slot) { return held_payload(slot); }, [this](uint32_t slot) { release_held(slot); });
}

const uint8_t* GuestVsockDriver::Impl::held_payload(uint32_t slot) const {
  return ram->host(rx_slots[slot], vsock::kHeaderSize + options.rx_buffer_size) + vsock::kHeaderSize;
}

void GuestVsockDriver::Impl::release_held(uint32_t slot) {
  --held_rx_slots;
  free_rx_slots.push_back(slot);
}

// ---------------------------------------------------------------------------
// TX plumbing

bool GuestVsockDriver::Impl::tx_buffer_available() const {
  return !free_tx_slots.empty() &&
         tx_ring->free_descriptors() >= descriptors_per_packet(options.tx_layout, options.indirect);
}

bool GuestVsockDriver::Impl::publish_tx(const vsock::PacketHeader& header, std::span<const uint8_t> payload) {
  if (free_tx_slots.empty() || payload.size() > options.tx_max_payload) return false;
  const uint32_t slot = free_tx_slots.back();
  const uint64_t base = tx_slots[slot];
  uint8_t* host = ram->host(base, vsock::kHeaderSize + payload.size());
  vsock::encode_header(header, std::span<uint8_t, vsock::kHeaderSize>(host, vsock::kHeaderSize));
  if (!payload.empty()) std::memcpy(host + vsock::kHeaderSize, payload.data(), payload.size());
  std::vector<GuestRing::Buffer> buffers;
  packet_buffers(options.tx_layout, base, static_cast<uint32_t>(payload.size()), false, buffers);
  const uint16_t old_idx = tx_ring->avail_position();
  const auto head = options.indirect ? tx_ring->add_indirect_chain(buffers) : tx_ring->add_chain(buffers);
  if (!head) return false;
  free_tx_slots.pop_back();
  tx_slot_of_head[*head] = static_cast<int32_t>(slot);
  if (!tx_kick_pending) {
    tx_kick_pending = true;
    tx_kick_from = old_idx;
  }
  ++stats.packets_sent;
  return true;
}

void GuestVsockDriver::Impl::flush_tx_kick() {
  if (!tx_kick_pending) return;
  tx_kick_pending = false;
  if (tx_ring->device_wants_kick(tx_kick_from)) {
    frontend->kick(1);
    ++stats.tx_kicks;
  }
}

void GuestVsockDriver::Impl::flush_pending() {
  while (!pending.empty() && publish_tx(pending.front().header, pending.front().payload)) pending.pop_front();
}

void GuestVsockDriver::Impl::violation(std::string message) {
  ++stats.violations;
  spdlog::warn("guest driver (cid {}): device violation: {}", guest_cid, message);
  if (violation_log.size() < kMaxViolationLog) violation_log.push_back(std::move(message));
}

// ---------------------------------------------------------------------------
// Raw access, stats, capture

bool GuestVsockDriver::send_raw(const vsock::PacketHeader& header, std::span<const uint8_t> payload, Millis timeout) {
  Impl& s = *impl_;
  if (payload.size() > options_.tx_max_payload) return false;
  std::unique_lock lock(s.mu);
  const auto deadline = Clock::now() + timeout;
  for (;;) {
    if (!s.running) return false;
    if (s.pending.empty() && s.tx_buffer_available() && s.publish_tx(header, payload)) {
      s.flush_tx_kick();
      return true;
    }
    ++s.tx_space_waiters;
    const std::cv_status status = s.cv.wait_until(lock, deadline);
    --s.tx_space_waiters;
    if (status == std::cv_status::timeout) return false;
  }
}

vsock::PacketHeader GuestVsockDriver::make_header(vsock::Op op, uint32_t local_port, uint32_t peer_port, uint32_t len,
                                                  uint32_t flags) const {
  return guest_stream_header({.guest_cid = guest_cid_, .buf_alloc = options_.buf_alloc}, op, local_port, peer_port, len,
                             flags);
}

std::optional<CapturedPacket> GuestVsockDriver::wait_packet(const std::function<bool(const CapturedPacket&)>& match,
                                                            Millis timeout) {
  std::unique_lock lock(impl_->mu);
  const auto deadline = Clock::now() + timeout;
  size_t scanned = 0;
  for (;;) {
    for (; scanned < impl_->captured.size(); ++scanned) {
      if (match(impl_->captured[scanned])) return impl_->captured[scanned];
    }
    if (impl_->cv.wait_until(lock, deadline) == std::cv_status::timeout) {
      for (; scanned < impl_->captured.size(); ++scanned) {
        if (match(impl_->captured[scanned])) return impl_->captured[scanned];
      }
      return std::nullopt;
    }
  }
}

std::vector<CapturedPacket> GuestVsockDriver::captured_packets() const {
  std::lock_guard lock(impl_->mu);
  return impl_->captured;
}

void GuestVsockDriver::clear_captured_packets() {
  std::lock_guard lock(impl_->mu);
  impl_->captured.clear();
}

void GuestVsockDriver::set_rx_paused(bool paused) {
  std::lock_guard lock(impl_->mu);
  impl_->rx_paused = paused;
  impl_->wake_io_thread();
}

void GuestVsockDriver::with_rings(const std::function<void(GuestRam&, GuestRing&, GuestRing&)>& fn) {
  std::lock_guard lock(impl_->mu);
  fn(*impl_->ram, *impl_->rx_ring, *impl_->tx_ring);
}

void GuestVsockDriver::kick(uint16_t queue_index) {
  frontend_->kick(queue_index);
}

DriverStats GuestVsockDriver::stats() const {
  std::lock_guard lock(impl_->mu);
  return impl_->stats;
}

std::vector<std::string> GuestVsockDriver::violations() const {
  std::lock_guard lock(impl_->mu);
  return impl_->violation_log;
}

bool GuestVsockDriver::wait_stats(const std::function<bool(const DriverStats&)>& pred, Millis timeout) {
  std::unique_lock lock(impl_->mu);
  ++impl_->stats_waiters;  // the I/O thread wakes us after every pass
  const bool met = impl_->cv.wait_for(lock, timeout, [&] { return pred(impl_->stats); });
  --impl_->stats_waiters;
  return met;
}

std::string GuestVsockDriver::debug_state() const {
  std::lock_guard lock(impl_->mu);
  const Impl& s = *impl_;
  std::string out;
  out += "rx: " + s.rx_ring->describe() + "\n";
  out += "tx: " + s.tx_ring->describe() + "\n";
  out += "free rx slots=" + std::to_string(s.free_rx_slots.size()) +
         " held rx slots=" + std::to_string(s.held_rx_slots) + "/" + std::to_string(s.spare_rx_slots) +
         " free tx slots=" + std::to_string(s.free_tx_slots.size()) +
         " pending control=" + std::to_string(s.pending.size()) + " rx_paused=" + std::to_string(s.rx_paused) +
         " running=" + std::to_string(s.running) + "\n";
  const DriverStats& st = s.stats;
  out += "stats: rx_pkts=" + std::to_string(st.packets_received) + " tx_pkts=" + std::to_string(st.packets_sent) +
         " rx_irq=" + std::to_string(st.rx_interrupts) + " tx_irq=" + std::to_string(st.tx_interrupts) +
         " rx_kicks=" + std::to_string(st.rx_kicks) + " tx_kicks=" + std::to_string(st.tx_kicks) +
         " used_on_timeout=" + std::to_string(st.used_found_on_timeout) +
         " violations=" + std::to_string(st.violations) + "\n";
  size_t shown = 0;
  for (const auto& [key, c] : s.connections) {
    if (++shown > 20) break;
    out += "conn " + std::to_string(c->local_port) + "<->" + std::to_string(c->peer_port) +
           " state=" + std::to_string(static_cast<int>(c->state)) + " rx_queued=" + std::to_string(c->rx.size()) +
           " rx_cnt=" + std::to_string(c->rx_cnt) + " fwd_cnt=" + std::to_string(c->fwd_cnt) +
           " last_fwd_sent=" + std::to_string(c->last_fwd_cnt_sent) + " tx_cnt=" + std::to_string(c->tx_cnt) +
           " peer_buf_alloc=" + std::to_string(c->peer_buf_alloc) + " peer_fwd_cnt=" + std::to_string(c->peer_fwd_cnt) +
           " peer_credit=" + std::to_string(Impl::peer_free_credit(*c)) + "\n";
  }
  return out;
}

size_t GuestVsockDriver::connection_count() const {
  std::lock_guard lock(impl_->mu);
  return impl_->connections.size();
}

}  // namespace vhost_vsock::testing
