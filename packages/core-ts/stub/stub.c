/* lazymig-stub: the empty process a restore turns into a dumped one.
 *
 *   lazymig-stub <report-fd> [--pid-ns <root-pid> | --throwaway <parent-pid>]
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
 *
 * With --pid-ns the parent first unshares a PID namespace, so its child is pid 1 there: the
 * namespace's init. It writes "init <pid>\n" (the init's pid as the parent sees it). The
 * init creates the future root with clone3 and set_tid = [<root-pid>] (its dumped pid, in
 * the new namespace) and writes "root <root-pid>\n", or "error clone3=<errno>\n" and exits.
 * Then it reaps whatever ends in the namespace (the root and orphans reparented to it); when
 * the root ends it writes the "exit ..." line; it exits when it has no child left (an init
 * that exits takes its whole namespace with it: it must outlive every restored process).
 * It keeps only <report-fd> open (not the restore's stdio nor anything else it inherited:
 * it may outlive the restore).
 * The parent waits for the init: once it is gone (still unreaped, so its pid cannot be
 * reused yet) it writes "init-exit\n", then reaps it and exits 0.
 *
 * With --throwaway (a rehearsal's target, never restored) both die with their parent
 * (PR_SET_PDEATHSIG): a lazymig killed while it rehearses leaves no stub behind.
 * <parent-pid> is who started us: if it is gone already, the signal came too late.
 */
typedef unsigned long u64;
typedef long i64;

#define SYS_write 1
#define SYS_close 3
#define SYS_pause 34
#define SYS_getpid 39
#define SYS_fork 57
#define SYS_exit 60
#define SYS_wait4 61
#define SYS_getppid 110
#define SYS_prctl 157
#define SYS_waitid 247
#define SYS_unshare 272
#define SYS_clone3 435
#define SYS_close_range 436

#define CLONE_NEWPID 0x20000000
#define SIGCHLD 17
#define WALL 0x40000000
#define WEXITED 4
#define WNOWAIT 0x01000000
#define P_PID 1
#define ECHILD 10
#define PR_SET_PDEATHSIG 1
#define SIGKILL 9
#define EINTR 4

/* struct clone_args, CLONE_ARGS_SIZE_VER2 */
struct clone_args {
  u64 flags, pidfd, child_tid, parent_tid, exit_signal, stack, stack_size, tls, set_tid, set_tid_size, cgroup;
};

