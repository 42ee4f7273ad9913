// The per-VM limits and counters of the vsock device. They live below the
// router and the queue pump, which both count into MuxerStats; the public
// Muxer API (vsock/muxer/muxer.h) includes them.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>

namespace vhost_vsock::vsock {

struct MuxerLimits {
  // The largest buf_alloc we advertise per connection: the most guest->host
  // bytes we hold for one connection while its host socket would block
  // (vhost-device-vsock's --tx-buffer-size; 256 KiB, Linux's own default).
  uint32_t tx_buffer_size = 256 * 1024;
  // All connections' guest->host promises together (--tx-memory-limit);
  // 0 derives it from max_connections (see vsock/connection/credit_budget.h).
  uint64_t tx_memory_limit = 0;
  size_t max_connections = 65536;
  std::chrono::milliseconds handshake_timeout{5000};  // host peer must finish "CONNECT <port>\n"
  std::chrono::milliseconds request_timeout{2000};    // guest must answer our REQUEST
  std::chrono::milliseconds shutdown_timeout{2000};   // guest must RST after our full SHUTDOWN
  // A stream stalled for the guest's credit this long without the update a
  // Linux guest sends unasked gets a CREDIT_REQUEST (Connection::note_credit_starved).
  std::chrono::milliseconds credit_request_delay{10};
  // Connect-wait: a host CONNECT the guest refuses (RST: nothing listens yet)
  // is retried with backoff for this long before the host program is closed.
  // 0: off, the first RST closes it.
  std::chrono::milliseconds connect_wait{0};
  size_t max_connect_line = 64;  // bytes, newline included
  // Busy polling (--poll-us): how long the worker keeps watching the rings,
  // kicks suppressed, after a pass that moved chains. 0: off, sleep at once.
  std::chrono::microseconds busy_poll{0};
};

struct MuxerStats {
  uint64_t connections_opened = 0;  // reached ESTABLISHED
  uint64_t connections_active = 0;
  uint64_t host_connects_refused = 0;  // guest REQUEST with no host listener
  uint64_t handshake_failures = 0;     // bad/over-long/silent CONNECT lines, guest refusals, timeouts
  uint64_t connect_wait_retries = 0;   // REQUESTs sent again after a guest RST (connect-wait)
  uint64_t packets_from_guest = 0;
  uint64_t packets_to_guest = 0;
  uint64_t bytes_from_guest = 0;
  uint64_t bytes_to_guest = 0;
  uint64_t dropped_bad_address = 0;  // src_cid != guest cid or dst_cid != host
  uint64_t dropped_malformed = 0;    // unparseable chains, unknown type/op
  uint64_t resets_sent = 0;
  uint64_t credit_violations = 0;    // guest sent beyond our advertised credit
  uint64_t protocol_violations = 0;  // op not valid in the connection's state
  uint64_t rx_chains_too_small = 0;  // RX chains returned unused (no room for a header, or for data)
  uint64_t orphan_rsts_dropped = 0;  // RST replies lost to a full queue: 0 (TX backpressure); a tripwire
  uint64_t rx_passes = 0;            // RX scheduling passes run (wake-ups of the RX path)
  uint64_t tx_passes = 0;            // TX passes run (each drains the ring up to a budget)
  uint64_t busy_poll_windows = 0;    // --poll-us: polling windows begun (each after a pass that moved chains)
  uint64_t busy_poll_finds = 0;      // --poll-us: passes scheduled because polling found buffers (no kick needed)
  uint64_t messages_refused = 0;     // seqpacket host messages that can never fit the guest (connection reset)
  // For the metrics endpoint (daemon --metrics): where connections came from,
  // why they were reset, and how often host data waited for guest credit.
  uint64_t connections_from_guest = 0;  // of connections_opened: the guest connected to a host port
  uint64_t connections_from_host = 0;   // of connections_opened: a host program sent CONNECT
  uint64_t resets_timeout = 0;          // a request or shutdown timer expired
  uint64_t resets_cap = 0;              // guest connects refused at the connection cap
  uint64_t resets_host_gone = 0;        // guest data for a host socket already closed
  uint64_t resets_driver_gone = 0;      // connections dropped with the guest's driver (device reset, disconnect)
  uint64_t credit_stalls = 0;           // host data began to wait for the guest's credit
  uint64_t credit_requests = 0;         // CREDIT_REQUESTs sent (at once for seqpacket, late stalls for streams)
  uint64_t guest_writes_gathered = 0;   // guest RW packets sent in one sendmsg with an earlier one of their connection
  // Gauges, read when the stats are asked for: guest->host credit promised
  // now, and the VM's limit for it (--tx-memory-limit, see CreditBudget).
  uint64_t tx_memory_reserved = 0;
  uint64_t tx_memory_limit = 0;
  // Sibling VMs of the same daemon (a shared group); packets relayed guest to guest.
  uint64_t sibling_connections_active = 0;  // tracked connections to siblings (count against the cap)
  uint64_t sibling_connections_opened = 0;  // a sibling connection's RESPONSE went through
  uint64_t sibling_packets_out = 0;         // from our guest to a sibling
  uint64_t sibling_packets_in = 0;          // from a sibling to our guest
  uint64_t sibling_bytes_out = 0;
  uint64_t sibling_bytes_in = 0;
  uint64_t sibling_refused = 0;           // RST at once: unknown CID, no shared group, sibling down, cap
  uint64_t sibling_tx_stalls = 0;         // the TX pass stopped at a sibling's full channel
  uint64_t sibling_resets_peer_gone = 0;  // RSTs to our guest: the sibling's guest went away
};

}  // namespace vhost_vsock::vsock
