/* threads <nthreads> [--interval-ms 100] [--thread-kib 64] [--lifetime-s 0]
 *
 * Each thread owns a buffer filled with a per-thread pattern; it loops: verify the
 * buffer, bump its generation and rewrite it, increment its counter, sleep 10 ms. The
 * main thread prints every counter each interval and fails if one goes backwards.
 *
 * Lines:
 *   ready pid=<pid> threads=<n> tids=<tid>,<tid>,...
 *   tick counter=<c> counts=<c0>,<c1>,...
 *   self pid=<getpid()> tids=<t0>,<t1>,... pthread_kill=<e0>,<e1>,...
 *   verify FAILED thread=<i> word=<w> gen=<g>      (then exit 1)
 * "self" follows each tick: each worker's gettid() as it last saw it (re-read every loop),
 * and pthread_kill(worker, 0) (0, or an errno: ESRCH=3 when glibc's cached tid of that
 * thread is not a thread of this process any more, e.g. restored at other tids). */
#include "common.h"
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>

struct worker {
  int index;
  _Atomic int tid;
  _Atomic unsigned long counter;
  size_t pages;
  char *buf;
  pthread_t thread;
};

static void *run(void *arg) {
  struct worker *w = arg;
  uint64_t seed = 1000 + (uint64_t)w->index;
  uint64_t gen = 0;
  for (size_t p = 0; p < w->pages; p++) fill_page((uint64_t *)(w->buf + p * PAGE), seed, p, gen);
  atomic_store(&w->tid, (int)syscall(SYS_gettid));
  for (;;) {
    atomic_store(&w->tid, (int)syscall(SYS_gettid));
    for (size_t p = 0; p < w->pages; p++) {
      long bad = check_page((uint64_t *)(w->buf + p * PAGE), seed, p, gen);
      if (bad >= 0) {
        say("verify FAILED thread=%d page=%zu word=%ld gen=%lu", w->index, p, bad,
            (unsigned long)gen);
        _exit(1);
      }
    }
    gen++;
    for (size_t p = 0; p < w->pages; p++) fill_page((uint64_t *)(w->buf + p * PAGE), seed, p, gen);
    atomic_fetch_add(&w->counter, 1);
    sleep_ms(10);
  }
  return NULL;
}

int main(int argc, char **argv) {
  wl_init(argc, argv);
  long n = strtol(pos_arg(0, "4"), NULL, 0);
  if (n <= 0 || n > 256) die("usage: threads <nthreads 1..256>");
  long interval = opt_long("--interval-ms", 100);
  long kib = opt_long("--thread-kib", 64);
  struct worker *ws = calloc((size_t)n, sizeof *ws);
  unsigned long *last = calloc((size_t)n, sizeof *last);
  if (!ws || !last) die("calloc");
  for (long i = 0; i < n; i++) {
    ws[i].index = (int)i;
    ws[i].pages = (size_t)(kib * 1024 + (long)PAGE - 1) / PAGE;
    ws[i].buf = map_isolated(ws[i].pages * PAGE);
    int e = pthread_create(&ws[i].thread, NULL, run, &ws[i]);
    if (e) {
      errno = e;
      die("pthread_create");
    }
  }
  char tids[256 * 12] = "";
  size_t len = 0;
  for (long i = 0; i < n; i++) {
    while (atomic_load(&ws[i].tid) == 0) sleep_ms(1);
    len += (size_t)snprintf(tids + len, sizeof tids - len, "%s%d", i ? "," : "",
                            atomic_load(&ws[i].tid));
  }
  say("ready pid=%d threads=%ld tids=%s", getpid(), n, tids);
  for (unsigned long counter = 1;; counter++) {
    char counts[256 * 21] = "";
    size_t cl = 0;
    for (long i = 0; i < n; i++) {
      unsigned long c = atomic_load(&ws[i].counter);
      if (c < last[i]) {
        say("verify FAILED thread=%ld counter went backwards %lu -> %lu", i, last[i], c);
        _exit(1);
      }
      last[i] = c;
      cl += (size_t)snprintf(counts + cl, sizeof counts - cl, "%s%lu", i ? "," : "", c);
    }
    say("tick counter=%lu counts=%s", counter, counts);
    char now[256 * 12] = "", pk[256 * 4] = "";
    size_t nl = 0, pl = 0;
    for (long i = 0; i < n; i++) {
      nl += (size_t)snprintf(now + nl, sizeof now - nl, "%s%d", i ? "," : "", atomic_load(&ws[i].tid));
      pl += (size_t)snprintf(pk + pl, sizeof pk - pl, "%s%d", i ? "," : "", pthread_kill(ws[i].thread, 0));
    }
    say("self pid=%d tids=%s pthread_kill=%s", getpid(), now, pk);
    check_lifetime(counter);
    sleep_ms(interval);
  }
}
