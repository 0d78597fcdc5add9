/* lazymig-stub: the empty process a restore turns into a dumped one.
 *
 *   lazymig-stub <report-fd>
 *
 * Static, -nostdlib, no libc: nothing in it registers rseq, TLS or signal handlers that a
 * restore would have to undo, and its whole address space is the ELF image, a stack, and
 * the kernel's vdso/vvar.
 *
 * It forks once. The child is the future restored process: it closes <report-fd> and loops
 * on pause(); the restorer seizes it and rebuilds it through injected syscalls (the loop's
 * `syscall` instruction is the first gadget). The parent stays behind as the restored
 * root's parent ("reaper"): it writes "pid <child>\n" to <report-fd>, waits for the child
 * and writes "exit code=<n> signal=<s>\n", then exits 0. So the restorer can tell how the
 * restored root ended without being its parent (it must not be: node's own child-process
 * machinery would reap ptrace stops).
 */
typedef unsigned long u64;
typedef long i64;

#define SYS_write 1
#define SYS_close 3
#define SYS_pause 34
#define SYS_fork 57
#define SYS_exit 60
#define SYS_wait4 61

static inline i64 sys1(i64 n, i64 a) {
  i64 r;
  __asm__ volatile("syscall" : "=a"(r) : "a"(n), "D"(a) : "rcx", "r11", "memory");
  return r;
}
static inline i64 sys3(i64 n, i64 a, i64 b, i64 c) {
  i64 r;
  __asm__ volatile("syscall" : "=a"(r) : "a"(n), "D"(a), "S"(b), "d"(c) : "rcx", "r11", "memory");
  return r;
}
static inline i64 sys4(i64 n, i64 a, i64 b, i64 c, i64 d) {
  i64 r;
  register i64 r10 __asm__("r10") = d;
  __asm__ volatile("syscall" : "=a"(r) : "a"(n), "D"(a), "S"(b), "d"(c), "r"(r10) : "rcx", "r11", "memory");
  return r;
}

static int put_num(char *p, u64 v) {
  char tmp[24];
  int n = 0, i = 0;
  do {
    tmp[n++] = (char)('0' + v % 10);
    v /= 10;
  } while (v);
  while (n) p[i++] = tmp[--n];
  return i;
}

static int put_str(char *p, const char *s) {
  int i = 0;
  while (s[i]) {
    p[i] = s[i];
    i++;
  }
  return i;
}

static void say(int fd, const char *buf, int len) {
  while (len > 0) {
    i64 w = sys3(SYS_write, fd, (i64)buf, len);
    if (w == -4) continue; /* EINTR */
    if (w <= 0) return;
    buf += w;
    len -= (int)w;
  }
}

static __attribute__((noreturn)) void child_loop(void) {
  for (;;) sys1(SYS_pause, 0);
}

__attribute__((noreturn, used)) void stub_main(u64 *sp) {
  i64 argc = (i64)sp[0];
  char **argv = (char **)(sp + 1);
  int fd = 3;
  if (argc > 1) {
    fd = 0;
    for (const char *s = argv[1]; *s >= '0' && *s <= '9'; s++) fd = fd * 10 + (*s - '0');
  }
  i64 pid = sys1(SYS_fork, 0);
  if (pid == 0) {
    sys1(SYS_close, fd);
    child_loop();
  }
  char buf[64];
  int n;
  if (pid < 0) {
    n = put_str(buf, "error fork=");
    n += put_num(buf + n, (u64)-pid);
    buf[n++] = '\n';
    say(fd, buf, n);
    sys1(SYS_exit, 1);
  }
  n = put_str(buf, "pid ");
  n += put_num(buf + n, (u64)pid);
  buf[n++] = '\n';
  say(fd, buf, n);
  int status = 0;
  for (;;) {
    i64 r = sys4(SYS_wait4, pid, (i64)&status, 0, 0);
    if (r == pid) break;
    if (r != -4) { /* not EINTR: nothing to wait for */
      status = -1;
      break;
    }
  }
  int code = -1, sig = 0;
  if (status != -1) {
    if ((status & 0x7f) == 0) code = (status >> 8) & 0xff;
    else sig = status & 0x7f;
  }
  n = put_str(buf, "exit code=");
  if (code < 0) {
    buf[n++] = '-';
    n += put_num(buf + n, 1);
  } else n += put_num(buf + n, (u64)code);
  n += put_str(buf + n, " signal=");
  n += put_num(buf + n, (u64)sig);
  buf[n++] = '\n';
  say(fd, buf, n);
  sys1(SYS_exit, 0);
  for (;;) {
  }
}

/* The entry point: hand the initial stack pointer (argc, argv...) to C with the stack
 * aligned as the ABI wants. */
__asm__(".globl _start\n"
        "_start:\n"
        "  mov %rsp, %rdi\n"
        "  and $-16, %rsp\n"
        "  call stub_main\n"
        "  hlt\n");
