/* xfer: the VM benchmark peer, one static binary for both sides.
 *
 * The same program moves the same verified pattern over every transport the
 * VM benchmark compares (vsock, TCP over virtio-net, a virtio-serial port), so
 * the transports are measured with identical application work.
 *
 *   xfer send ENDPOINT --bytes N [--chunk 64K] [--seed S] [--wait-go] [--wait-ack]
 *   xfer recv ENDPOINT --bytes N [--chunk 64K] [--seed S] [--send-go] [--send-ack]
 *   xfer echo ENDPOINT [--bytes N]          echo until EOF (or N bytes: serial has no EOF)
 *   xfer rtt ENDPOINT --count N [--msg 1]   round trips against an echo peer
 *   xfer serve ENDPOINT --count N           accept N connections: write 1 byte, close
 *   xfer dial ENDPOINT --count N            N times: connect, read the byte, close
 *
 * ENDPOINT: tcp-listen:PORT  tcp-connect:IPv4:PORT  vsock-listen:PORT
 *           vsock-connect:CID:PORT  unix-listen:PATH  unix-connect:PATH
 *           hybrid:PATH:PORT (unix-connect + "CONNECT PORT\n" / "OK ...\n")  file:PATH
 * Timing (host side): t0 when the go byte is sent/received or at the first
 * write, t1 at the last byte or the peer's ack. One JSON line on success;
 * "xfer: ..." on stderr and exit 1 on any failure, data mismatch included.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/vm_sockets.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define PERIOD ((1u << 20) + 7)
#define MAX_CHUNK (1u << 20)

static struct {
  long long bytes, count;
  size_t chunk, msg;
  uint64_t seed;
  bool wait_go, wait_ack, send_go, send_ack;
} opt = {.chunk = 64 * 1024, .msg = 1, .seed = 1, .count = 1};

static uint8_t* table; /* PERIOD + MAX_CHUNK bytes: the pattern, with its start repeated */

static void die(const char* fmt, const char* arg) {
  fprintf(stderr, "xfer: ");
  fprintf(stderr, fmt, arg);
  fprintf(stderr, "%s%s\n", errno ? ": " : "", errno ? strerror(errno) : "");
  exit(1);
}

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void make_table(uint64_t seed) {
  table = malloc(PERIOD + MAX_CHUNK);
  if (!table) die("out of memory%s", "");
  uint64_t state = seed * 0x9E3779B97F4A7C15ull + 1;
  for (size_t i = 0; i < PERIOD; i++) {
    uint64_t z = (state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    table[i] = (uint8_t)((z ^ (z >> 31)) >> 32);
  }
  memcpy(table + PERIOD, table, MAX_CHUNK);
}

static const uint8_t* pattern_at(uint64_t offset) {
  return table + offset % PERIOD;
}

static void write_all(int fd, const void* data, size_t len) {
  const uint8_t* p = data;
  while (len > 0) {
    ssize_t n = write(fd, p, len);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) die("write failed%s", "");
    p += n;
    len -= (size_t)n;
  }
}

static void read_all(int fd, void* data, size_t len, const char* what) {
  uint8_t* p = data;
  while (len > 0) {
    ssize_t n = read(fd, p, len);
    if (n < 0 && errno == EINTR) continue;
    if (n == 0) errno = 0;
    if (n <= 0) die("reading %s failed", what);
    p += n;
    len -= (size_t)n;
  }
}

static int listener; /* kept open for serve */

/* A path that does not fit sun_path is an error, never a silently truncated address. */
static struct sockaddr_un unix_address(const char* path, const char* spec) {
  struct sockaddr_un un = {.sun_family = AF_UNIX};
  size_t len = strlen(path);
  if (len == 0 || len >= sizeof(un.sun_path)) {
    errno = ENAMETOOLONG;
    die("unix path in %s", spec);
  }
  memcpy(un.sun_path, path, len + 1);
  return un;
}

