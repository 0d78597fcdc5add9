/* forker [--interval-ms 100] [--kib 256] [--lifetime-s 0]
 *
 * Fills a region, forks; the child then rewrites the first half with generation 1 so
 * parent and child memory differ (half the pages stay COW-shared until someone writes).
 * Both loop verifying their own view of the region and print a counter; the child also
 * prints getppid() so a test can check the restored parentage.
 *
 * Lines (parent):  ready pid=<pid> child=<cpid> region=0x<addr> size=<bytes>
 *                  parent counter=<c> pid=<pid> child=<cpid>
 * Lines (child):   child-ready pid=<cpid> ppid=<pid>
 *                  child counter=<c> pid=<cpid> ppid=<ppid>
 * Failure:         verify FAILED who=<parent|child> page=<i> word=<w>; parent also prints
 *                  "child exited status=<s>" and exits 1 if the child dies. */
#include "common.h"
#include <sys/wait.h>

static char *region;
static size_t npages;

static void verify(const char *who, int child) {
  for (size_t p = 0; p < npages; p++) {
    uint64_t gen = (child && p < npages / 2) ? 1 : 0;
    long w = check_page((uint64_t *)(region + p * PAGE), 7, p, gen);
    if (w >= 0) {
      say("verify FAILED who=%s page=%zu word=%ld", who, p, w);
      _exit(1);
    }
  }
}

int main(int argc, char **argv) {
  wl_init(argc, argv);
  long interval = opt_long("--interval-ms", 100);
  long kib = opt_long("--kib", 256);
  npages = (size_t)(kib * 1024 + (long)PAGE - 1) / PAGE;
  region = map_isolated(npages * PAGE);
  for (size_t p = 0; p < npages; p++) fill_page((uint64_t *)(region + p * PAGE), 7, p, 0);
  pid_t parent = getpid();
  pid_t child = fork();
  if (child < 0) die("fork");
  if (child == 0) {
    for (size_t p = 0; p < npages / 2; p++) fill_page((uint64_t *)(region + p * PAGE), 7, p, 1);
    say("child-ready pid=%d ppid=%d", getpid(), (int)parent);
    for (unsigned long counter = 1;; counter++) {
      verify("child", 1);
      say("child counter=%lu pid=%d ppid=%d", counter, getpid(), getppid());
      check_lifetime(counter);
      sleep_ms(interval);
    }
  }
  say("ready pid=%d child=%d region=%p size=%zu", getpid(), child, (void *)region,
      npages * PAGE);
  for (unsigned long counter = 1;; counter++) {
    verify("parent", 0);
    int status;
    if (waitpid(child, &status, WNOHANG) == child) {
      say("child exited status=%d", status);
      _exit(1);
    }
    say("parent counter=%lu pid=%d child=%d", counter, getpid(), child);
    check_lifetime(counter);
    sleep_ms(interval);
  }
}
