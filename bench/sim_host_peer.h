// The host side of the simulated-guest benchmarks: an AF_UNIX program in its
// own process (bench_sim re-executes itself as "host-peer"), so that the
// daemon is measured between two processes exactly as the ceiling is.
//
// It talks to the parent over a control socket, one text line each way:
//   peer -> parent  "ready"             sockets are set up
//   parent -> peer  "go"                start the timed part
//   peer -> parent  "done <json>"       finished, with its figures
//   peer -> parent  "error <message>"   something broke (data mismatch, ...)
#pragma once

#include <string>

#include "bench_common.h"

namespace vhost_vsock::bench {

inline constexpr uint32_t kBasePort = 5000;

// Blocking line I/O on the control socket. read_line returns false on EOF,
// error or a line longer than 4 KiB.
bool send_line(int fd, const std::string& line);
bool read_line(int fd, std::string& line);

// Entry point of "bench_sim host-peer --role R ...": roles are
//   recv          listen on <uds>_<5000+i>, accept --streams, read --bytes each (guest -> host)
//   send          CONNECT 5000+i through <uds>, write --bytes each (host -> guest)
//   rtt           CONNECT 5000, --count 1-byte round trips against the guest's echo
//   connect       --count CONNECT 5000 -> OK -> close, back to back, or with
//                 --parallel N handshakes in flight (non-blocking, poll)
//   accept        listen on <uds>_5000, accept and close --count connections
//   seq-recv      listen SOCK_SEQPACKET on <uds>_5000, accept one, read --count messages of --io-size
//   seq-send      CONNECT 5000 through <uds>_seqpacket, send --count messages of --io-size
//   idle          --count CONNECTs to 5000 held open until the parent closes the control socket
int run_host_peer(const Options& options);

}  // namespace vhost_vsock::bench
