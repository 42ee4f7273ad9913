/* Helpers shared by vsock_tool's modes: the deterministic data pattern,
 * clocks, sizes, errno names and the self test. */
#ifndef VSOCK_TOOL_UTIL_H
#define VSOCK_TOOL_UTIL_H

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "sha256.h"

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static uint64_t mix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

/* Byte at offset o of stream `seed` is byte (o % 8) of mix64(key ^ o / 8). */
static void pattern_fill(uint64_t seed, uint64_t offset, uint8_t* buf, size_t len) {
  uint64_t key = mix64(seed);
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
  if ((offset & 7) == 0) { /* fast path: whole words */
    for (; len >= 8; buf += 8, offset += 8, len -= 8) {
      uint64_t word = mix64(key ^ (offset >> 3));
      memcpy(buf, &word, 8);
    }
  }
#endif
  while (len > 0) {
    uint64_t word = mix64(key ^ (offset >> 3));
    unsigned skip = (unsigned)(offset & 7);
    size_t take = 8 - skip < len ? 8 - skip : len;
    for (size_t i = 0; i < take; i++) buf[i] = (uint8_t)(word >> (8 * (skip + i)));
    buf += take;
    offset += take;
    len -= take;
  }
}

static const struct {
  int value;
  const char* name;
} errno_names[] = {
    {ECONNRESET, "ECONNRESET"},
    {ECONNREFUSED, "ECONNREFUSED"},
    {ETIMEDOUT, "ETIMEDOUT"},
    {ENODEV, "ENODEV"},
    {EHOSTUNREACH, "EHOSTUNREACH"},
    {ENETUNREACH, "ENETUNREACH"},
    {ENOENT, "ENOENT"},
    {EPIPE, "EPIPE"},
    {EINTR, "EINTR"},
};

static const char* errno_name(int e) {
  for (size_t i = 0; i < sizeof(errno_names) / sizeof(errno_names[0]); i++)
    if (errno_names[i].value == e) return errno_names[i].name;
  return "E?";
}

static int parse_errno(const char* s) {
  for (size_t i = 0; i < sizeof(errno_names) / sizeof(errno_names[0]); i++)
    if (strcmp(errno_names[i].name, s) == 0) return errno_names[i].value;
  return atoi(s);
}

static long long parse_size(const char* s) {
  char* end;
  long long v = strtoll(s, &end, 0);
  switch (*end) {
    case 'k':
    case 'K':
      v <<= 10;
      end++;
      break;
    case 'm':
    case 'M':
      v <<= 20;
      end++;
      break;
    case 'g':
    case 'G':
      v <<= 30;
      end++;
      break;
    default:
      break;
  }
  if (*end != '\0' || v < 0) {
    fprintf(stderr, "vsock_tool: bad size '%s'\n", s);
    exit(2);
  }
  return v;
}

static int run_selftest(void) {
  static const struct {
    const char* input;
    const char* digest;
  } vectors[] = {
      {"", "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"},
      {"abc", "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"},
      {"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq",
       "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1"},
  };
  for (size_t i = 0; i < sizeof(vectors) / sizeof(vectors[0]); i++) {
    struct sha256 s;
    char hex[65];
    sha256_init(&s);
    sha256_update(&s, vectors[i].input, strlen(vectors[i].input));
    sha256_final_hex(&s, hex);
    if (strcmp(hex, vectors[i].digest) != 0) {
      fprintf(stderr, "vsock_tool: sha256 selftest %zu failed: %s\n", i, hex);
      return 1;
    }
  }
  /* A pattern filled in odd pieces must equal one filled at once. */
  uint8_t whole[1000], pieces[1000];
  pattern_fill(7, 3, whole, sizeof(whole));
  for (size_t off = 0; off < sizeof(pieces);) {
    size_t len = (off % 13) + 1 < sizeof(pieces) - off ? (off % 13) + 1 : sizeof(pieces) - off;
    pattern_fill(7, 3 + off, pieces + off, len);
    off += len;
  }
  if (memcmp(whole, pieces, sizeof(whole)) != 0) {
    fprintf(stderr, "vsock_tool: pattern selftest failed\n");
    return 1;
  }
  printf("vsock_tool: selftest ok\n");
  return 0;
}

#endif
