/* vsock_tool: the test and benchmark peer for vhost-user-vsock.
 *
 * One static binary, run in the guest (AF_VSOCK) and on the host (AF_UNIX,
 * optionally with the hybrid "CONNECT <port>\n" handshake). Every byte sent
 * is a deterministic pattern of (seed, offset), so the receiver verifies
 * content and position, not just a count. Many connections are driven at
 * once from one poll loop. Run with no arguments for usage.
 *
 * Output: one "vsock_tool: ok ..." summary line with sizes and timings on
 * success (exit 0); "vsock_tool: ..." error lines on stderr and exit 1 on any
 * failure; exit 2 on bad usage.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <linux/vm_sockets.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "tool_util.h"

#define MAX_CONNS 100000
#define MAX_CHUNK (1u << 20)

struct options {
  const char* mode;
  unsigned cid, port;
  const char* path;
  long hybrid_port; /* -1: plain AF_UNIX connect */
  long conns;
  long long send_bytes, recv_bytes; /* recv_bytes -1: no expectation */
  bool drain, echo, shut_wr, send_after_eof, expect_eof, sha, quiet;
  uint64_t seed, recv_seed;
  bool recv_seed_set;
  int expect_errno;
  double timeout;
  size_t chunk;
  long repeat, rtt_count;
  size_t msg_size;
};

struct conn {
  int fd;
  long index;
  uint64_t send_seed, recv_seed;
  uint64_t sent, recvd;
  bool eof, shut, done, failed;
  uint8_t* echo_buf;
  size_t echo_len, echo_off;
  struct sha256 sha_sent, sha_recv;
  char sent_hex[65], recv_hex[65];
};

static struct options opt;
static uint8_t *io_buf, *expect_buf;
static long failures;

static void fail(const struct conn* c, const char* fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  if (c)
    fprintf(stderr, "vsock_tool: conn %ld: ", c->index);
  else
    fprintf(stderr, "vsock_tool: ");
  vfprintf(stderr, fmt, ap);
  fputc('\n', stderr);
  va_end(ap);
  failures++;
}

static void set_nonblocking(int fd) {
  fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
}

static socklen_t make_address(struct sockaddr_storage* ss, bool listening) {
  memset(ss, 0, sizeof(*ss));
  if (opt.path) {
    struct sockaddr_un* un = (struct sockaddr_un*)ss;
    un->sun_family = AF_UNIX;
    if (strlen(opt.path) >= sizeof(un->sun_path)) {
      fprintf(stderr, "vsock_tool: path too long for AF_UNIX: %s\n", opt.path);
      exit(2);
    }
    strcpy(un->sun_path, opt.path);
    return sizeof(*un);
  }
  struct sockaddr_vm* vm = (struct sockaddr_vm*)ss;
  vm->svm_family = AF_VSOCK;
  vm->svm_cid = listening ? VMADDR_CID_ANY : opt.cid;
  vm->svm_port = opt.port;
  return sizeof(*vm);
}

/* Reads the hybrid reply one byte at a time so no payload after it is eaten. */
static int hybrid_handshake(int fd, long index) {
  char line[64];
  int len = snprintf(line, sizeof(line), "CONNECT %ld\n", opt.hybrid_port);
  if (send(fd, line, (size_t)len, MSG_NOSIGNAL) != len) {
    fprintf(stderr, "vsock_tool: conn %ld: sending CONNECT: %s\n", index, strerror(errno));
    return -1;
  }
  size_t got = 0;
  for (;;) {
    struct pollfd p = {.fd = fd, .events = POLLIN};
    if (poll(&p, 1, (int)(opt.timeout * 1000)) != 1) {
      fprintf(stderr, "vsock_tool: conn %ld: no reply to CONNECT\n", index);
      return -1;
    }
    ssize_t n = read(fd, line + got, 1);
    if (n <= 0) {
      line[got] = '\0';
      fprintf(stderr, "vsock_tool: conn %ld: closed during handshake after '%s': %s\n", index, line,
              n == 0 ? "EOF" : strerror(errno));
      return -1;
    }
    if (line[got] == '\n') break;
    if (++got >= sizeof(line) - 1) {
      fprintf(stderr, "vsock_tool: conn %ld: handshake reply too long\n", index);
      return -1;
    }
  }
  line[got] = '\0';
  if (strncmp(line, "OK ", 3) != 0) {
    fprintf(stderr, "vsock_tool: conn %ld: bad handshake reply '%s'\n", index, line);
    return -1;
  }
  return 0;
}

