/*
 * lazymig-guard: started (detached) by `restore --lazy-pages` once the restored processes
 * run, with a pidfd of each (fds 3 and up, in the order of the pids) and then a copy of
 * each one's userfaultfd. It holds the uffd copies and
 * watches the lazy-pages daemon through its control socket. If the daemon goes away before
 * every page is in, the processes are SIGKILLed: with the copies held open, a missing page
 * stays missing (a faulting thread waits) instead of silently reading as zeros, and a
 * process that can never get its memory must not run on.
 *
 * Why C and not a lazymig command: it starts at the very moment the transfer does, on
 * machines with few CPUs. Node's start-up took 110-150 ms of CPU there (perf), taken from
 * the threads moving the first pages; this takes well under a millisecond.
 *
 * It speaks the control protocol of src/lazy/control.ts: JSON messages on a SOCK_SEQPACKET
 * socket; it sends {"type":"guard"} and waits for {"type":"complete"}. A daemon that is
 * already gone when the guard looks may have finished: lazy-pages.complete then lists the
 * pids it served ({"pids":[...]}).
 *
 * It kills through the pidfds, which restore opened while each process was its own and
 * stopped: a process that has exited meanwhile cannot be mistaken for another that was
 * given its pid since.
 *
 * usage: lazymig-guard WORK_DIR PID[,PID...] [CONNECT_TIMEOUT_MS]
 * exit: 0 every page came in (or the daemon finished first), 1 processes were killed,
 * 2 bad arguments (or a pidfd missing).
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define MAX_PIDS 4096
#define CONTROL_SOCKET "lazy-pages.socket"
#define COMPLETE_FILE "lazy-pages.complete"
/* fd of the first pid's pidfd; the others follow in order. */
#define FIRST_PIDFD 3

static const char *work_dir;
static long pids[MAX_PIDS];
static int npids;

/* One line on stderr (the restore points it at lazy-guard.log), timestamped in UTC. */
static void say(const char *what, long pid) {
  char when[32];
  struct timespec ts;
  struct tm tm;
  clock_gettime(CLOCK_REALTIME, &ts);
  gmtime_r(&ts.tv_sec, &tm);
  strftime(when, sizeof when, "%Y-%m-%dT%H:%M:%S", &tm);
  fprintf(stderr, "%s.%03ldZ lazymig lazy-guard: %s pid %ld\n", when, ts.tv_nsec / 1000000, what, pid);
}

/* "123,456" into pids; 0 on anything that is not a list of positive integers. */
static int parse_pids(const char *s) {
  while (*s) {
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (end == s || errno || v <= 0 || v > 0x3fffffff || npids == MAX_PIDS) return 0;
    pids[npids++] = v;
    if (*end == ',') end++;
    else if (*end) return 0;
    s = end;
  }
  return npids > 0;
}

static int join_path(char *out, size_t size, const char *name) {
  int n = snprintf(out, size, "%s/%s", work_dir, name);
  return n > 0 && (size_t)n < size;
}

static long now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Whether lazy-pages.complete lists pid. */
static int listed_as_complete(const char *list, long pid) {
  const char *p = strstr(list, "\"pids\"");
  if (!p || !(p = strchr(p, '['))) return 0;
  for (p++;;) {
    char *end;
    long v = strtol(p, &end, 10);
    if (end == p) return 0;
    if (v == pid) return 1;
    while (*end == ' ' || *end == ',') end++;
    if (*end == ']' || !*end) return 0;
    p = end;
  }
}

/* The daemon is gone: did it finish every one of our processes first? */
static int daemon_completed(void) {
  char path[4096], list[65536];
  if (!join_path(path, sizeof path, COMPLETE_FILE)) return 0;
  FILE *f = fopen(path, "re");
  if (!f) return 0;
  size_t n = fread(list, 1, sizeof list - 1, f);
  fclose(f);
  list[n] = 0;
  for (int i = 0; i < npids; i++)
    if (!listed_as_complete(list, pids[i])) return 0;
  return 1;
}

/* The control socket, retried while the daemon is not (yet) listening; -1 past the timeout,
 * or as soon as the daemon has finished (socket gone, completion file naming every pid): a
 * guard that waited on would hold the uffd copies open, and a fault on a page the process
 * dropped since would wait for it. */
static int connect_daemon(long timeout_ms) {
  struct sockaddr_un a = {.sun_family = AF_UNIX};
  if (!join_path(a.sun_path, sizeof a.sun_path, CONTROL_SOCKET)) return -1;
  long deadline = now_ms() + timeout_ms;
  for (;;) {
    int fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
    if (fd < 0) return -1;
    if (connect(fd, (struct sockaddr *)&a, sizeof a) == 0) return fd;
    int e = errno;
    close(fd);
    if ((e != ENOENT && e != ECONNREFUSED && e != EINTR) || now_ms() >= deadline || daemon_completed()) return -1;
    usleep(10 * 1000);
  }
}

/* 1 when the daemon says every page is in, 0 when it goes away without saying so. */
static int watch_daemon(long connect_timeout_ms) {
  int fd = connect_daemon(connect_timeout_ms);
  if (fd < 0) return 0;
  static const char hello[] = "{\"type\":\"guard\"}";
  if (send(fd, hello, sizeof hello - 1, MSG_NOSIGNAL) < 0) return 0;
  for (;;) {
    char m[4096];
    ssize_t n = recv(fd, m, sizeof m - 1, 0);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return 0;
    m[n] = 0;
    /* The daemon writes its messages with JSON.stringify: no spaces. */
    if (strstr(m, "\"type\":\"complete\"")) return 1;
  }
}

int main(int argc, char **argv) {
  long connect_timeout_ms = 5000;
  if (argc < 3 || argc > 4 || !parse_pids(argv[2]) || (argc == 4 && (connect_timeout_ms = atol(argv[3])) <= 0)) {
    fprintf(stderr, "usage: lazymig-guard WORK_DIR PID[,PID...] [CONNECT_TIMEOUT_MS]\n");
    return 2;
  }
  work_dir = argv[1];
  for (int i = 0; i < npids; i++) {
    if (fcntl(FIRST_PIDFD + i, F_GETFD) < 0) {
      fprintf(stderr, "lazymig-guard: no pidfd for pid %ld at fd %d\n", pids[i], FIRST_PIDFD + i);
      return 2;
    }
  }
  /* The uffd copies come after the pidfds: held, untouched, until exit. */
  if (watch_daemon(connect_timeout_ms) || daemon_completed()) return 0;
  for (int i = 0; i < npids; i++) {
    if (syscall(SYS_pidfd_send_signal, FIRST_PIDFD + i, SIGKILL, NULL, 0) == 0)
      say("the lazy-pages daemon went away before every page was in: killed", pids[i]);
  }
  return 1;
}
