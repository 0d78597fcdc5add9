/* sleeper [--sleep-ms 200] [--mode clock|nanosleep] [--lifetime-s 0]
 *
 * Spends nearly all its time inside one long sleep syscall, so a freeze almost always
 * catches it mid-syscall: the restore must re-run it. clock mode calls clock_nanosleep
 * (CLOCK_MONOTONIC, relative); nanosleep mode issues the raw nanosleep syscall. Any error
 * return is a failure: without signal handlers the kernel never lets EINTR through.
 *
 * Lines:
 *   ready pid=<pid> sleep_ms=<ms> mode=<mode>
 *   tick counter=<c> slept_ms=<measured>
 *   sleep FAILED errno=<e> counter=<c>     (then exit 1) */
#include "common.h"

int main(int argc, char **argv) {
  wl_init(argc, argv);
  long ms = opt_long("--sleep-ms", 200);
  const char *mode = opt_str("--mode", "clock");
  int raw = strcmp(mode, "nanosleep") == 0;
  if (!raw && strcmp(mode, "clock") != 0) die("bad --mode %s", mode);
  say("ready pid=%d sleep_ms=%ld mode=%s", getpid(), ms, mode);
  for (unsigned long counter = 1;; counter++) {
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    double t0 = now_ms();
    int err;
    if (raw)
      err = syscall(SYS_nanosleep, &ts, NULL) == 0 ? 0 : errno;
    else
      err = clock_nanosleep(CLOCK_MONOTONIC, 0, &ts, NULL);
    if (err) {
      say("sleep FAILED errno=%d (%s) counter=%lu", err, strerror(err), counter);
      _exit(1);
    }
    say("tick counter=%lu slept_ms=%.1f", counter, now_ms() - t0);
    check_lifetime(counter);
  }
}