/* Opens ENDPOINT; listening kinds print "listening" and return one accepted connection. */
static int open_endpoint(const char* spec, bool only_listen) {
  char kind[32] = "", a[256] = "", b[256] = "";
  sscanf(spec, "%31[^:]:%255[^:]:%255s", kind, a, b);
  int fd = -1;
  bool listening = false;
  if (strcmp(kind, "file") == 0) {
    if ((fd = open(spec + 5, O_RDWR | O_CLOEXEC)) < 0) die("open %s", spec + 5);
    return fd;
  } else if (strcmp(kind, "tcp-listen") == 0 || strcmp(kind, "vsock-listen") == 0) {
    bool tcp = kind[0] == 't';
    fd = socket(tcp ? AF_INET : AF_VSOCK, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    struct sockaddr_in in = {.sin_family = AF_INET, .sin_port = htons((uint16_t)atoi(a))};
    struct sockaddr_vm vm = {.svm_family = AF_VSOCK, .svm_cid = VMADDR_CID_ANY, .svm_port = (unsigned)atoi(a)};
    int rc = tcp ? bind(fd, (struct sockaddr*)&in, sizeof(in)) : bind(fd, (struct sockaddr*)&vm, sizeof(vm));
    if (fd < 0 || rc != 0 || listen(fd, 1024) != 0) die("listen %s", spec);
    listening = true;
  } else if (strcmp(kind, "unix-listen") == 0) {
    struct sockaddr_un un = unix_address(spec + 12, spec);
    unlink(un.sun_path);
    fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0 || bind(fd, (struct sockaddr*)&un, sizeof(un)) != 0 || listen(fd, 1024) != 0) die("listen %s", spec);
    listening = true;
  } else if (strcmp(kind, "tcp-connect") == 0) {
    struct sockaddr_in in = {.sin_family = AF_INET, .sin_port = htons((uint16_t)atoi(b))};
    fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (inet_pton(AF_INET, a, &in.sin_addr) != 1 || fd < 0 || connect(fd, (struct sockaddr*)&in, sizeof(in)) != 0)
      die("connect %s", spec);
  } else if (strcmp(kind, "vsock-connect") == 0) {
    struct sockaddr_vm vm = {.svm_family = AF_VSOCK, .svm_cid = (unsigned)atoi(a), .svm_port = (unsigned)atoi(b)};
    fd = socket(AF_VSOCK, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0 || connect(fd, (struct sockaddr*)&vm, sizeof(vm)) != 0) die("connect %s", spec);
  } else if (strcmp(kind, "unix-connect") == 0 || strcmp(kind, "hybrid") == 0) {
    bool hybrid = kind[0] == 'h';
    struct sockaddr_un un = unix_address(hybrid ? a : spec + 13, spec);
    fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0 || connect(fd, (struct sockaddr*)&un, sizeof(un)) != 0) die("connect %s", spec);
    if (hybrid) {
      char line[64];
      int len = snprintf(line, sizeof(line), "CONNECT %s\n", b);
      write_all(fd, line, (size_t)len);
      /* Byte by byte: payload may follow the OK line at once. */
      size_t got = 0;
      do {
        read_all(fd, line + got, 1, "the OK line");
      } while (line[got++] != '\n' && got < sizeof(line) - 1);
      if (got < 4 || memcmp(line, "OK ", 3) != 0 || line[got - 1] != '\n') die("bad handshake reply for %s", spec);
    }
  } else {
    errno = 0;
    die("unknown endpoint '%s'", spec);
  }
  if (!listening) goto connected;
  listener = fd;
  printf("listening\n");
  fflush(stdout);
  if (only_listen) return -1;
  if ((fd = accept4(listener, NULL, NULL, SOCK_CLOEXEC)) < 0) die("accept on %s", spec);
connected:
  if (strncmp(kind, "tcp", 3) == 0) {
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  }
  return fd;
}

