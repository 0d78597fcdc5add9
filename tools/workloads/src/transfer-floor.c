/* transfer-floor <MiB> [--source-netns NS --dest-netns NS --address A] [--reader-interval-ms N] [--congestion ALG]:
 * the floor of a lazy transfer on this machine, without lazymig.
 *
 * The same kernel work a migration's background transfer does, in plain C with no framing
 * and no JS: a "source" process reads a separate process's memory with process_vm_readv
 * and writes it to a TCP socket over loopback; the "destination" reads the socket and
 * installs every chunk with UFFDIO_COPY into a userfaultfd-registered region. 2 MiB chunks,
 * 4 KiB pages (no THP). Prints one line: floor_ms=... mib_per_s=... bad_pages=... and the
 * CPU time each side used (src_cpu_ms, dst_cpu_ms), what lazymig's own CPU compares with.
 * Over loopback by default; with the options, the source listens on A inside network
 * namespace NS (a name under /run/netns) and the destination connects from the other one,
 * over the same link a migration between them uses.
 *
 * --reader-interval-ms N: a thread of the destination verifies the whole region in passes
 * while the pages arrive, N ms apart (the first N ms after the start), as the bench's
 * migrated memhog does: the same pattern and check, a clock read per page. It faults on
 * pages not installed yet and waits for the in-order install to reach them. No fault is
 * served, so this is what a transfer of this kind can do beside such a workload on the
 * same CPUs, whatever serves its faults. Adds reader_passes=... reader_cpu_ms=....
 *
 * --congestion ALG: the source sends with TCP congestion control ALG (TCP_CONGESTION)
 * instead of the system's default, as lazymig's page server does.
 *
 * Both staging buffers are page-aligned. malloc's 2 MiB buffer starts 16 bytes into a page,
 * and on this CPU a kernel copy whose destination sits 1-31 bytes past its source modulo
 * 4 KiB (4K aliasing: each load waits on the store just before it) runs ~3.5x slower; with
 * malloc this program measured 1.1-2.6 s per GiB instead of 0.45-0.7 s (docs/PERFORMANCE.md).
 */
#include "common.h"
#include <linux/userfaultfd.h>
#include <pthread.h>
#include <stdatomic.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <fcntl.h>
#include <arpa/inet.h>
#include <sched.h>

#define CHUNK (2ul << 20)
#define MEM ((char *)0x100000000000ul)

/* CPU time (user + system) the calling thread has used, in ms. */
static double cpu_ms(void) {
  struct rusage ru;
  getrusage(RUSAGE_THREAD, &ru);
  return (ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) * 1e3 + (ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e3;
}

#define SEED 1

/* The destination's verifier (--reader-interval-ms). */
struct reader {
  pthread_t thread;
  const char *region;
  size_t pages;
  long interval_ms;
  atomic_int stop;
  unsigned long passes;
  long bad;
  double cpu_ms;
};

static void *read_passes(void *arg) {
  struct reader *r = arg;
  volatile double clock_sink = 0;
  for (;;) {
    // In short naps: the transfer's end should not wait out a long interval (3 s when idle).
    for (long slept = 0; slept < r->interval_ms && !atomic_load(&r->stop); slept += 20) sleep_ms(20);
    if (atomic_load(&r->stop)) break;
    for (size_t p = 0; p < r->pages && !atomic_load(&r->stop); p++) {
      clock_sink += now_ms();
      if (check_page((const uint64_t *)(r->region + p * PAGE), SEED, p, 0) >= 0) r->bad++;
    }
    r->passes++;
  }
  r->cpu_ms = cpu_ms();
  return NULL;
}

static char *staging(void) {
  char *b = aligned_alloc(4096, CHUNK);
  if (!b) die("aligned_alloc");
  memset(b, 0, CHUNK);
  return b;
}

/* Moves this (single-threaded) process into network namespace /run/netns/<name>. */
static void enter_netns(const char *name) {
  char path[256];
  snprintf(path, sizeof path, "/run/netns/%s", name);
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0 || setns(fd, CLONE_NEWNET)) die("%s", path);
  close(fd);
}

static void io_all(int fd, char *buf, size_t len, int writing) {
  for (size_t done = 0; done < len;) {
    ssize_t n = writing ? write(fd, buf + done, len - done) : read(fd, buf + done, len - done);
    if (n <= 0) die("%s", writing ? "write" : "read");
    done += (size_t)n;
  }
}

