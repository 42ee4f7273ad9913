#include "vsock/router/router.h"

#include <algorithm>
#include <chrono>
#include <climits>
#include <stdexcept>
#include <utility>

#include "base/errno_text.h"

namespace vhost_vsock::vsock {
namespace {

bool is_known_op(uint16_t op) {
  return op >= static_cast<uint16_t>(Op::kRequest) && op <= static_cast<uint16_t>(Op::kCreditRequest);
}

}  // namespace

namespace {

// The daemon checks the same sizes when it reads its configuration; a bad
// combination reaching here is a programming error.
CreditBudget credit_budget_for(const MuxerLimits& limits) {
  std::string error;
  const auto sizes =
      derive_credit_budget(limits.tx_buffer_size, limits.tx_memory_limit, limits.max_connections, &error);
  if (!sizes) throw std::invalid_argument(error);
  return CreditBudget(*sizes, limits.max_connections);
}

}  // namespace

Router::Router(base::EventLoop& loop, Options options, MuxerStats& stats, Wakeups wakeups)
    : loop_(loop),
      options_(std::move(options)),
      stats_(stats),
      wakeups_(std::move(wakeups)),
      credit_budget_(credit_budget_for(options_.limits)) {
  if (options_.siblings != nullptr) attach_siblings();
  if (options_.forward_to) forward_dialer_.emplace(loop_, options_.forward_to);
}

Router::~Router() {
  wakeups_ = Wakeups{[] {}, [] {}};  // the pump may be gone already
  reset_all_connections();
  detach_siblings();
}

// ---------------------------------------------------------------------------
// Guest -> host

bool Router::wait_for_rst_room() {
  tx_waits_for_rx_ = true;
  return false;
}

void Router::note_invalid_tx_chain() {
  ++stats_.dropped_malformed;
  warn_guest("invalid TX descriptor chain");
}

bool Router::route_guest_packet(std::span<const iovec> readable, size_t readable_bytes) {
  const TxParseStatus status = parse_tx_packet(readable, tx_packet_);
  const PacketHeader& header = tx_packet_.header;
  // Only another well-formed RW to the host may join the gathered writes;
  // anything else sees them written first, in the order the guest sent them.
  if (gather_run_count_ > 0 &&
      (status != TxParseStatus::kOk || header.operation() != Op::kRw || header.dst_cid != kCidHost)) {
    flush_gathered();
  }
  if (status == TxParseStatus::kShortHeader) {
    ++stats_.dropped_malformed;
    warn_guest("TX chain with {} readable bytes, no room for a header", readable_bytes);
    return true;
  }
  // Invariant 2: only packets from the guest itself (never forwarded under another CID).
  if (header.src_cid != options_.guest_cid) {
    ++stats_.dropped_bad_address;
    warn_guest("dropped packet with bad address: {}", describe(header));
    return true;
  }
  // A packet to itself would be answered from its own address: no peer could have sent that.
  if (header.dst_cid == options_.guest_cid) {
    ++stats_.dropped_bad_address;
    warn_guest("dropped packet addressed to the guest's own CID: {}", describe(header));
    return true;
  }
  if (header.dst_cid != kCidHost) return route_to_sibling(status, header);
  ++stats_.packets_from_guest;
  if (status != TxParseStatus::kOk) {
    ++stats_.dropped_malformed;
    warn_guest("malformed packet ({}): {}", to_string(status), describe(header));
    if (RoutedConnection* connection = find_for(header)) {
      mutate(*connection, [](Connection& conn) { conn.reset(); });
    } else if (header.operation() != Op::kRst) {
      reply_rst(header);
    }
    return true;
  }
  route_parsed_packet(header, tx_packet_.payload.span());
  return true;
}

void Router::route_parsed_packet(const PacketHeader& header, std::span<const iovec> payload) {
  const Op op = header.operation();
  if (!routable_type(header.type)) {
    // Unknown types, and SEQPACKET when the driver did not ack the feature.
    if (op != Op::kRst) reply_rst(header);
    return;
  }
  RoutedConnection* connection = find_for(header);
  if (connection != nullptr && header.type != static_cast<uint16_t>(connection->conn.socket_type())) {
    // As Linux does: an RST of the packet's type, the connection left alone.
    ++stats_.protocol_violations;
    warn_guest("type {} packet on a connection of type {}: {}", header.type,
               static_cast<uint16_t>(connection->conn.socket_type()), describe(header));
    if (op != Op::kRst) reply_rst(header);
    return;
  }
  if (!is_known_op(header.op)) {
    ++stats_.dropped_malformed;
    warn_guest("unknown op: {}", describe(header));
    if (connection != nullptr) {
      mutate(*connection, [](Connection& conn) { conn.reset(); });
    } else {
      reply_rst(header);
    }
    return;
  }
  if (connection == nullptr) {
    if (op == Op::kRequest) {
      handle_guest_connect(header);
    } else if (op != Op::kRst) {
      reply_rst(header);  // never answer an orphan RST: it could reset a reused port pair
    }
    return;
  }
  if (op == Op::kRst && retry_connect_later(*connection)) return;
  if (gather_guest_data(*connection, header, payload)) return;
  mutate(*connection, [&](Connection& conn) {
    const ConnectionState before = conn.state();
    count_guest_verdict(*connection, header, before, conn.on_guest_packet(header, payload));
  });
}

bool Router::gather_guest_data(RoutedConnection& connection, const PacketHeader& header,
                               std::span<const iovec> payload) {
  GatherRun* run = find_gather_run(connection);
  if (!connection.conn.would_forward_at_once(header)) {
    if (run != nullptr) flush_gather_run(*run);  // whatever this packet does comes after the bytes before it
    return false;
  }
  if (run != nullptr && run->payload.size() + payload.size() > IOV_MAX) {
    flush_gather_run(*run);
    run = nullptr;
  }
  if (run == nullptr && gather_run_count_ == kMaxGatherRuns) flush_gathered();
  const uint32_t deferred_before = connection.conn.deferred_bytes();
  mutate(connection, [&](Connection& conn) {
    conn.defer_host_writes(true);
    const ConnectionState before = conn.state();
    count_guest_verdict(connection, header, before, conn.on_guest_packet(header, payload));
    conn.defer_host_writes(false);
  });
  // The check above mirrors accept_guest_data(); should they ever disagree,
  // the packet was handled the ordinary way and there is nothing to hold.
  if (connection.conn.deferred_bytes() != deferred_before + header.len) return true;
  if (run == nullptr) {
    run = &gather_runs_[gather_run_count_++];
    run->owner = &connection;
  } else {
    ++stats_.guest_writes_gathered;
  }
  for (const iovec& iov : payload) run->payload.push_back(iov);
  return true;
}

Router::GatherRun* Router::find_gather_run(const RoutedConnection& connection) {
  for (size_t i = 0; i < gather_run_count_; ++i) {
    if (gather_runs_[i].owner == &connection) return &gather_runs_[i];
  }
  return nullptr;
}

base::IovecList Router::take_gather_run(GatherRun& run) {
  base::IovecList payload = std::move(run.payload);
  run.owner = nullptr;
  std::swap(run, gather_runs_[--gather_run_count_]);  // the runs in use stay first
  return payload;
}

void Router::flush_gather_run(GatherRun& run) {
  RoutedConnection& owner = *run.owner;
  // Out of the table before the write, which may end the connection.
  base::IovecList payload = take_gather_run(run);
  mutate(owner, [&](Connection& conn) { conn.send_deferred(payload.span()); });
  payload.clear();
  gather_runs_[gather_run_count_].payload = std::move(payload);  // the freed slot keeps the storage
}

void Router::flush_gathered() {
  while (gather_run_count_ > 0) flush_gather_run(gather_runs_[gather_run_count_ - 1]);
}

bool Router::retry_connect_later(RoutedConnection& connection) {
  if (connection.conn.state() != ConnectionState::kAwaitingResponse ||
      connection.connect_wait_until == std::chrono::steady_clock::time_point{}) {
    return false;
  }
  const auto now = std::chrono::steady_clock::now();
  if (now >= connection.connect_wait_until) {
    log_info("local={} peer={} guest still refuses after {} ms ({} retries); giving up", connection.conn.local_port(),
             connection.conn.peer_port(), options_.limits.connect_wait.count(), connection.connect_retries);
    return false;
  }
  // Backoff 10, 20, 40 ... ms up to 500 ms: a guest agent that starts
  // listening is found within half a second, and a guest that never does
  // costs a few packets a second.
  constexpr std::chrono::milliseconds kFirstRetry{10};
  constexpr std::chrono::milliseconds kMaxRetry{500};
  const auto backoff = std::min(kMaxRetry, kFirstRetry * (1 << std::min<uint32_t>(connection.connect_retries, 6)));
  const auto left = std::chrono::ceil<std::chrono::milliseconds>(connection.connect_wait_until - now);
  ++connection.connect_retries;
  ++stats_.connect_wait_retries;
  connection.retry_armed = true;
  timers_.arm_after(connection, std::min(backoff, left));
  spdlog::debug("cid={} local={} peer={} guest refused; REQUEST again in {} ms", options_.guest_cid,
                connection.conn.local_port(), connection.conn.peer_port(), std::min(backoff, left).count());
  return true;
}

void Router::count_guest_verdict(const RoutedConnection& connection, const PacketHeader& header, ConnectionState before,
                                 GuestPacketVerdict verdict) {
  if (verdict != GuestPacketVerdict::kOk) {
    count_refused_guest_packet(connection, header, before, verdict);
    return;
  }
  if (header.operation() == Op::kRw && before == ConnectionState::kEstablished) stats_.bytes_from_guest += header.len;
}

void Router::count_refused_guest_packet(const RoutedConnection& connection, const PacketHeader& header,
                                        ConnectionState before, GuestPacketVerdict verdict) {
  const Connection& conn = connection.conn;
  switch (verdict) {
    case GuestPacketVerdict::kOk:
      break;
    case GuestPacketVerdict::kCreditViolation:
      ++stats_.credit_violations;
      warn_guest("local={} peer={} credit violation: len={} beyond credit (buf_alloc={} rx_cnt={} fwd_cnt={})",
                 conn.local_port(), conn.peer_port(), header.len, conn.buf_alloc(), conn.rx_cnt(), conn.fwd_cnt());
      break;
    case GuestPacketVerdict::kProtocolViolation:
      ++stats_.protocol_violations;
      warn_guest("local={} peer={} {} not valid in state {}", conn.local_port(), conn.peer_port(), op_name(header.op),
                 to_string(before));
      break;
    case GuestPacketVerdict::kMessageRefused:
      log_info("local={} peer={} host socket refused a {}-byte message; connection reset", conn.local_port(),
               conn.peer_port(), header.len);
      break;
    case GuestPacketVerdict::kTooManyMessages:
      ++stats_.protocol_violations;
      warn_guest("local={} peer={} more than {} messages wait for the host socket; resetting", conn.local_port(),
                 conn.peer_port(), kMaxBufferedMessages);
      break;
    case GuestPacketVerdict::kHostGone:
      ++stats_.resets_host_gone;
      spdlog::debug("cid={} local={} peer={} data for a closed host socket; resetting", options_.guest_cid,
                    conn.local_port(), conn.peer_port());
      break;
  }
}

void Router::handle_guest_connect(const PacketHeader& header) {
  const uint32_t port = header.dst_port;
  if (!connections_.has_room(pending_host_peers())) {
    warn_guest("connection limit {} reached; refusing guest port {} -> host port {}", options_.limits.max_connections,
               header.src_port, port);
    ++stats_.resets_cap;
    reply_rst(header);
    return;
  }
  UnixStreamDialer::Result dialed = dial_host(header);
  if (!dialed.endpoint) {
    ++stats_.host_connects_refused;
    log_info("local={} peer={} guest connect refused: {}", port, header.src_port, dialed.failure);
    reply_rst(header);
    return;
  }
  ConnectionParams params{options_.guest_cid, port, header.src_port, options_.limits.tx_buffer_size, 0,
                          &credit_budget_};
  const bool connecting = dialed.endpoint->connecting();
  RoutedConnection& connection = insert(std::make_unique<RoutedConnection>(
      params, std::move(dialed.endpoint),
      connecting ? ConnectionState::kConnectingToHost : ConnectionState::kEstablished, next_connection_id_++));
  if (connecting) {
    // RESPONSE or RST once the connect finishes; the request timeout bounds it.
    mutate(connection, [&](Connection& conn) {
      conn.update_peer_credit(header.buf_alloc, header.fwd_cnt);
      watch(connection);
      if (conn.state() == ConnectionState::kConnectingToHost) timers_.arm_for_state(connection);
    });
    return;
  }
  connection.was_established = true;
  ++stats_.connections_opened;
  ++stats_.connections_from_guest;
  log_info("local={} peer={} guest connection established", port, header.src_port);
  mutate(connection, [&](Connection& conn) {
    conn.update_peer_credit(header.buf_alloc, header.fwd_cnt);
    conn.accept_connect();
    watch(connection);
  });
}

UnixStreamDialer::Result Router::dial_host(const PacketHeader& request) {
  const auto type = static_cast<SocketType>(request.type);
  if (!forward_dialer_) return dialer_.dial(request.dst_port, type);
  if (type != SocketType::kStream) {
    return {nullptr, EPROTONOSUPPORT, fmt::format("port {}: forwarding carries streams only", request.dst_port)};
  }
  VsockForwardDialer::Result forwarded = forward_dialer_->dial(request.dst_port);
  return {std::move(forwarded.endpoint), forwarded.error, std::move(forwarded.failure)};
}

void Router::note_connect_finished(RoutedConnection& connection, ConnectionState now) {
  const Connection& conn = connection.conn;
  if (now == ConnectionState::kEstablished) {
    connection.was_established = true;
    ++stats_.connections_opened;
    ++stats_.connections_from_guest;
    log_info("local={} peer={} guest connection established (forwarded)", conn.local_port(), conn.peer_port());
    return;
  }
  if (conn.host_connect_error() != 0) {  // not a timeout or a guest RST: the host refused
    ++stats_.host_connects_refused;
    log_info("local={} peer={} guest connect refused: port {}: connect: {}", conn.local_port(), conn.peer_port(),
             conn.local_port(), base::errno_text(conn.host_connect_error()));
  }
}

void Router::reply_rst(const PacketHeader& to) {
  // process_tx() takes a packet only while there is room for its reply, so
  // this cannot fail; the counter stays as a tripwire.
  if (!orphan_rsts_.push_reply_to(to, options_.guest_cid)) {
    ++stats_.orphan_rsts_dropped;
    return;
  }
  wakeups_.rx();
}

void Router::wake_tx_if_waiting() {
  if (!tx_waits_for_rx_ || orphan_rsts_.full()) return;
  tx_waits_for_rx_ = false;
  wakeups_.tx();
}

// ---------------------------------------------------------------------------
// Host -> guest

bool Router::has_control_packet() {
  while (RoutedConnection* connection = control_list_.front()) {
    const Connection& conn = connection->conn;
    if (conn.pending_control() == 0) {
      control_list_.pop_front();
      continue;
    }
    if (conn.pending_control() == control::kCreditUpdate && conn.can_send_to_guest()) {
      // A data packet is about to carry the same credit: let it. If no data
      // comes out after all, settle() puts the update back here.
      control_list_.pop_front();
      data_list_.push_back(connection->data_hook);
      continue;
    }
    return true;
  }
  return !sibling_rsts_.empty() || !orphan_rsts_.empty();
}

// ---------------------------------------------------------------------------
// Connection table and lifecycle

RoutedConnection* Router::find_for(const PacketHeader& from_guest) const {
  return connections_.find({options_.guest_cid, from_guest.dst_port, from_guest.src_port});
}

RoutedConnection& Router::insert(std::unique_ptr<RoutedConnection> owned) {
  if (RoutedConnection* old = connections_.find(owned->key())) erase(*old);  // callers check first
  RoutedConnection& connection = connections_.insert(std::move(owned));
  stats_.connections_active = connections_.size();
  publish_connection_count();
  return connection;
}

void Router::erase(RoutedConnection& connection) {
  // Not expected (every other packet or event flushes first), but its
  // deferred bytes were accepted: they go out before the socket closes.
  if (GatherRun* run = find_gather_run(connection)) connection.conn.send_deferred(take_gather_run(*run).span());
  timers_.cancel(connection);
  if (connection.was_established) {
    log_info("local={} peer={} connection closed", connection.conn.local_port(), connection.conn.peer_port());
  }
  connections_.erase(connection);  // destroys it, closing its host socket
  stats_.connections_active = connections_.size();
  publish_connection_count();
}

void Router::watch(RoutedConnection& connection) {
  Connection& conn = connection.conn;
  try {
    conn.watch_host(
        [this, key = connection.key(), id = connection.id](HostEvents events) { on_host_event(key, id, events); });
  } catch (const std::exception& error) {
    // epoll refused the socket (out of memory or watches): this connection cannot work.
    spdlog::error("cid={} local={} peer={} cannot watch host socket: {}", options_.guest_cid, conn.local_port(),
                  conn.peer_port(), error.what());
    conn.reset();
  }
}

bool Router::settle(RoutedConnection& connection, ConnectionState before) {
  Connection& conn = connection.conn;
  const ConnectionState now = conn.state();
  if (now == ConnectionState::kForgotten) {
    if (before == ConnectionState::kAwaitingResponse) ++stats_.handshake_failures;
    erase(connection);
    return false;
  }
  if (now != before) {
    if (before == ConnectionState::kConnectingToHost) note_connect_finished(connection, now);
    if (before == ConnectionState::kAwaitingResponse) {
      if (now == ConnectionState::kEstablished) {
        connection.was_established = true;
        ++stats_.connections_opened;
        ++stats_.connections_from_host;
        log_info("local={} peer={} host connection established", conn.local_port(), conn.peer_port());
      } else {
        ++stats_.handshake_failures;
      }
    }
    timers_.arm_for_state(connection);
  }
  // Without credit it is not queued (sendable_to_guest() begins a credit
  // stall): the guest's next credit update settles it again.
  if (conn.sendable_to_guest() > 0) {
    data_list_.push_back(connection.data_hook);
    wakeups_.rx();
  }
  if (conn.credit_stalls() != connection.credit_stalls_seen) note_credit_stall(connection);
  if (conn.pending_control() != 0) {
    control_list_.push_back(connection.control_hook);
    wakeups_.rx();
  }
  return true;
}

void Router::note_credit_stall(RoutedConnection& connection) {
  const Connection& conn = connection.conn;
  stats_.credit_stalls += conn.credit_stalls() - connection.credit_stalls_seen;
  connection.credit_stalls_seen = conn.credit_stalls();
  // Established connections have no other timer; a seqpacket stall has asked already.
  if (conn.state() != ConnectionState::kEstablished || connection.timer != 0 || conn.is_seqpacket()) return;
  arm_credit_timer(connection);
}

void Router::arm_credit_timer(RoutedConnection& connection) {
  connection.credit_stall_timed = connection.conn.credit_stalls();
  timers_.arm_after(connection, options_.limits.credit_request_delay);
}

// The credit timer of an established stream: ask only if the stall it was
// armed for still lasts; a later stall gets its own full delay.
void Router::ask_for_credit_if_still_stalled(RoutedConnection& connection) {
  const Connection& conn = connection.conn;
  if (!conn.credit_stalled()) return;
  if (conn.credit_stalls() != connection.credit_stall_timed) {
    arm_credit_timer(connection);
    return;
  }
  mutate(connection, [](Connection& stalled) { stalled.request_credit(); });
}

void Router::on_timer_expired(RoutedConnection& connection) {
  const Connection& conn = connection.conn;
  const ConnectionTimers::Durations& durations = timers_.durations();
  switch (conn.state()) {
    case ConnectionState::kEstablished:
      ask_for_credit_if_still_stalled(connection);
      return;
    case ConnectionState::kAwaitingResponse:
      if (connection.retry_armed) {  // connect-wait: the backoff after a guest RST is over
        connection.retry_armed = false;
        mutate(connection, [&](Connection& retried) {
          retried.request_connect();
          timers_.arm_for_state(connection);  // the request timeout again
        });
        return;
      }
      log_info("local={} peer={} guest did not answer our REQUEST in {} ms", conn.local_port(), conn.peer_port(),
               durations.request_timeout.count());
      break;
    case ConnectionState::kConnectingToHost:
      log_info("local={} peer={} host connect did not finish in {} ms", conn.local_port(), conn.peer_port(),
               durations.request_timeout.count());
      break;
    case ConnectionState::kClosingAfterFlush:
      // The timeout is for a host that stopped reading, not a slow one: the
      // host never sees a truncated stream while it keeps reading.
      if (conn.host_backlog() < connection.flush_backlog) {
        timers_.arm_for_state(connection);
        return;
      }
      log_info("local={} peer={} host read none of the last {} bytes in {} ms; closing", conn.local_port(),
               conn.peer_port(), conn.tx_buffered_bytes(), durations.shutdown_timeout.count());
      break;
    case ConnectionState::kAwaitingGuestRst:
      spdlog::debug("cid={} local={} peer={} guest did not RST after SHUTDOWN; forgetting", options_.guest_cid,
                    conn.local_port(), conn.peer_port());
      break;
    default:
      return;
  }
  ++stats_.resets_timeout;
  mutate(connection, [](Connection& expired) { expired.reset(); });
}

void Router::on_host_event(const ConnectionKey& key, uint64_t id, HostEvents events) {
  RoutedConnection* connection = connections_.find(key);
  if (connection == nullptr || connection->id != id) return;
  mutate(*connection, [events](Connection& conn) { conn.on_host_events(events); });
}

void Router::reset_all_connections() {
  control_list_.clear();
  data_list_.clear();
  connections_.for_each([this](RoutedConnection& connection) {
    timers_.cancel(connection);
    if (connection.was_established) {
      log_info("local={} peer={} connection reset (guest driver gone)", connection.conn.local_port(),
               connection.conn.peer_port());
    }
  });
  stats_.resets_driver_gone += connections_.size();
  connections_.clear();  // closes every host socket
  orphan_rsts_.clear();
  wake_tx_if_waiting();
  stats_.connections_active = 0;
  reset_sibling_connections();
}

bool Router::admit_host_peer() {
  if (connections_.has_room(pending_host_peers())) return true;
  ++stats_.handshake_failures;
  log_info("connection limit {} reached; closing new host connection", options_.limits.max_connections);
  return false;
}

void Router::on_host_connect(std::unique_ptr<HostEndpoint> endpoint, uint32_t guest_port,
                             std::span<const uint8_t> early_bytes) {
  if (!connections_.has_room(sibling_table_.size())) {
    ++stats_.handshake_failures;
    log_info("connection limit {} reached; refusing host connect to port {}", options_.limits.max_connections,
             guest_port);
    return;
  }
  // Bounded: more candidates than live connections guarantees a free port.
  const auto host_port = port_allocator_.allocate(
      [this](uint32_t port) { return connections_.local_port_in_use(port); }, connections_.size() + 1);
  if (!host_port) {
    ++stats_.handshake_failures;
    return;
  }
  ConnectionParams params{options_.guest_cid, *host_port, guest_port, options_.limits.tx_buffer_size, 0,
                          &credit_budget_};
  RoutedConnection& connection = insert(std::make_unique<RoutedConnection>(
      params, std::move(endpoint), ConnectionState::kAwaitingResponse, next_connection_id_++));
  spdlog::debug("cid={} local={} peer={} host connect: REQUEST sent to the guest", options_.guest_cid, *host_port,
                guest_port);
  mutate(connection, [&](Connection& conn) {
    conn.set_early_host_bytes(early_bytes);
    conn.request_connect();
    if (options_.limits.connect_wait.count() > 0) {
      connection.connect_wait_until = std::chrono::steady_clock::now() + options_.limits.connect_wait;
    }
    watch(connection);
    timers_.arm_for_state(connection);  // the request timeout (none if watching failed)
  });
}

void Router::on_handshake_failed(const std::string& uds_path, const char* reason) {
  ++stats_.handshake_failures;
  log_info("host connection on {} dropped: {}", uds_path, reason);
}

}  // namespace vhost_vsock::vsock