static void report(const char* mode, double seconds) {
  unsigned long long bytes = (unsigned long long)opt.bytes;
  printf(
      "{\"mode\": \"%s\", \"bytes\": %llu, \"chunk\": %zu, \"seconds\": %.6f, \"gbit_per_s\": %.4f, "
      "\"verified\": true}\n",
      mode, bytes, opt.chunk, seconds, seconds > 0 ? (double)bytes * 8 / seconds / 1e9 : 0.0);
}

static int do_send(int fd) {
  char byte;
  if (opt.wait_go) read_all(fd, &byte, 1, "the go byte");
  double t0 = now();
  for (uint64_t off = 0; off < (uint64_t)opt.bytes;) {
    size_t len = (uint64_t)opt.bytes - off < opt.chunk ? (size_t)((uint64_t)opt.bytes - off) : opt.chunk;
    write_all(fd, pattern_at(off), len);
    off += len;
  }
  if (opt.wait_ack) {
    read_all(fd, &byte, 1, "the ack byte");
    if (byte != 'A') {
      errno = 0;
      die("the receiver reported a failure%s", "");
    }
  }
  report("send", now() - t0);
  return 0;
}

static int do_recv(int fd) {
  uint8_t* buf = malloc(opt.chunk);
  double t0 = now();
  if (opt.send_go) write_all(fd, "g", 1);
  for (uint64_t off = 0; off < (uint64_t)opt.bytes;) {
    size_t want = (uint64_t)opt.bytes - off < opt.chunk ? (size_t)((uint64_t)opt.bytes - off) : opt.chunk;
    ssize_t n = read(fd, buf, want);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      fprintf(stderr, "xfer: stream ended at byte %llu of %lld\n", (unsigned long long)off, opt.bytes);
      return 1;
    }
    if (memcmp(buf, pattern_at(off), (size_t)n) != 0) {
      fprintf(stderr, "xfer: data mismatch in bytes %llu..%llu\n", (unsigned long long)off,
              (unsigned long long)off + (unsigned long long)n);
      if (opt.send_ack) write_all(fd, "X", 1);
      return 1;
    }
    off += (uint64_t)n;
  }
  if (opt.send_ack) write_all(fd, "A", 1);
  report("recv", now() - t0);
  return 0;
}

static int do_echo(int fd) {
  uint8_t* buf = malloc(opt.chunk);
  long long left = opt.bytes > 0 ? opt.bytes : -1;
  while (left != 0) {
    size_t want = left > 0 && (uint64_t)left < opt.chunk ? (size_t)left : opt.chunk;
    ssize_t n = read(fd, buf, want);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    write_all(fd, buf, (size_t)n);
    if (left > 0) left -= n;
  }
  printf("{\"mode\": \"echo\"}\n");
  return 0;
}

static int cmp_double(const void* a, const void* b) {
  double x = *(const double*)a, y = *(const double*)b;
  return (x > y) - (x < y);
}

static int do_rtt(int fd) {
  double* samples = calloc((size_t)opt.count, sizeof(double));
  uint8_t* reply = malloc(opt.msg);
  double sum = 0;
  for (long long i = -100; i < opt.count; i++) {
    uint64_t off = (uint64_t)(i + 100) * opt.msg;
    double t0 = now();
    write_all(fd, pattern_at(off), opt.msg);
    read_all(fd, reply, opt.msg, "the echo");
    double t = now() - t0;
    if (memcmp(reply, pattern_at(off), opt.msg) != 0) {
      errno = 0;
      die("echoed data differs%s", "");
    }
    if (i >= 0) {
      samples[i] = t;
      sum += t;
    }
  }
  qsort(samples, (size_t)opt.count, sizeof(double), cmp_double);
  printf(
      "{\"mode\": \"rtt\", \"count\": %lld, \"mean_us\": %.3f, \"p50_us\": %.3f, \"p99_us\": %.3f, "
      "\"verified\": true}\n",
      opt.count, sum / (double)opt.count * 1e6, samples[opt.count / 2] * 1e6, samples[opt.count * 99 / 100] * 1e6);
  return 0;
}

