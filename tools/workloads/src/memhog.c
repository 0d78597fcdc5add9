/* memhog <MiB> [--interval-ms 50] [--seed 1] [--rewrite-pages 16] [--untouched-mib 1]
 *             [--zero-mib 1] [--passes 0] [--lifetime-s 0]
 *
 * Fills <MiB> of private anonymous memory with a verifiable pattern, then forever: verify
 * every page, rewrite a few pages with a new generation (so a restore that serves stale
 * data is caught), sleep. The generation of each page lives in the process's own heap,
 * so the check survives a migration without outside help.
 *
 * Lines:
 *   checksum value=0x<hex> pages=<n>
 *   ready pid=<pid> region=0x<addr> size=<bytes> pages=<n> seed=<s>
 *         untouched=0x<addr> untouched_size=<bytes> zero=0x<addr> zero_size=<bytes>
 *   verify ok pass=<n> counter=<c> rewritten=<k> t=<epoch ms> stall=<ms> stall_at=<epoch ms> ms=<verify ms>
 *   verify FAILED page=<i> addr=0x<a> word=<w> expected=0x<e> got=0x<g> gen=<g> pass=<n>
 * "untouched" is mapped and never accessed (no page present); "zero" is only read (its
 * pages are the shared zero page).
 *
 * --drop-trigger FILE [--drop-mib 4]: at the first pass that finds FILE, MADV_DONTNEED the
 * first MiB of the region (those pages must read as zeros from then on) and munmap the
 * last ones (no longer verified); prints
 *   dropped dontneed=0x<addr> size=<bytes> unmapped=0x<addr> size=<bytes> pass=<n>
 * A migration that installs stale data after the process dropped a range is caught.
 *
 * --remap-trigger FILE: at the first pass that finds FILE, mremap the region to a new
 * address and go on verifying it there; prints remapped from=0x.. to=0x.. size=.. pass=..
 * --fork-trigger FILE: at the first pass that finds FILE, fork a child that verifies the
 * whole region once and exits; prints forked child=<pid> pass=.., then from the child
 * "child verify ok pid=<pid> pages=<n>" (or "child verify FAILED ..."), then from the parent
 * "child exited status=<s>".
 * --toggle-dontfork 1: after every pass, madvise the whole region MADV_DONTFORK, then
 * MADV_DOFORK the next time, and so on: its VmFlags change with no change in
 * /proc/PID/maps (a dump that reused stale flags would be caught). */
#include "common.h"
#include <sys/wait.h>

/* First page of region (page index < live) that does not hold what gens says, or -1. */
static long first_bad_page(const char *region, size_t live, const uint32_t *gens, uint64_t seed, uint32_t dropped) {
  for (size_t p = 0; p < live; p++) {
    const uint64_t *pg = (const uint64_t *)(region + p * PAGE);
    if (gens[p] == dropped) {
      for (size_t i = 0; i < PAGE / 8; i++)
        if (pg[i] != 0) return (long)p;
    } else if (check_page(pg, seed, p, gens[p]) >= 0) {
      return (long)p;
    }
  }
  return -1;
}

