/* transfer-floor <MiB> [--source-netns NS --dest-netns NS --address A]: the floor of a lazy
 * transfer on this machine, without lazymig.
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
 * Both staging buffers are page-aligned. malloc's 2 MiB buffer starts 16 bytes into a page,
 * and on this CPU a kernel copy whose destination sits 1-31 bytes past its source modulo
 * 4 KiB (4K aliasing: each load waits on the store just before it) runs ~3.5x slower; with
 * malloc this program measured 1.1-2.6 s per GiB instead of 0.45-0.7 s (docs/PERFORMANCE.md).
 */
#define _GNU_SOURCE
#include <linux/userfaultfd.h>
#include <netinet/in.h>
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

static double now_ms(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec * 1e3 + t.tv_nsec / 1e6;
}

/* CPU time (user + system) this process has used, in ms. */
static double cpu_ms(void) {
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  return (ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) * 1e3 + (ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e3;
}

static void die(const char *what) {
  perror(what);
  exit(1);
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
  if (fd < 0 || setns(fd, CLONE_NEWNET)) die(path);
  close(fd);
}

static void io_all(int fd, char *buf, size_t len, int writing) {
  for (size_t done = 0; done < len;) {
    ssize_t n = writing ? write(fd, buf + done, len - done) : read(fd, buf + done, len - done);
    if (n <= 0) die(writing ? "write" : "read");
    done += (size_t)n;
  }
}

int main(int argc, char **argv) {
  const char *src_ns = NULL, *dst_ns = NULL, *address = "127.0.0.1";
  int usage = argc < 2 || argc % 2 != 0;
  for (int i = 2; i + 1 < argc; i += 2) {
    if (!strcmp(argv[i], "--source-netns")) src_ns = argv[i + 1];
    else if (!strcmp(argv[i], "--dest-netns")) dst_ns = argv[i + 1];
    else if (!strcmp(argv[i], "--address")) address = argv[i + 1];
    else usage = 1;
  }
  if (usage || atoi(argv[1]) <= 0 || !src_ns != !dst_ns) {
    fprintf(stderr, "usage: transfer-floor <MiB> [--source-netns NS --dest-netns NS --address A]\n");
    return 2;
  }
  size_t total = (size_t)atoi(argv[1]) << 20;
  int ready[2], cpu[2];
  if (pipe(ready) || pipe(cpu)) die("pipe");

  /* The memory's owner: its own pages (not shared copy-on-write with us), then it waits. */
  pid_t owner = fork();
  if (owner == 0) {
    if (mmap(MEM, total, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0) == MAP_FAILED) die("mmap");
    madvise(MEM, total, MADV_NOHUGEPAGE);
    for (size_t i = 0; i < total; i += 8) *(unsigned long *)(MEM + i) = i * 2654435761u;
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

  double t0 = now_ms(), c0 = cpu_ms();
  for (size_t off = 0; off < total; off += CHUNK) {
    io_all(s, buf, CHUNK, 0);
    struct uffdio_copy c = {.dst = (unsigned long)dst + off, .src = (unsigned long)buf, .len = CHUNK};
    if (ioctl(uffd, UFFDIO_COPY, &c)) die("UFFDIO_COPY");
  }
  double ms = now_ms() - t0, dst_cpu = cpu_ms() - c0, src_cpu = 0;
  if (read(cpu[0], &src_cpu, sizeof src_cpu) != sizeof src_cpu) die("source cpu");

  long bad = 0;
  for (size_t i = 0; i < total; i += 4096)
    if (*(unsigned long *)(dst + i) != i * 2654435761u) bad++;
  kill(owner, SIGKILL);
  waitpid(source, 0, 0);
  waitpid(owner, 0, 0);
  printf("floor_ms=%.1f mib_per_s=%.0f bad_pages=%ld src_cpu_ms=%.0f dst_cpu_ms=%.0f\n", ms, (double)(total >> 20) / (ms / 1e3), bad, src_cpu, dst_cpu);
  return bad == 0 ? 0 : 1;
}