int main(int argc, char **argv) {
  wl_init(argc, argv);
  static const char *const known[] = {"--source-netns", "--dest-netns", "--address", "--reader-interval-ms", "--lifetime-s", "--congestion"};
  for (int i = 1; i < argc; i++) {
    if (strncmp(argv[i], "--", 2) != 0) continue;
    int ok = 0;
    for (size_t k = 0; k < sizeof known / sizeof *known; k++) ok |= !strcmp(argv[i], known[k]);
    if (!ok || i + 1 >= argc) die("unknown option or missing value: %s", argv[i]);
    i++;
  }
  const char *src_ns = opt_str("--source-netns", NULL), *dst_ns = opt_str("--dest-netns", NULL);
  const char *address = opt_str("--address", "127.0.0.1");
  const char *congestion = opt_str("--congestion", NULL);
  long reader_interval = opt_long("--reader-interval-ms", -1);
  long mib = strtol(pos_arg(0, "0"), NULL, 10);
  if (mib <= 0 || g_npos != 1 || !src_ns != !dst_ns)
    die("usage: transfer-floor <MiB> [--source-netns NS --dest-netns NS --address A] [--reader-interval-ms N]");
  size_t total = (size_t)mib << 20;
  int ready[2], cpu[2];
  if (pipe(ready) || pipe(cpu)) die("pipe");

  /* The memory's owner: its own pages (not shared copy-on-write with us), then it waits. */
  pid_t owner = fork();
  if (owner == 0) {
    if (mmap(MEM, total, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0) == MAP_FAILED) die("mmap");
    madvise(MEM, total, MADV_NOHUGEPAGE);
    for (size_t p = 0; p < total / PAGE; p++) fill_page((uint64_t *)(MEM + p * PAGE), SEED, p, 0);
    if (write(ready[1], "x", 1) != 1) die("write");
    pause();
    _exit(0);
  }
  char x;
  if (read(ready[0], &x, 1) != 1) die("owner");

  if (src_ns) enter_netns(src_ns);
  int ls = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in a = {.sin_family = AF_INET};
  if (inet_pton(AF_INET, address, &a.sin_addr) != 1) die("--address");
  socklen_t al = sizeof a;
  if (bind(ls, (void *)&a, sizeof a) || listen(ls, 1) || getsockname(ls, (void *)&a, &al)) die("listen");
  if (congestion && setsockopt(ls, IPPROTO_TCP, TCP_CONGESTION, congestion, (socklen_t)strlen(congestion))) die("TCP_CONGESTION %s", congestion);

  pid_t source = fork();
  if (source == 0) {
    int c = accept(ls, 0, 0);
    if (c < 0) die("accept");
    char *buf = staging();
    double c0 = cpu_ms();
    for (size_t off = 0; off < total; off += CHUNK) {
      struct iovec l = {buf, CHUNK}, r = {MEM + off, CHUNK};
      if (process_vm_readv(owner, &l, 1, &r, 1, 0) != (ssize_t)CHUNK) die("process_vm_readv");
      io_all(c, buf, CHUNK, 1);
    }
    double used = cpu_ms() - c0;
    if (write(cpu[1], &used, sizeof used) != sizeof used) die("write");
    _exit(0);
  }

  if (dst_ns) enter_netns(dst_ns);
  int s = socket(AF_INET, SOCK_STREAM, 0);
  if (connect(s, (void *)&a, sizeof a)) die("connect");
  int uffd = (int)syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK);
  struct uffdio_api api = {.api = UFFD_API};
  if (uffd < 0 || ioctl(uffd, UFFDIO_API, &api)) die("userfaultfd");
  char *dst = mmap(0, total, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (dst == MAP_FAILED) die("mmap");
  madvise(dst, total, MADV_NOHUGEPAGE);
  struct uffdio_register reg = {.range = {(unsigned long)dst, total}, .mode = UFFDIO_REGISTER_MODE_MISSING};
  if (ioctl(uffd, UFFDIO_REGISTER, &reg)) die("UFFDIO_REGISTER");
  char *buf = staging();
  struct reader reader = {.region = dst, .pages = total / PAGE, .interval_ms = reader_interval};
  if (reader_interval >= 0 && pthread_create(&reader.thread, NULL, read_passes, &reader)) die("pthread_create");

  double t0 = now_ms(), c0 = cpu_ms();
  for (size_t off = 0; off < total; off += CHUNK) {
    io_all(s, buf, CHUNK, 0);
    struct uffdio_copy c = {.dst = (unsigned long)dst + off, .src = (unsigned long)buf, .len = CHUNK};
    if (ioctl(uffd, UFFDIO_COPY, &c)) die("UFFDIO_COPY");
  }
  double ms = now_ms() - t0, dst_cpu = cpu_ms() - c0, src_cpu = 0;
  if (read(cpu[0], &src_cpu, sizeof src_cpu) != sizeof src_cpu) die("source cpu");

  if (reader_interval >= 0) {
    atomic_store(&reader.stop, 1);
    pthread_join(reader.thread, NULL);
  }

  long bad = reader.bad;
  for (size_t p = 0; p < total / PAGE; p++)
    if (check_page((const uint64_t *)(dst + p * PAGE), SEED, p, 0) >= 0) bad++;
  kill(owner, SIGKILL);
  waitpid(source, 0, 0);
  waitpid(owner, 0, 0);
  char reader_line[96] = "";
  if (reader_interval >= 0) snprintf(reader_line, sizeof reader_line, " reader_passes=%lu reader_cpu_ms=%.0f", reader.passes, reader.cpu_ms);
  say("floor_ms=%.1f mib_per_s=%.0f bad_pages=%ld src_cpu_ms=%.0f dst_cpu_ms=%.0f%s", ms, (double)mib / (ms / 1e3), bad, src_cpu, dst_cpu, reader_line);
  return bad == 0 ? 0 : 1;
}