int main(int argc, char **argv) {
  wl_init(argc, argv);
  long mib = strtol(pos_arg(0, "64"), NULL, 0);
  if (mib <= 0) die("usage: memhog <MiB> [--interval-ms N]");
  long interval = opt_long("--interval-ms", 50);
  uint64_t seed = (uint64_t)opt_long("--seed", 1);
  long rewrite = opt_long("--rewrite-pages", 16);
  long untouched_mib = opt_long("--untouched-mib", 1);
  long zero_mib = opt_long("--zero-mib", 1);
  long max_passes = opt_long("--passes", 0);
  const char *drop_trigger = opt_str("--drop-trigger", NULL);
  const char *remap_trigger = opt_str("--remap-trigger", NULL);
  const char *fork_trigger = opt_str("--fork-trigger", NULL);
  long toggle_dontfork = opt_long("--toggle-dontfork", 0);
  int remapped = 0, forked = 0;
  pid_t child = 0;
  long drop_mib = opt_long("--drop-mib", 4);

  size_t size = (size_t)mib << 20;
  size_t npages = size / PAGE;
  uint32_t *gens = calloc(npages, sizeof *gens);
  if (!gens) die("calloc gens");
  char *region = map_isolated(size);
  for (size_t p = 0; p < npages; p++) fill_page((uint64_t *)(region + p * PAGE), seed, p, 0);

  uint64_t sum = 0;
  const uint64_t *words = (const uint64_t *)region;
  for (size_t i = 0; i < size / 8; i++) sum = (sum ^ words[i]) * 0x100000001B3ULL;
  say("checksum value=0x%016lx pages=%zu", (unsigned long)sum, npages);

  size_t untouched_size = (size_t)untouched_mib << 20;
  char *untouched = untouched_size ? map_isolated(untouched_size) : NULL;
  size_t zero_size = (size_t)zero_mib << 20;
  char *zero = zero_size ? map_isolated(zero_size) : NULL;
  volatile char sink = 0;
  for (size_t off = 0; off < zero_size; off += PAGE) sink ^= zero[off];
  (void)sink;

  say("ready pid=%d region=%p size=%zu pages=%zu seed=%lu untouched=%p untouched_size=%zu "
      "zero=%p zero_size=%zu",
      getpid(), (void *)region, size, npages, (unsigned long)seed, (void *)untouched,
      untouched_size, (void *)zero, zero_size);

  unsigned long counter = 0, pass = 0;
  size_t cursor = 0;
  size_t live = npages; /* pages still mapped */
  const uint32_t DROPPED = UINT32_MAX; /* generation of a page that must read as zeros */
  /* The longest time this loop made no progress (page to page, pass to pass less the
   * intended sleep), per pass: a freeze, a migration's downtime or a slow page fault all
   * show up as a stall. stall_at is the wall-clock time (epoch ms) the stall ended. */
  double last = now_ms();
  for (;;) {
    double t0 = now_ms();
    double stall = 0, stall_at = 0;
    pass++;
    if (drop_trigger && live == npages && access(drop_trigger, F_OK) == 0) {
      size_t dsz = (size_t)drop_mib << 20;
      if (dsz > size / 4) dsz = (size / 4) & ~(size_t)(PAGE - 1);
      if (madvise(region, dsz, MADV_DONTNEED) != 0) die("madvise");
      for (size_t p = 0; p < dsz / PAGE; p++) gens[p] = DROPPED;
      if (munmap(region + size - dsz, dsz) != 0) die("munmap");
      live = npages - dsz / PAGE;
      if (cursor >= live) cursor = 0;
      say("dropped dontneed=%p size=%zu unmapped=%p size=%zu pass=%lu", (void *)region, dsz,
          (void *)(region + size - dsz), dsz, pass);
    }
    if (remap_trigger && !remapped && access(remap_trigger, F_OK) == 0) {
      /* A reservation with a guard page on each side, so the moved region stays one VMA. */
      char *res = mmap(NULL, live * PAGE + 2 * PAGE, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
      if (res == MAP_FAILED) die("mmap reservation");
      char *moved = mremap(region, live * PAGE, live * PAGE, MREMAP_MAYMOVE | MREMAP_FIXED, res + PAGE);
      if (moved == MAP_FAILED) die("mremap");
      say("remapped from=%p to=%p size=%zu pass=%lu", (void *)region, (void *)moved, live * PAGE, pass);
      region = moved;
      remapped = 1;
    }
    if (fork_trigger && !forked && access(fork_trigger, F_OK) == 0) {
      forked = 1;
      pid_t c = fork();
      if (c < 0) die("fork");
      if (c == 0) {
        long bad = first_bad_page(region, live, gens, seed, DROPPED);
        if (bad < 0) say("child verify ok pid=%d pages=%zu", getpid(), live);
        else say("child verify FAILED page=%ld pid=%d", bad, getpid());
        _exit(bad < 0 ? 0 : 1);
      }
      child = c;
      say("forked child=%d pass=%lu", (int)c, pass);
    }
    if (child > 0) {
      int st;
      if (waitpid(child, &st, WNOHANG) == child) {
        say("child exited status=%d", WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st));
        child = 0;
      }
    }
    for (size_t p = 0; p < live; p++) {
      const uint64_t *pg = (const uint64_t *)(region + p * PAGE);
      double tp = now_ms();
      if (tp - last > stall) {
        stall = tp - last;
        stall_at = wall_ms();
      }
      last = tp;
      if (gens[p] == DROPPED) {
        for (size_t i = 0; i < PAGE / 8; i++) {
          if (pg[i] != 0) {
            say("verify FAILED dropped page=%zu addr=%p not zero: word=%zu got=0x%016lx pass=%lu", p,
                (void *)pg, i, (unsigned long)pg[i], pass);
            _exit(1);
          }
        }
        continue;
      }
      long w = check_page(pg, seed, p, gens[p]);
      if (w >= 0) {
        say("verify FAILED page=%zu addr=%p word=%ld expected=0x%016lx got=0x%016lx gen=%u "
            "pass=%lu",
            p, (void *)pg, w, (unsigned long)pattern(seed, p, (uint64_t)w, gens[p]),
            (unsigned long)pg[w], gens[p], pass);
        _exit(1);
      }
    }
    for (size_t z = 0; z < zero_size; z += 8) {
      if (*(volatile uint64_t *)(zero + z) != 0) {
        say("verify FAILED zero region not zero at %p pass=%lu", (void *)(zero + z), pass);
        _exit(1);
      }
    }
    double t1 = now_ms();
    counter++;
    long k = 0;
    for (; k < rewrite && (size_t)k < live; k++) {
      gens[cursor] = gens[cursor] == DROPPED ? 1 : gens[cursor] + 1;
      fill_page((uint64_t *)(region + cursor * PAGE), seed, cursor, gens[cursor]);
      cursor = (cursor + 1) % live;
    }
    say("verify ok pass=%lu counter=%lu rewritten=%ld t=%.3f stall=%.1f stall_at=%.3f ms=%.1f", pass,
        counter, k, wall_ms(), stall, stall_at, t1 - t0);
    if (max_passes > 0 && (long)pass >= max_passes) {
      say("done passes=%lu", pass);
      return 0;
    }
    check_lifetime(counter);
    if (toggle_dontfork && madvise(region, live * PAGE, pass % 2 ? MADV_DONTFORK : MADV_DOFORK) != 0) die("madvise");
    if (interval > 0) sleep_ms(interval);
    /* Time beyond the intended sleep counts (e.g. frozen while asleep). */
    last = last + (double)interval > now_ms() ? now_ms() : last + (double)interval;
  }
}