static int open_client(long index, double* connect_seconds) {
  struct sockaddr_storage ss;
  socklen_t len = make_address(&ss, false);
  int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    fprintf(stderr, "vsock_tool: socket: %s\n", strerror(errno));
    return -1;
  }
  double start = now();
  int rc = connect(fd, (struct sockaddr*)&ss, len);
  int err = errno;
  *connect_seconds = now() - start;
  if (opt.expect_errno) {
    close(fd);
    if (rc == 0) {
      fprintf(stderr, "vsock_tool: connect succeeded, expected %s\n", errno_name(opt.expect_errno));
      return -1;
    }
    printf("connect_error errno=%d name=%s seconds=%.6f\n", err, errno_name(err), *connect_seconds);
    return err == opt.expect_errno ? -2 : -1;
  }
  if (rc != 0) {
    fprintf(stderr, "vsock_tool: conn %ld: connect failed: errno=%d (%s, %s) after %.3fs\n", index, err,
            errno_name(err), strerror(err), *connect_seconds);
    close(fd);
    return -1;
  }
  if (opt.path && opt.hybrid_port >= 0 && hybrid_handshake(fd, index) != 0) {
    close(fd);
    return -1;
  }
  *connect_seconds = now() - start;
  set_nonblocking(fd);
  return fd;
}

static void conn_init(struct conn* c, int fd, long index) {
  memset(c, 0, sizeof(*c));
  c->fd = fd;
  c->index = index;
  c->send_seed = opt.seed + (uint64_t)index;
  c->recv_seed = (opt.recv_seed_set ? opt.recv_seed : opt.seed) + (uint64_t)index;
  sha256_init(&c->sha_sent);
  sha256_init(&c->sha_recv);
  if (opt.echo) c->echo_buf = malloc(opt.chunk);
}

static void conn_close(struct conn* c, bool failed) {
  if (c->done) return;
  close(c->fd);
  c->done = true;
  c->failed = failed;
  free(c->echo_buf);
  c->echo_buf = NULL;
  sha256_final_hex(&c->sha_sent, c->sent_hex);
  sha256_final_hex(&c->sha_recv, c->recv_hex);
}

static bool want_read(const struct conn* c) {
  if (c->eof) return false;
  if (opt.echo) return c->echo_len == 0;
  return opt.recv_bytes >= 0 || opt.drain;
}

static bool want_write(const struct conn* c) {
  if (opt.echo) return c->echo_len > 0;
  if (opt.send_after_eof && !c->eof) return false;
  return c->sent < (uint64_t)opt.send_bytes;
}

static void do_read(struct conn* c) {
  uint8_t* dst = opt.echo ? c->echo_buf : io_buf;
  ssize_t n = read(c->fd, dst, opt.chunk);
  if (n < 0) {
    if (errno == EAGAIN || errno == EINTR) return;
    fail(c, "read after %" PRIu64 " bytes: %s (%s)", c->recvd, strerror(errno), errno_name(errno));
    conn_close(c, true);
    return;
  }
  if (n == 0) {
    c->eof = true;
    if (opt.recv_bytes >= 0 && c->recvd < (uint64_t)opt.recv_bytes) {
      fail(c, "EOF after %" PRIu64 " of %lld bytes", c->recvd, opt.recv_bytes);
      conn_close(c, true);
    }
    return;
  }
  if (opt.echo) {
    c->echo_len = (size_t)n;
    c->echo_off = 0;
  } else if (opt.recv_bytes >= 0) {
    if (c->recvd + (uint64_t)n > (uint64_t)opt.recv_bytes) {
      fail(c, "received %" PRIu64 " bytes, more than the %lld expected", c->recvd + (uint64_t)n, opt.recv_bytes);
      conn_close(c, true);
      return;
    }
    pattern_fill(c->recv_seed, c->recvd, expect_buf, (size_t)n);
    if (memcmp(expect_buf, dst, (size_t)n) != 0) {
      size_t i = 0;
      while (expect_buf[i] == dst[i]) i++;
      fail(c, "data mismatch at byte %" PRIu64 ": got 0x%02x, want 0x%02x", c->recvd + i, dst[i], expect_buf[i]);
      conn_close(c, true);
      return;
    }
  }
  if (opt.sha) sha256_update(&c->sha_recv, dst, (size_t)n);
  c->recvd += (uint64_t)n;
}