static inline i64 sys1(i64 n, i64 a) {
  i64 r;
  __asm__ volatile("syscall" : "=a"(r) : "a"(n), "D"(a) : "rcx", "r11", "memory");
  return r;
}
static inline i64 sys2(i64 n, i64 a, i64 b) {
  i64 r;
  __asm__ volatile("syscall" : "=a"(r) : "a"(n), "D"(a), "S"(b) : "rcx", "r11", "memory");
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
static inline i64 sys5(i64 n, i64 a, i64 b, i64 c, i64 d, i64 e) {
  i64 r;
  register i64 r10 __asm__("r10") = d;
  register i64 r8 __asm__("r8") = e;
  __asm__ volatile("syscall" : "=a"(r) : "a"(n), "D"(a), "S"(b), "d"(c), "r"(r10), "r"(r8) : "rcx", "r11", "memory");
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

/* Killed when the parent dies; dead at once if it already has (it was `parent`). */
static void die_with_parent(i64 parent) {
  sys2(SYS_prctl, PR_SET_PDEATHSIG, SIGKILL);
  if (sys1(SYS_getppid, 0) != parent) sys1(SYS_exit, 1);
}

static __attribute__((noreturn)) void child_loop(void) {
  for (;;) sys1(SYS_pause, 0);
}

/* "<what><n>\n" */
static void say_num(int fd, const char *what, u64 v) {
  char buf[64];
  int n = put_str(buf, what);
  n += put_num(buf + n, v);
  buf[n++] = '\n';
  say(fd, buf, n);
}

/* "exit code=<n> signal=<s>\n" for a wait status, or code=-1 when there was none (-1). */
static void say_exit(int fd, int status) {
  char buf[64];
  int code = -1, sig = 0;
  if (status != -1) {
    if ((status & 0x7f) == 0) code = (status >> 8) & 0xff;
    else sig = status & 0x7f;
  }
  int n = put_str(buf, "exit code=");
  if (code < 0) {
    buf[n++] = '-';
    n += put_num(buf + n, 1);
  } else n += put_num(buf + n, (u64)code);
  n += put_str(buf + n, " signal=");
  n += put_num(buf + n, (u64)sig);
  buf[n++] = '\n';
  say(fd, buf, n);
}

static u64 parse_num(const char *s) {
  u64 v = 0;
  for (; *s >= '0' && *s <= '9'; s++) v = v * 10 + (u64)(*s - '0');
  return v;
}

static int same(const char *a, const char *b) {
  while (*a && *a == *b) a++, b++;
  return *a == *b;
}

/* pid 1 of the new namespace: creates the root at <root> with clone3/set_tid, then reaps. */
/* The future root keeps only stdin/out/err: <report-fd> and whatever else the restorer had
 * open without close-on-exec go (a restore replaces all of them anyway, and a stub that is
 * itself dumped, as restore's rehearsal does, must hold nothing a dump refuses). */
static void close_inherited(int fd) {
  sys1(SYS_close, fd);
  sys3(SYS_close_range, 3, ~0U, 0);
}

static __attribute__((noreturn)) void ns_init(int fd, u64 root) {
  int tid = (int)root;
  volatile struct clone_args a;
  a.flags = 0;
  a.pidfd = 0;
  a.child_tid = 0;
  a.parent_tid = 0;
  a.exit_signal = SIGCHLD;
  a.stack = 0;
  a.stack_size = 0;
  a.tls = 0;
  a.set_tid = (u64)&tid;
  a.set_tid_size = 1;
  a.cgroup = 0;
  i64 pid = sys2(SYS_clone3, (i64)&a, sizeof a);
  if (pid == 0) {
    close_inherited(fd);
    child_loop();
  }
  if (pid < 0) {
    say_num(fd, "error clone3=", (u64)-pid);
    sys1(SYS_exit, 1);
  }
  say_num(fd, "root ", (u64)pid);
  /* The root has its copies of stdin/out/err (the restore replaces them); the init may
   * outlive `lazymig restore` and must not hold its stdio (`restore | tee` would wait). */
  if (fd > 0) sys3(SYS_close_range, 0, (i64)fd - 1, 0);
  sys3(SYS_close_range, (i64)fd + 1, ~0U, 0);
  for (;;) {
    int status = 0;
    i64 r = sys4(SYS_wait4, -1, (i64)&status, WALL, 0);
    if (r == -EINTR) continue;
    if (r < 0) break; /* ECHILD: the namespace is empty but for us */
    if (r == pid) say_exit(fd, status);
  }
  sys1(SYS_exit, 0);
  for (;;) {
  }
}

__attribute__((noreturn, used)) void stub_main(u64 *sp) {
  i64 argc = (i64)sp[0];
  char **argv = (char **)(sp + 1);
  int fd = 3;
  u64 ns_root = 0;
  if (argc > 1) fd = (int)parse_num(argv[1]);
  u64 throwaway_parent = 0;
  if (argc > 3 && same(argv[2], "--pid-ns")) ns_root = parse_num(argv[3]);
  if (argc > 3 && same(argv[2], "--throwaway")) throwaway_parent = parse_num(argv[3]);
  if (throwaway_parent) die_with_parent((i64)throwaway_parent);
  i64 self = sys1(SYS_getpid, 0);
  if (ns_root) {
    i64 r = sys1(SYS_unshare, CLONE_NEWPID);
    if (r < 0) {
      say_num(fd, "error unshare=", (u64)-r);
      sys1(SYS_exit, 1);
    }
  }
  i64 pid = sys1(SYS_fork, 0);
  if (pid == 0) {
    if (throwaway_parent) die_with_parent(self);
    if (ns_root) ns_init(fd, ns_root);
    close_inherited(fd);
    child_loop();
  }
  if (pid < 0) {
    say_num(fd, "error fork=", (u64)-pid);
    sys1(SYS_exit, 1);
  }
  say_num(fd, ns_root ? "init " : "pid ", (u64)pid);
  /* Only <report-fd> from here on: the restore's stdio must not stay open because of us
   * (with a namespace we live as long as its init, which may outlive the restore). */
  if (fd > 0) sys3(SYS_close_range, 0, (i64)fd - 1, 0);
  sys3(SYS_close_range, (i64)fd + 1, ~0U, 0);
  if (ns_root) {
    /* The init reports the root itself; wait until it is gone without reaping it yet. */
    char info[128];
    for (;;) {
      i64 r = sys5(SYS_waitid, P_PID, pid, (i64)info, WEXITED | WNOWAIT, 0);
      if (r == -EINTR) continue;
      break;
    }
    say(fd, "init-exit\n", 10);
  }
  int status = 0;
  for (;;) {
    i64 r = sys4(SYS_wait4, pid, (i64)&status, 0, 0);
    if (r == pid) break;
    if (r != -EINTR) { /* not EINTR: nothing to wait for */
      status = -1;
      break;
    }
  }
  if (!ns_root) say_exit(fd, status);
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
