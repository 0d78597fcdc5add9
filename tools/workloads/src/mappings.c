/* mappings <N> [--pages 4] [--interval-ms 50] [--seed 1] [--lifetime-s 0]
 *
 * N private anonymous mappings of --pages pages each, every one its own VMA (map_isolated's
 * guard pages keep neighbours from merging), filled with a verifiable pattern; then forever:
 * verify them all, sleep. What a dump, a restore and lazy-pages meet in a process with many
 * small mappings (allocator arenas, thread stacks, a JIT's code heaps): every per-VMA cost,
 * and anything that grows with the square of their number.
 *
 * Lines:
 *   ready pid=<pid> mappings=<N> pages=<pages per mapping>
 *   verify ok pass=<n> pages=<total>
 *   verify FAILED mapping=<i> page=<p> word=<w> pass=<n>     (then exit 1) */
#include "common.h"

int main(int argc, char **argv) {
  wl_init(argc, argv);
  long n = atol(pos_arg(0, "0"));
  if (n <= 0) die("usage: mappings <N> [--pages 4] [--interval-ms 50]");
  long pages = opt_long("--pages", 4);
  long interval = opt_long("--interval-ms", 50);
  uint64_t seed = (uint64_t)opt_long("--seed", 1);
  char **maps = calloc((size_t)n, sizeof *maps);
  if (!maps) die("calloc");
  for (long i = 0; i < n; i++) {
    maps[i] = map_isolated((size_t)pages * PAGE);
    for (long p = 0; p < pages; p++) fill_page((uint64_t *)(maps[i] + p * PAGE), seed, (uint64_t)(i * pages + p), 0);
  }
  say("ready pid=%d mappings=%ld pages=%ld", getpid(), n, pages);
  for (unsigned long pass = 1;; pass++) {
    for (long i = 0; i < n; i++)
      for (long p = 0; p < pages; p++) {
        long w = check_page((const uint64_t *)(maps[i] + p * PAGE), seed, (uint64_t)(i * pages + p), 0);
        if (w >= 0) {
          say("verify FAILED mapping=%ld page=%ld word=%ld pass=%lu", i, p, w, pass);
          _exit(1);
        }
      }
    say("verify ok pass=%lu pages=%ld", pass, n * pages);
    check_lifetime(pass);
    sleep_ms(interval);
  }
}