static void do_write(struct conn* c) {
  const uint8_t* src;
  size_t len;
  if (opt.echo) {
    src = c->echo_buf + c->echo_off;
    len = c->echo_len - c->echo_off;
  } else {
    uint64_t left = (uint64_t)opt.send_bytes - c->sent;
    len = left < opt.chunk ? (size_t)left : opt.chunk;
    pattern_fill(c->send_seed, c->sent, io_buf, len);
    src = io_buf;
  }
  ssize_t n = send(c->fd, src, len, MSG_NOSIGNAL);
  if (n < 0) {
    if (errno == EAGAIN || errno == EINTR) return;
    fail(c, "write after %" PRIu64 " bytes: %s (%s)", c->sent, strerror(errno), errno_name(errno));
    conn_close(c, true);
    return;
  }
  if (opt.sha) sha256_update(&c->sha_sent, src, (size_t)n);
  c->sent += (uint64_t)n;
  if (opt.echo && (c->echo_off += (size_t)n) == c->echo_len) c->echo_len = c->echo_off = 0;
}

/* Half-closes and closes once this connection has nothing left to do. */
static void advance(struct conn* c) {
  if (c->done) return;
  bool send_done = opt.echo ? (c->eof && c->echo_len == 0) : c->sent == (uint64_t)opt.send_bytes;
  if (send_done && (opt.shut_wr || opt.echo) && !c->shut) {
    if (shutdown(c->fd, SHUT_WR) != 0) {
      fail(c, "shutdown(SHUT_WR): %s", strerror(errno));
      conn_close(c, true);
      return;
    }
    c->shut = true;
  }
  bool recv_done;
  if (opt.echo)
    recv_done = c->eof;
  else if (opt.recv_bytes >= 0)
    recv_done = c->recvd == (uint64_t)opt.recv_bytes && (!opt.expect_eof || c->eof);
  else
    recv_done = !opt.drain || c->eof;
  if (send_done && recv_done) conn_close(c, false);
}

/* Drives every connection (and accepts up to `to_accept` more on listen_fd)
 * until all are done or the deadline passes. */
static void run_conns(struct conn* conns, long* count, int listen_fd, long to_accept, double deadline) {
  struct pollfd* pfds = calloc((size_t)(opt.conns + 1), sizeof(*pfds));
  long* owner = calloc((size_t)(opt.conns + 1), sizeof(*owner));
  long accepted = 0;
  for (;;) {
    int n = 0;
    for (long i = 0; i < *count; i++) {
      struct conn* c = &conns[i];
      if (c->done) continue;
      short events = (short)((want_read(c) ? POLLIN : 0) | (want_write(c) ? POLLOUT : 0));
      pfds[n] = (struct pollfd){.fd = c->fd, .events = events};
      owner[n++] = i;
    }
    bool accepting = listen_fd >= 0 && accepted < to_accept;
    if (accepting) {
      pfds[n] = (struct pollfd){.fd = listen_fd, .events = POLLIN};
      owner[n++] = -1;
    }
    if (n == 0) break;
    double left = deadline - now();
    int ready = left > 0 ? poll(pfds, (nfds_t)n, (int)(left * 1000) + 1) : 0;
    if (ready < 0 && errno == EINTR) continue;
    if (ready <= 0) {
      if (accepting) fail(NULL, "timed out after accepting %ld of %ld connections", accepted, to_accept);
      for (long i = 0; i < *count; i++) {
        struct conn* c = &conns[i];
        if (c->done) continue;
        fail(c, "timed out: sent %" PRIu64 "/%lld, received %" PRIu64 "/%lld, eof=%d", c->sent,
             opt.echo ? -1 : opt.send_bytes, c->recvd, opt.recv_bytes, c->eof);
        conn_close(c, true);
      }
      break;
    }
    for (int k = 0; k < n; k++) {
      if (!pfds[k].revents) continue;
      if (owner[k] < 0) {
        int fd = accept4(listen_fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd >= 0) conn_init(&conns[(*count)++], fd, accepted++);
        continue;
      }
      struct conn* c = &conns[owner[k]];
      if ((pfds[k].revents & (POLLIN | POLLHUP | POLLERR)) && want_read(c)) do_read(c);
      if (!c->done && (pfds[k].revents & (POLLOUT | POLLERR | POLLHUP)) && want_write(c)) do_write(c);
      advance(c);
    }
  }
  free(pfds);
  free(owner);
}