static int do_serve(const char* spec) {
  open_endpoint(spec, true);
  for (long long i = 0; i < opt.count; i++) {
    int fd = accept4(listener, NULL, NULL, SOCK_CLOEXEC);
    if (fd < 0) die("accept on %s", spec);
    write_all(fd, "h", 1);
    close(fd);
  }
  printf("{\"mode\": \"serve\", \"count\": %lld}\n", opt.count);
  return 0;
}

static int do_dial(const char* spec) {
  double t0 = now();
  for (long long i = 0; i < opt.count; i++) {
    int fd = open_endpoint(spec, false);
    char byte;
    read_all(fd, &byte, 1, "the greeting");
    close(fd);
  }
  double t = now() - t0;
  printf("{\"mode\": \"dial\", \"count\": %lld, \"seconds\": %.6f, \"per_second\": %.1f, \"verified\": true}\n",
         opt.count, t, (double)opt.count / t);
  return 0;
}

static long long parse_size(const char* s) {
  char* end;
  long long v = strtoll(s, &end, 10);
  switch (*end) {
    case 'K':
      v <<= 10;
      end++;
      break;
    case 'M':
      v <<= 20;
      end++;
      break;
    case 'G':
      v <<= 30;
      end++;
      break;
    default:
      break;
  }
  if (*end || v < 0) {
    errno = 0;
    die("bad size '%s'", s);
  }
  return v;
}

int main(int argc, char** argv) {
  if (argc < 3) {
    fprintf(stderr, "usage: xfer send|recv|echo|rtt|serve|dial ENDPOINT [options] (see the source)\n");
    return 2;
  }
  signal(SIGPIPE, SIG_IGN);
  for (int i = 3; i < argc; i++) {
    const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
    if (strcmp(a, "--wait-go") == 0)
      opt.wait_go = true;
    else if (strcmp(a, "--wait-ack") == 0)
      opt.wait_ack = true;
    else if (strcmp(a, "--send-go") == 0)
      opt.send_go = true;
    else if (strcmp(a, "--send-ack") == 0)
      opt.send_ack = true;
    else if (v && strcmp(a, "--bytes") == 0) {
      opt.bytes = parse_size(v);
      i++;
    } else if (v && strcmp(a, "--count") == 0) {
      opt.count = parse_size(v);
      i++;
    } else if (v && strcmp(a, "--chunk") == 0) {
      opt.chunk = (size_t)parse_size(v);
      i++;
    } else if (v && strcmp(a, "--msg") == 0) {
      opt.msg = (size_t)parse_size(v);
      i++;
    } else if (v && strcmp(a, "--seed") == 0) {
      opt.seed = (uint64_t)parse_size(v);
      i++;
    } else {
      fprintf(stderr, "xfer: unknown or incomplete option '%s'\n", a);
      return 2;
    }
  }
  if (opt.chunk < 1 || opt.chunk > MAX_CHUNK || opt.msg < 1 || opt.msg > MAX_CHUNK || opt.count < 1) {
    fprintf(stderr, "xfer: option out of range\n");
    return 2;
  }
  make_table(opt.seed);
  const char *mode = argv[1], *spec = argv[2];
  if (strcmp(mode, "serve") == 0) return do_serve(spec);
  if (strcmp(mode, "dial") == 0) return do_dial(spec);
  int fd = open_endpoint(spec, false);
  if (strcmp(mode, "send") == 0) return do_send(fd);
  if (strcmp(mode, "recv") == 0) return do_recv(fd);
  if (strcmp(mode, "echo") == 0) return do_echo(fd);
  if (strcmp(mode, "rtt") == 0) return do_rtt(fd);
  fprintf(stderr, "xfer: unknown mode '%s'\n", mode);
  return 2;
}
