// Sibling VMs: guest packets for another VM of this daemon (a shared group)
// are copied out of our guest's memory once and handed to that VM's worker
// through the SiblingHub; packets from siblings wait in their channels until
// the pump writes them into our guest's RX ring. The guests are the
// endpoints: headers pass unchanged (src_cid checked), credit included. The
// router only refuses (RST at once, one rate-limited line naming both CIDs),
// holds the TX pass while a channel is full, and tracks each connection for
// the cap, the listing, and the RSTs owed when a sibling's guest goes away.
#include <spdlog/spdlog.h>
#include <sys/epoll.h>

#include "vsock/router/router.h"

namespace vhost_vsock::vsock {
namespace {

// The key of a packet our guest sends to a sibling, and of one it receives.
ConnectionKey key_from_guest(const PacketHeader& header) {
  return {header.dst_cid, header.src_port, header.dst_port};
}
ConnectionKey key_to_guest(const PacketHeader& header) {
  return {header.src_cid, header.dst_port, header.src_port};
}

}  // namespace

void Router::attach_siblings() {
  sibling_self_ = options_.siblings->member(options_.guest_cid);
  if (sibling_self_ == nullptr) return;
  loop_.add(sibling_self_->wake_fd.get(), EPOLLIN, [this](uint32_t) { on_sibling_wake(); });
  for (auto& [cid, channel] : sibling_self_->outbound) {
    channel->seen_receiver_epoch = channel->to.epoch.load(std::memory_order_acquire);
  }
  publish_connection_count();
  // A router of this CID that went before (a reload) may have left packets
  // for its guest (it told the siblings when it went: its reset bumped the epoch).
  discard_inbound();
}

void Router::detach_siblings() {
  if (sibling_self_ == nullptr) return;
  sibling_self_->reachable.store(false, std::memory_order_release);
  loop_.remove(sibling_self_->wake_fd.get());
  sibling_self_ = nullptr;
}

void Router::set_seqpacket_enabled(bool enabled) {
  seqpacket_enabled_ = enabled;
  if (sibling_self_ != nullptr) sibling_self_->seqpacket.store(enabled, std::memory_order_release);
}

void Router::set_guest_reachable(bool reachable) {
  if (sibling_self_ != nullptr) sibling_self_->reachable.store(reachable, std::memory_order_release);
}

void Router::publish_connection_count() {
  stats_.sibling_connections_active = sibling_table_.size();
  if (sibling_self_ != nullptr) sibling_self_->connections.store(live_connections(), std::memory_order_relaxed);
}

// ---------------------------------------------------------------------------
// Our guest -> a sibling

bool Router::route_to_sibling(TxParseStatus status, const PacketHeader& header) {
  if (status != TxParseStatus::kOk) {
    ++stats_.packets_from_guest;
    ++stats_.dropped_malformed;
    warn_guest("malformed packet ({}): {}", to_string(status), describe(header));
    if (header.operation() != Op::kRst) reply_rst(header);
    return true;
  }
  SiblingHub::Channel* channel = nullptr;
  if (sibling_self_ != nullptr) {
    auto it = sibling_self_->outbound.find(header.dst_cid);
    if (it != sibling_self_->outbound.end()) channel = it->second;
  }
  if (const char* why = sibling_refusal(header, channel)) {
    ++stats_.packets_from_guest;
    refuse_sibling_packet(header, why);
    return true;
  }
  if (!SiblingHub::reserve_room(*channel, header.len)) {
    // The chain stays in the ring; the receiver's release wakes us (on_sibling_wake).
    ++stats_.sibling_tx_stalls;
    tx_waits_for_sibling_ = true;
    return false;
  }
  forward_to_sibling(*channel, header);
  return true;
}

const char* Router::sibling_refusal(const PacketHeader& header, const SiblingHub::Channel* channel) {
  if (channel == nullptr) {
    if (sibling_self_ == nullptr) return "sibling routing is off for this VM";
    return options_.siblings->member(header.dst_cid) == nullptr ? "unknown CID" : "no shared group";
  }
  if (!channel->to.reachable.load(std::memory_order_acquire)) return "its guest is not running";
  if (header.op < static_cast<uint16_t>(Op::kRequest) || header.op > static_cast<uint16_t>(Op::kCreditRequest)) {
    return "unknown op";
  }
  const bool seqpacket = header.type == static_cast<uint16_t>(SocketType::kSeqpacket);
  if (!routable_type(header.type) || (seqpacket && !channel->to.seqpacket.load(std::memory_order_acquire))) {
    return "socket type not enabled on both sides";
  }
  const Op op = header.operation();
  if (op == Op::kRst) return nullptr;  // always passed on, never answered
  const bool known = sibling_table_.find(key_from_guest(header)) != nullptr;
  if (op != Op::kRequest) return known ? nullptr : "no such connection";
  if (known) return nullptr;  // a repeated REQUEST: the sibling's kernel answers it
  if (!connections_.has_room(pending_host_peers())) {
    ++stats_.resets_cap;
    return "connection limit reached here";
  }
  if (channel->to.connections.load(std::memory_order_relaxed) >= channel->to.max_connections) {
    ++stats_.resets_cap;
    return "connection limit reached on the sibling";
  }
  return nullptr;
}

void Router::refuse_sibling_packet(const PacketHeader& header, const char* why) {
  ++stats_.sibling_refused;
  if (sibling_limiter_.allow()) {
    spdlog::info("cid={} packet to cid={} refused ({}), {}: {}", options_.guest_cid, header.dst_cid, why,
                 header.operation() == Op::kRst ? "dropped" : "RST sent", describe(header));
  }
  if (header.operation() != Op::kRst) reply_rst(header);
}

void Router::forward_to_sibling(SiblingHub::Channel& channel, const PacketHeader& header) {
  SiblingPacket packet;
  packet.header = header;
  packet.sender_epoch = sibling_self_->epoch.load(std::memory_order_relaxed);
  if (header.len > 0) {
    // The one copy out of our guest's memory (bounded: kMaxPacketPayload, and the channel's budget).
    packet.payload.reset(new uint8_t[header.len]);
    base::copy_from_iovecs(tx_packet_.payload.span(), 0, std::span<uint8_t>(packet.payload.get(), header.len));
  }
  track_sibling_packet(header, true);
  ++stats_.packets_from_guest;
  ++stats_.sibling_packets_out;
  stats_.sibling_bytes_out += header.len;
  SiblingHub::push(channel, packet);
}

// Both directions see the same packets: each router keeps its own entry.
void Router::track_sibling_packet(const PacketHeader& header, bool from_our_guest) {
  const ConnectionKey key = from_our_guest ? key_from_guest(header) : key_to_guest(header);
  SiblingConnection* entry = sibling_table_.find(key);
  switch (header.operation()) {
    case Op::kRequest:
      // Towards our guest, the sender checked our cap against the count we publish.
      if (entry == nullptr) open_sibling_entry(header, from_our_guest);
      break;
    case Op::kRst:
      close_sibling_entry(key);
      break;
    case Op::kResponse:
      if (entry != nullptr && !entry->established) {
        entry->established = true;
        loop_.cancel_timer(entry->timer);
        ++stats_.sibling_connections_opened;
        log_info("local={} sibling={}:{} sibling connection established", key.local_port, key.peer_cid, key.peer_port);
      }
      break;
    case Op::kRw:
      if (entry != nullptr) (from_our_guest ? entry->bytes_from_guest : entry->bytes_to_guest) += header.len;
      break;
    default:
      break;
  }
}

// ---------------------------------------------------------------------------
// A sibling -> our guest

SiblingHub::Channel* Router::next_sibling_packet() {
  if (sibling_self_ == nullptr) return nullptr;
  const std::vector<SiblingHub::Channel*>& inbound = sibling_self_->inbound;
  for (size_t i = 0; i < inbound.size(); ++i) {
    const size_t index = (next_inbound_ + i) % inbound.size();
    SiblingHub::Channel& channel = *inbound[index];
    // Packets from a sender's guest that has gone since are of no use to anyone.
    for (size_t stale = 0; stale <= SiblingHub::kChannelPackets; ++stale) {
      SiblingPacket* packet = SiblingHub::peek(channel);
      if (packet == nullptr) break;
      if (packet->sender_epoch == channel.from.epoch.load(std::memory_order_acquire)) {
        next_inbound_ = index;
        return &channel;
      }
      SiblingHub::release(channel);
    }
  }
  return nullptr;
}

void Router::finish_sibling_packet(SiblingHub::Channel& channel) {
  if (!channel.head.has_value()) return;
  const PacketHeader& header = channel.head->header;
  track_sibling_packet(header, false);
  ++stats_.sibling_packets_in;
  stats_.sibling_bytes_in += header.len;
  SiblingHub::release(channel);
  next_inbound_ = (next_inbound_ + 1) % std::max<size_t>(1, sibling_self_->inbound.size());
}

// ---------------------------------------------------------------------------
// Tracking and lifecycle

void Router::open_sibling_entry(const PacketHeader& request, bool from_our_guest) {
  const ConnectionKey key = from_our_guest ? key_from_guest(request) : key_to_guest(request);
  SiblingConnection entry;
  entry.type = static_cast<SocketType>(request.type);
  entry.from_our_guest = from_our_guest;
  entry.created = std::chrono::steady_clock::now();
  SiblingConnection& inserted = sibling_table_.insert(key, entry);
  // A REQUEST nobody answers must not hold a place under the cap forever.
  inserted.timer = loop_.add_timer(options_.limits.request_timeout,
                                   [this, key, id = inserted.id] { on_sibling_request_timeout(key, id); });
  publish_connection_count();
}

void Router::close_sibling_entry(const ConnectionKey& key) {
  SiblingConnection* entry = sibling_table_.find(key);
  if (entry == nullptr) return;
  loop_.cancel_timer(entry->timer);
  if (entry->established) {
    log_info("local={} sibling={}:{} sibling connection closed", key.local_port, key.peer_cid, key.peer_port);
  }
  sibling_table_.erase(key);
  publish_connection_count();
}

void Router::on_sibling_request_timeout(const ConnectionKey& key, uint64_t id) {
  SiblingConnection* entry = sibling_table_.find(key);
  if (entry == nullptr || entry->id != id || entry->established) return;
  spdlog::debug("cid={} local={} sibling={}:{} REQUEST unanswered; forgotten", options_.guest_cid, key.local_port,
                key.peer_cid, key.peer_port);
  entry->timer = 0;
  close_sibling_entry(key);
}

void Router::on_sibling_wake() {
  if (sibling_self_ == nullptr) return;
  SiblingHub::take_wake(*sibling_self_);
  for (auto& [cid, channel] : sibling_self_->outbound) {
    const uint64_t epoch = channel->to.epoch.load(std::memory_order_acquire);
    if (epoch == channel->seen_receiver_epoch) continue;
    channel->seen_receiver_epoch = epoch;
    reset_connections_to(cid);
  }
  if (tx_waits_for_sibling_) {
    tx_waits_for_sibling_ = false;
    wakeups_.tx();
  }
  wakeups_.rx();  // packets may have arrived
}

void Router::reset_connections_to(uint64_t sibling_cid) {
  const size_t reset = sibling_table_.erase_if(
      [&](const ConnectionKey& key, const SiblingConnection&) { return key.peer_cid == sibling_cid; },
      [&](const ConnectionKey& key, const SiblingConnection& entry) {
        loop_.cancel_timer(entry.timer);
        PacketHeader rst;
        rst.src_cid = sibling_cid;
        rst.dst_cid = options_.guest_cid;
        rst.src_port = key.peer_port;
        rst.dst_port = key.local_port;
        rst.type = static_cast<uint16_t>(entry.type);
        rst.op = static_cast<uint16_t>(Op::kRst);
        sibling_rsts_.push_back(rst);
      });
  if (reset == 0) return;
  stats_.sibling_resets_peer_gone += reset;
  log_info("sibling cid={} went away (front-end gone or guest reset): {} connection(s) to it reset", sibling_cid,
           reset);
  publish_connection_count();
  wakeups_.rx();
}

void Router::reset_sibling_connections() {
  if (sibling_self_ == nullptr) return;
  sibling_table_.for_each(
      [&](const ConnectionKey&, const SiblingConnection& entry) { loop_.cancel_timer(entry.timer); });
  stats_.resets_driver_gone += sibling_table_.size();
  sibling_table_.clear();
  sibling_rsts_.clear();
  tx_waits_for_sibling_ = false;  // the pump's next attach runs TX again
  sibling_self_->epoch.fetch_add(1, std::memory_order_acq_rel);
  discard_inbound();
  for (auto& [cid, channel] : sibling_self_->outbound) SiblingHub::wake(channel->to);
  publish_connection_count();
}

// What waits for our old guest is of no use to a new one: let the senders go on.
void Router::discard_inbound() {
  for (SiblingHub::Channel* channel : sibling_self_->inbound) {
    for (size_t i = 0; i <= SiblingHub::kChannelPackets && SiblingHub::peek(*channel) != nullptr; ++i) {
      SiblingHub::release(*channel);
    }
  }
}

}  // namespace vhost_vsock::vsock