static void print_summary(const struct conn* conns, long count, double elapsed, double connect_total,
                          double connect_max) {
  uint64_t sent = 0, recvd = 0;
  for (long i = 0; i < count; i++) {
    sent += conns[i].sent;
    recvd += conns[i].recvd;
  }
  double mib = 1024.0 * 1024.0, secs = elapsed > 0 ? elapsed : 1e-9;
  printf("vsock_tool: ok mode=%s conns=%ld sent=%" PRIu64 " recv=%" PRIu64 " elapsed=%.3fs tx_mibps=%.1f rx_mibps=%.1f",
         opt.mode, count, sent, recvd, elapsed, (double)sent / mib / secs, (double)recvd / mib / secs);
  if (connect_total > 0)
    printf(" connect_avg_ms=%.3f connect_max_ms=%.3f conn_rate=%.1f", connect_total * 1000 / (double)count,
           connect_max * 1000, (double)count / secs);
  printf("\n");
  if (opt.sha)
    for (long i = 0; i < count; i++)
      printf("sha256_sent[%ld]=%s sha256_recv[%ld]=%s\n", conns[i].index, conns[i].sent_hex, conns[i].index,
             conns[i].recv_hex);
}

static int run_client(void) {
  long total = opt.conns * opt.repeat;
  struct conn* conns = calloc((size_t)total, sizeof(*conns));
  double start = now(), deadline = start + opt.timeout, connect_total = 0, connect_max = 0;
  long count = 0;
  for (long r = 0; r < opt.repeat && failures == 0; r++) {
    long batch_start = count;
    for (long i = 0; i < opt.conns; i++) {
      double secs;
      int fd = open_client(count, &secs);
      if (fd == -2) return 0; /* the expected connect error */
      if (fd < 0) return 1;
      connect_total += secs;
      connect_max = secs > connect_max ? secs : connect_max;
      conn_init(&conns[count], fd, count);
      count++;
    }
    long batch = count - batch_start;
    run_conns(conns + batch_start, &batch, -1, 0, deadline);
  }
  if (failures) return 1;
  print_summary(conns, count, now() - start, connect_total, connect_max);
  return 0;
}

static int run_server(void) {
  struct sockaddr_storage ss;
  socklen_t len = make_address(&ss, true);
  int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
  int one = 1;
  if (opt.path)
    unlink(opt.path);
  else
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  if (fd < 0 || bind(fd, (struct sockaddr*)&ss, len) != 0 || listen(fd, 1024) != 0) {
    fprintf(stderr, "vsock_tool: cannot listen: %s\n", strerror(errno));
    return 1;
  }
  set_nonblocking(fd);
  if (!opt.quiet) {
    printf("vsock_tool: listening\n");
    fflush(stdout);
  }
  struct conn* conns = calloc((size_t)opt.conns, sizeof(*conns));
  long count = 0;
  /* Time from the first accept, not from startup, so idle waiting is not counted. */
  struct pollfd p = {.fd = fd, .events = POLLIN};
  if (poll(&p, 1, (int)(opt.timeout * 1000)) != 1) {
    fail(NULL, "no connection within %.0fs", opt.timeout);
    return 1;
  }
  double start = now();
  run_conns(conns, &count, fd, opt.conns, start + opt.timeout);
  close(fd);
  if (opt.path) unlink(opt.path);
  if (failures) return 1;
  print_summary(conns, count, now() - start, 0, 0);
  return 0;
}

static int cmp_double(const void* a, const void* b) {
  double x = *(const double*)a, y = *(const double*)b;
  return x < y ? -1 : x > y;
}

