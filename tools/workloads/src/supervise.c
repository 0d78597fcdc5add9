/* supervise <status-file> <program> [args...]
 *
 * Launcher used by tools/workloads/index.ts. The workload must not be a direct child of
 * the test's node process: a test may ptrace it from that same process, and libuv's
 * SIGCHLD handler would then reap ptrace-stops with waitpid and report them as exits,
 * stealing them from the tracer. This process is the workload's parent instead; it
 * records how the workload ended in <status-file> ("code=<n> signal=<n>\n", written to a
 * temp name then renamed) and exits.
 *
 * The workload runs in its own session (setsid) so a dump sees a self-contained tree and
 * no terminal; fds above 2 are closed before exec. If node dies, PDEATHSIG reaches this
 * process and it kills the workload (still unreaped, so the pid cannot have been reused). */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

static volatile pid_t child;

static void on_term(int sig) {
  (void)sig;
  if (child > 0) kill(child, SIGKILL);
}

int main(int argc, char **argv) {
  if (argc < 3) {
    fprintf(stderr, "usage: supervise <status-file> <program> [args...]\n");
    return 2;
  }
  pid_t launcher = getppid();
  prctl(PR_SET_PDEATHSIG, SIGTERM);
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_term;
  sigaction(SIGTERM, &sa, NULL);
  sigaction(SIGINT, &sa, NULL);
  sigaction(SIGHUP, &sa, NULL);
  if (getppid() != launcher) return 1;
  pid_t pid = fork();
  if (pid < 0) {
    perror("supervise: fork");
    return 1;
  }
  if (pid == 0) {
    setsid();
    signal(SIGTERM, SIG_DFL);
    signal(SIGINT, SIG_DFL);
    signal(SIGHUP, SIG_DFL);
    syscall(SYS_close_range, 3U, ~0U, 0U);
    execv(argv[2], argv + 2);
    fprintf(stderr, "supervise: exec %s: %s\n", argv[2], strerror(errno));
    _exit(127);
  }
  child = pid;
  int status;
  while (waitpid(pid, &status, 0) < 0) {
    if (errno != EINTR) {
      perror("supervise: waitpid");
      return 1;
    }
  }
  int code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  int sig = WIFSIGNALED(status) ? WTERMSIG(status) : 0;
  char tmp[4096];
  snprintf(tmp, sizeof tmp, "%s.tmp", argv[1]);
  FILE *f = fopen(tmp, "w");
  if (!f) return 1;
  fprintf(f, "code=%d signal=%d\n", code, sig);
  if (fclose(f) != 0 || rename(tmp, argv[1]) != 0) return 1;
  return 0;
}
