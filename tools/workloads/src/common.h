/* Shared helpers for the lazymig test workloads.
 *
 * Every line goes out with a single write(2) on fd 1: the log is opened O_APPEND by the
 * launcher, so lines from a parent and its forked child never interleave mid-line, and no
 * stdio buffer can be duplicated by fork or lost by a SIGKILL.
 *
 * Timing uses CLOCK_REALTIME for the lifetime bound because CLOCK_MONOTONIC restarts on
 * another host after a migration, and clock_nanosleep for waits so a frozen workload sits
 * in a realistic restartable syscall. */
#ifndef LAZYMIG_WORKLOAD_COMMON_H
#define LAZYMIG_WORKLOAD_COMMON_H
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define PAGE 4096UL

static __attribute__((unused)) void say(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static __attribute__((unused)) void say(const char *fmt, ...) {
  char buf[8192];
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(buf, sizeof buf - 1, fmt, ap);
  va_end(ap);
  if (n < 0) return;
  if ((size_t)n > sizeof buf - 2) n = sizeof buf - 2;
  buf[n++] = '\n';
  const char *p = buf;
  while (n > 0) {
    ssize_t w = write(1, p, (size_t)n);
    if (w < 0) {
      if (errno == EINTR) continue;
      return;
    }
    p += w;
    n -= (int)w;
  }
}

static __attribute__((unused)) void die(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
static __attribute__((unused)) void die(const char *fmt, ...) {
  char buf[4096];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(buf, sizeof buf, fmt, ap);
  va_end(ap);
  say("FAILED %s (errno=%d %s)", buf, errno, strerror(errno));
  _exit(1);
}

/* Options are `--name value` pairs anywhere on the command line; everything else is
 * positional. Kept trivial so the TS side can pass args in any order. */
static int g_argc;
static char **g_argv;
static char *g_pos[16];
static int g_npos;

static __attribute__((unused)) const char *opt_str(const char *name, const char *def) {
  for (int i = 1; i + 1 < g_argc; i++)
    if (strcmp(g_argv[i], name) == 0) return g_argv[i + 1];
  return def;
}

static __attribute__((unused)) long opt_long(const char *name, long def) {
  const char *s = opt_str(name, NULL);
  if (!s) return def;
  char *end;
  errno = 0;
  long v = strtol(s, &end, 0);
  if (errno || *end || end == s) die("bad value for %s: %s", name, s);
  return v;
}

static __attribute__((unused)) const char *pos_arg(int i, const char *def) { return i < g_npos ? g_pos[i] : def; }

static struct timespec g_deadline;
static int g_has_deadline;

static __attribute__((unused)) void wl_init(int argc, char **argv) {
  /* A launcher may leak fds (ava's IPC channel, a shell's): a dump must only see ours. */
  syscall(SYS_close_range, 3U, ~0U, 0U);
  g_argc = argc;
  g_argv = argv;
  for (int i = 1; i < argc; i++) {
    if (strncmp(argv[i], "--", 2) == 0 && i + 1 < argc) {
      i++;
      continue;
    }
    if (g_npos < 16) g_pos[g_npos++] = argv[i];
  }
  long life = opt_long("--lifetime-s", 0);
  if (life > 0) {
    clock_gettime(CLOCK_REALTIME, &g_deadline);
    g_deadline.tv_sec += life;
    g_has_deadline = 1;
  }
}

/* Orphaned workloads (a crashed test run) must not run forever. */
static __attribute__((unused)) void check_lifetime(unsigned long counter) {
  if (!g_has_deadline) return;
  struct timespec now;
  clock_gettime(CLOCK_REALTIME, &now);
  if (now.tv_sec > g_deadline.tv_sec) {
    say("lifetime expired counter=%lu", counter);
    _exit(0);
  }
}

static __attribute__((unused)) void sleep_ms(long ms) {
  struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
  while (clock_nanosleep(CLOCK_MONOTONIC, 0, &ts, &ts) == EINTR) {
  }
}

/* Wall-clock time in ms since the epoch (comparable across processes and log timestamps). */
static __attribute__((unused)) double wall_ms(void) {
  struct timespec t;
  clock_gettime(CLOCK_REALTIME, &t);
  return (double)t.tv_sec * 1e3 + (double)t.tv_nsec / 1e6;
}

static __attribute__((unused)) double now_ms(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec * 1e3 + (double)t.tv_nsec / 1e6;
}

/* Cheap to compute per u64 so a pass over 64 MiB stays in the tens of ms, yet every word
 * differs by page, offset, seed and generation: a page restored from the wrong place, a
 * stale generation or a zero page all fail. */
static __attribute__((unused)) inline uint64_t pattern(uint64_t seed, uint64_t page, uint64_t word, uint64_t gen) {
  uint64_t x = seed * 0x9E3779B97F4A7C15ULL ^ (page << 21) ^ (word << 1) ^ (gen << 45) ^ 1;
  x ^= x >> 31;
  x *= 0xBF58476D1CE4E5B9ULL;
  x ^= x >> 27;
  return x;
}

static __attribute__((unused)) void fill_page(uint64_t *p, uint64_t seed, uint64_t page, uint64_t gen) {
  for (uint64_t w = 0; w < PAGE / 8; w++) p[w] = pattern(seed, page, w, gen);
}

/* Returns the index of the first bad word, or -1. */
static __attribute__((unused)) long check_page(const uint64_t *p, uint64_t seed, uint64_t page, uint64_t gen) {
  for (uint64_t w = 0; w < PAGE / 8; w++)
    if (p[w] != pattern(seed, page, w, gen)) return (long)w;
  return -1;
}

/* PROT_NONE guard pages on both sides keep the region its own VMA: without them the
 * kernel merges it with neighbouring anonymous mappings and a test could not find it in
 * /proc/PID/maps by its exact bounds. */
static __attribute__((unused)) void *map_isolated(size_t size) {
  char *base = mmap(NULL, size + 2 * PAGE, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (base == MAP_FAILED) die("mmap %zu bytes", size);
  if (mprotect(base + PAGE, size, PROT_READ | PROT_WRITE) != 0) die("mprotect");
  return base + PAGE;
}

#endif