/* Round trips of msg_size bytes against an echo server; blocking I/O. */
static int run_rtt(void) {
  double secs;
  int fd = open_client(0, &secs);
  if (fd < 0) return 1;
  fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK);
  struct timeval tv = {.tv_sec = (time_t)opt.timeout};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  double* samples = calloc((size_t)opt.rtt_count, sizeof(double));
  uint8_t *msg = malloc(opt.msg_size), *reply = malloc(opt.msg_size);
  for (long i = 0; i < opt.rtt_count; i++) {
    pattern_fill(opt.seed, (uint64_t)i * opt.msg_size, msg, opt.msg_size);
    double t0 = now();
    if (send(fd, msg, opt.msg_size, MSG_NOSIGNAL) != (ssize_t)opt.msg_size) {
      fprintf(stderr, "vsock_tool: rtt send %ld: %s\n", i, strerror(errno));
      return 1;
    }
    for (size_t got = 0; got < opt.msg_size;) {
      ssize_t n = read(fd, reply + got, opt.msg_size - got);
      if (n <= 0) {
        fprintf(stderr, "vsock_tool: rtt read %ld: %s\n", i, n == 0 ? "EOF" : strerror(errno));
        return 1;
      }
      got += (size_t)n;
    }
    samples[i] = now() - t0;
    if (memcmp(msg, reply, opt.msg_size) != 0) {
      fprintf(stderr, "vsock_tool: rtt %ld: echoed data differs\n", i);
      return 1;
    }
  }
  close(fd);
  qsort(samples, (size_t)opt.rtt_count, sizeof(double), cmp_double);
  double sum = 0;
  for (long i = 0; i < opt.rtt_count; i++) sum += samples[i];
  long n = opt.rtt_count;
  printf(
      "vsock_tool: ok mode=rtt count=%ld msg=%zu min_us=%.1f avg_us=%.1f p50_us=%.1f p99_us=%.1f "
      "max_us=%.1f\n",
      n, opt.msg_size, samples[0] * 1e6, sum / (double)n * 1e6, samples[n / 2] * 1e6, samples[(n * 99) / 100] * 1e6,
      samples[n - 1] * 1e6);
  return 0;
}

static int run_gen(bool hash_only) {
  struct sha256 sha;
  sha256_init(&sha);
  for (uint64_t off = 0; off < (uint64_t)opt.send_bytes;) {
    uint64_t left = (uint64_t)opt.send_bytes - off;
    size_t len = left < opt.chunk ? (size_t)left : opt.chunk;
    pattern_fill(opt.seed, off, io_buf, len);
    if (hash_only)
      sha256_update(&sha, io_buf, len);
    else if (fwrite(io_buf, 1, len, stdout) != len)
      return 1;
    off += len;
  }
  if (hash_only) {
    char hex[65];
    sha256_final_hex(&sha, hex);
    printf("%s\n", hex);
  }
  return 0;
}

static void usage(void) {
  fprintf(stderr,
          "usage: vsock_tool MODE ARGS [options]\n"
          "  connect CID PORT     AF_VSOCK client          listen PORT    AF_VSOCK server\n"
          "  uconnect PATH        AF_UNIX client           ulisten PATH   AF_UNIX server\n"
          "  gen BYTES            pattern to stdout        hash BYTES     sha256 of the pattern\n"
          "  selftest\n"
          "options (sizes take K/M/G):\n"
          "  --hybrid PORT        (uconnect) send 'CONNECT PORT\\n', require 'OK ...\\n'\n"
          "  --conns N            connections at once (server: connections to accept)\n"
          "  --send BYTES         send BYTES of pattern on each connection\n"
          "  --recv BYTES         require exactly BYTES of pattern on each connection\n"
          "  --drain              read until EOF without checking content\n"
          "  --seed S             connection i sends pattern S+i (default 1)\n"
          "  --recv-seed S        connection i verifies pattern S+i (default: --seed)\n"
          "  --echo               send back what is received; half-close on EOF\n"
          "  --shut-wr            shutdown(SHUT_WR) once everything is sent\n"
          "  --send-after-eof     send only after the peer's EOF\n"
          "  --expect-eof         after --recv bytes, require EOF\n"
          "  --sha256             print sha256_sent[i]=HEX sha256_recv[i]=HEX per connection\n"
          "  --expect-error NAME  (client) connect must fail with NAME (e.g. ECONNRESET)\n"
          "  --repeat R           (client) run the batch of connections R times (conn rate)\n"
          "  --rtt COUNT          (client) COUNT round trips of --msg bytes against an echo server\n"
          "  --msg BYTES          round-trip message size (default 1)\n"
          "  --chunk BYTES        read/write size (default 64K)\n"
          "  --timeout SECONDS    fail if not finished in time (default 120)\n"
          "  --quiet              no 'listening' line\n");
  exit(2);
}

static void parse_args(int argc, char** argv) {
  opt = (struct options){.hybrid_port = -1,
                         .conns = 1,
                         .recv_bytes = -1,
                         .seed = 1,
                         .timeout = 120,
                         .chunk = 64 * 1024,
                         .repeat = 1,
                         .msg_size = 1};
  if (argc < 2) usage();
  opt.mode = argv[1];
  int i = 2;
  const char* m = opt.mode;
  if (strcmp(m, "connect") == 0 && argc >= 4) {
    opt.cid = (unsigned)strtoul(argv[2], NULL, 0);
    opt.port = (unsigned)strtoul(argv[3], NULL, 0);
    i = 4;
  } else if (strcmp(m, "listen") == 0 && argc >= 3) {
    opt.port = (unsigned)strtoul(argv[2], NULL, 0);
    i = 3;
  } else if ((strcmp(m, "uconnect") == 0 || strcmp(m, "ulisten") == 0) && argc >= 3) {
    opt.path = argv[2];
    i = 3;
  } else if ((strcmp(m, "gen") == 0 || strcmp(m, "hash") == 0) && argc >= 3) {
    opt.send_bytes = parse_size(argv[2]);
    i = 3;
  } else if (strcmp(m, "selftest") != 0) {
    usage();
  }
  for (; i < argc; i++) {
    const char* a = argv[i];
    const char* v = i + 1 < argc ? argv[i + 1] : NULL;
    bool takes_value = true;
    if (strcmp(a, "--hybrid") == 0 && v)
      opt.hybrid_port = strtol(v, NULL, 0);
    else if (strcmp(a, "--conns") == 0 && v)
      opt.conns = strtol(v, NULL, 0);
    else if (strcmp(a, "--send") == 0 && v)
      opt.send_bytes = parse_size(v);
    else if (strcmp(a, "--recv") == 0 && v)
      opt.recv_bytes = parse_size(v);
    else if (strcmp(a, "--seed") == 0 && v)
      opt.seed = strtoull(v, NULL, 0);
    else if (strcmp(a, "--recv-seed") == 0 && v) {
      opt.recv_seed = strtoull(v, NULL, 0);
      opt.recv_seed_set = true;
    } else if (strcmp(a, "--expect-error") == 0 && v)
      opt.expect_errno = parse_errno(v);
    else if (strcmp(a, "--repeat") == 0 && v)
      opt.repeat = strtol(v, NULL, 0);
    else if (strcmp(a, "--rtt") == 0 && v)
      opt.rtt_count = strtol(v, NULL, 0);
    else if (strcmp(a, "--msg") == 0 && v)
      opt.msg_size = (size_t)parse_size(v);
    else if (strcmp(a, "--chunk") == 0 && v)
      opt.chunk = (size_t)parse_size(v);
    else if (strcmp(a, "--timeout") == 0 && v)
      opt.timeout = strtod(v, NULL);
    else {
      takes_value = false;
      if (strcmp(a, "--drain") == 0)
        opt.drain = true;
      else if (strcmp(a, "--echo") == 0)
        opt.echo = true;
      else if (strcmp(a, "--shut-wr") == 0)
        opt.shut_wr = true;
      else if (strcmp(a, "--send-after-eof") == 0)
        opt.send_after_eof = true;
      else if (strcmp(a, "--expect-eof") == 0)
        opt.expect_eof = true;
      else if (strcmp(a, "--sha256") == 0)
        opt.sha = true;
      else if (strcmp(a, "--quiet") == 0)
        opt.quiet = true;
      else {
        fprintf(stderr, "vsock_tool: unknown or incomplete option '%s'\n", a);
        usage();
      }
    }
    if (takes_value) i++;
  }
  if (opt.conns < 1 || opt.conns > MAX_CONNS || opt.repeat < 1 || opt.repeat > MAX_CONNS ||
      opt.conns * opt.repeat > MAX_CONNS || opt.chunk < 1 || opt.chunk > MAX_CHUNK || opt.msg_size < 1 ||
      opt.msg_size > MAX_CHUNK || opt.rtt_count < 0 || opt.timeout <= 0) {
    fprintf(stderr, "vsock_tool: option out of range\n");
    exit(2);
  }
  if (opt.echo && (opt.send_bytes || opt.recv_bytes >= 0)) {
    fprintf(stderr, "vsock_tool: --echo cannot be combined with --send/--recv\n");
    exit(2);
  }
}

int main(int argc, char** argv) {
  parse_args(argc, argv);
  signal(SIGPIPE, SIG_IGN);
  io_buf = malloc(opt.chunk);
  expect_buf = malloc(opt.chunk);
  const char* m = opt.mode;
  if (strcmp(m, "selftest") == 0) return run_selftest();
  if (strcmp(m, "gen") == 0 || strcmp(m, "hash") == 0) return run_gen(strcmp(m, "hash") == 0);
  if (strcmp(m, "listen") == 0 || strcmp(m, "ulisten") == 0) return run_server();
  if (opt.rtt_count > 0) return run_rtt();
  return run_client();
}
